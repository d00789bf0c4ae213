"""A paged KV cache: fixed-size blocks and a block table per sequence (vLLM's PagedAttention).

A server decodes many sequences at once; they arrive, grow one token per step and finish at
different times, and nobody knows in advance how long each will become. A contiguous cache must
reserve room for the longest possible sequence for every one of them (``max_len`` slots each)
— most of it never used. Kwon et al. (2023) borrowed the operating system's answer: **pages**.
The keys and values live in one pool of ``num_blocks`` blocks of ``block_size`` tokens; each
sequence owns a **block table**, the list of its blocks in order; a new block is taken from the
free list only when the last one is full, and a finished sequence returns its blocks at once.
The only waste is the unfilled tail of each sequence's last block.

Token ``t`` of a sequence lives in block ``table[t // block_size]`` at slot ``t % block_size``.
Reading a sequence back gathers its blocks through the table:
``pool[table]  # (blocks, block_size, Hkv, D)``. vLLM's kernel reads the blocks inside the
attention kernel; here the gather is explicit, then the course's attention runs on the result.

Usage (one decoding step of a batch of running sequences)::

    cache = PagedKVCache(num_layers, num_heads, head_dim, num_blocks=1024, block_size=16)
    cache.add(7); cache.add(9)                 # two sequences arrive
    cache.set_batch([7, 9])                    # the rows of the next updates
    k, v = cache.update(layer, k_new, v_new)   # (2, Hkv, T, D) in -> (2, Hkv, L_max, D) out
    pad = cache.key_padding_mask()             # (2, L_max), True = padding (a shorter sequence)
    cache.remove(7)                            # finished: its blocks go back to the free list

In a batch of several rows every row adds the same number of tokens ``T``; with ``T > 1`` (a
prompt) the rows must also have the same length (prompts of different lengths are written one
sequence at a time, as vLLM's scheduler does).

>>> cache = PagedKVCache(num_layers=1, num_heads=1, head_dim=2, num_blocks=4, block_size=2)
>>> cache.add("a"); cache.add("b")
>>> cache.set_batch(["a"])
>>> k, v = cache.update(0, torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2))   # 3 tokens: 2 blocks
>>> cache.set_batch(["a", "b"])
>>> k, v = cache.update(0, torch.zeros(2, 1, 1, 2), torch.zeros(2, 1, 1, 2))
>>> k.shape, cache.lengths(), cache.key_padding_mask().tolist()
(torch.Size([2, 1, 4, 2]), [4, 1], [[False, False, False, False], [False, True, True, True]])
>>> cache.block_table("a"), cache.block_table("b"), cache.free_blocks()
([0, 1], [2], 1)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from course_utils.checks import (
    check_device,
    check_dtype,
    check_int,
    check_positive_int,
    check_sizes,
    describe,
)
from course_utils.kv_cache import KVCacheBase

__all__ = ["PagedKVCache", "contiguous_waste_fraction"]


class PagedKVCache(KVCacheBase):
    """Keys and values in a pool of fixed-size blocks, one block table per sequence.

    ``keys[layer]`` and ``values[layer]`` are pools of shape ``(num_blocks, block_size, Hkv, D)``;
    every layer uses the same block table (a sequence's token ``t`` sits at the same place in
    every layer's pool). Sequences are named by any hashable id; an id that was never added
    (or was removed) raises ``KeyError``, as a dict does.
    """

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int = 16,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        check_sizes(num_layers=num_layers, num_heads=num_heads, head_dim=head_dim,
                    num_blocks=num_blocks, block_size=block_size)
        check_dtype("dtype", dtype)
        device = None if device is None else check_device("device", device)
        shape = (num_blocks, block_size, num_heads, head_dim)  # (blocks, slots, Hkv, D)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.num_layers, self.num_blocks, self.block_size = num_layers, num_blocks, block_size
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: block 0 is handed out first
        self._tables: dict[Hashable, list[int]] = {}
        self._lens: dict[Hashable, list[int]] = {}  # tokens written, per layer
        self._batch: list[Hashable] = []
        # (B, Hkv, D) in the pool's layout, to check updates against
        self._like = torch.empty(1, num_heads, 0, head_dim, dtype=dtype, device=device)

    def __repr__(self) -> str:
        return (
            f"PagedKVCache(num_layers={self.num_layers}, num_blocks={self.num_blocks}, "
            f"block_size={self.block_size}, sequences={len(self._tables)}, "
            f"free_blocks={len(self._free)})"
        )

    # -- sequences --------------------------------------------------------------------------

    def add(self, seq_id: Hashable) -> None:
        """A new sequence, with an empty block table (blocks are taken as tokens arrive)."""
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id!r} is already in the cache")
        self._tables[seq_id] = []
        self._lens[seq_id] = [0] * self.num_layers

    def remove(self, seq_id: Hashable) -> None:
        """A finished sequence: its blocks return to the free list."""
        self._check_known(seq_id)
        self._free.extend(reversed(self._tables.pop(seq_id)))
        del self._lens[seq_id]
        self._batch = [s for s in self._batch if s != seq_id]

    def set_batch(self, seq_ids: Sequence[Hashable]) -> None:
        """The sequences that the rows of the next ``update`` calls belong to, in row order."""
        if isinstance(seq_ids, (str, bytes)) or not isinstance(seq_ids, Sequence) or not seq_ids:
            raise TypeError(
                f"seq_ids must be a non-empty list of sequence ids, got {describe(seq_ids)}"
            )
        for s in seq_ids:
            self._check_known(s)
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError(f"seq_ids must not repeat a sequence, got {list(seq_ids)}")
        self._batch = list(seq_ids)

    def crop(self, seq_id: Hashable, length: int) -> None:
        """Keep the first ``length`` tokens of ``seq_id`` (every layer) and free the blocks past
        them: roll back tokens (rejected speculative tokens, a step timed again)."""
        self._check_known(seq_id)
        check_int("length", length, low=0)
        self._lens[seq_id] = [min(n, length) for n in self._lens[seq_id]]
        table = self._tables[seq_id]
        keep = -(-max(self._lens[seq_id]) // self.block_size)
        self._free.extend(reversed(table[keep:]))
        del table[keep:]

    def block_table(self, seq_id: Hashable) -> list[int]:
        """The physical blocks of ``seq_id``, in token order."""
        self._check_known(seq_id)
        return list(self._tables[seq_id])

    def free_blocks(self) -> int:
        return len(self._free)

    def lengths(self, layer: int = 0) -> list[int]:
        """Tokens written at ``layer`` for each sequence of the current batch."""
        check_int("layer", layer, low=0, high=self.num_layers - 1)
        return [self._lens[s][layer] for s in self._batch]

    # -- the KV-cache interface ---------------------------------------------------------------

    def length(self, layer: int = 0) -> int:
        """Tokens written at ``layer`` — the same for every row of the batch, else an error
        (a ragged batch has one length per row: :meth:`lengths`)."""
        lens = set(self.lengths(layer))
        if len(lens) != 1:
            raise ValueError(
                f"the sequences of the batch have different lengths {self.lengths(layer)}; "
                f"use lengths(layer)"
            )
        return lens.pop()

    def reset(self) -> None:
        """Forget every sequence; every block is free again."""
        self._free = list(range(self.num_blocks - 1, -1, -1))
        self._tables, self._lens, self._batch = {}, {}, []

    def update(
        self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``(B, Hkv, T, D)`` keys and values, one row per sequence of the batch; return
        every row's keys and values, padded to the longest: ``(B, Hkv, L_max, D)`` (mask the
        padding with :meth:`key_padding_mask`)."""
        if not self._batch:
            raise RuntimeError("no batch: call set_batch(seq_ids) before update")
        like = self._like.expand(len(self._batch), -1, -1, -1)
        self.check_update(layer, k_new, v_new, like)
        t = k_new.size(2)
        lens = self.lengths(layer)
        if t > 1 and len(set(lens)) > 1:
            raise ValueError(
                f"a chunk of T={t} tokens needs rows of one length (a prompt is written "
                f"for one sequence at a time), got lengths {lens}"
            )
        slots = []
        for s, n in zip(self._batch, lens, strict=True):
            self._reserve(s, n + t)
            slots.append(self._slots(s, n, n + t))
        flat = torch.stack(slots).flatten()  # (B·T,) slot numbers in the flattened pool
        kpool = self.keys[layer].view(-1, *self.keys[layer].shape[2:])  # (blocks·slots, Hkv, D)
        vpool = self.values[layer].view(-1, *self.values[layer].shape[2:])
        kpool.index_copy_(0, flat, k_new.permute(0, 2, 1, 3).flatten(0, 1))  # rows (B·T, Hkv, D)
        vpool.index_copy_(0, flat, v_new.permute(0, 2, 1, 3).flatten(0, 1))
        for s in self._batch:
            self._lens[s][layer] += t
        return self.gather(layer)

    def gather(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of the batch, read through the block tables and padded to the
        longest: ``(B, Hkv, L_max, D)`` each."""
        check_int("layer", layer, low=0, high=self.num_layers - 1)
        lens = self.lengths(layer)
        n_blocks = max(-(-n // self.block_size) for n in lens) or 1
        tables = torch.tensor(
            [(self._tables[s] + [0] * n_blocks)[:n_blocks] for s in self._batch],
            device=self.keys[layer].device,
        )  # (B, n_blocks); 0 pads (masked)
        l_max = max(lens)
        device = tables.device
        offsets = torch.arange(self.block_size, device=device)
        slots = (tables[:, :, None] * self.block_size + offsets).flatten(1)[:, :l_max]  # (B, L_max)
        heads = torch.arange(self.keys[layer].size(2), device=device)[None, :, None]  # (1, Hkv, 1)
        out = []
        for pool in (self.keys[layer], self.values[layer]):
            flat = pool.view(-1, *pool.shape[2:])  # (blocks·slots, Hkv, D)
            # one gather through the tables, straight into the (B, Hkv, L_max, D) layout the
            # attention reads (a transposed view of (B, L_max, Hkv, D) makes its matmuls ~10x slower)
            out.append(flat[slots[:, None, :], heads])
        return out[0], out[1]

    def key_padding_mask(self, layer: int = 0) -> torch.Tensor:
        """``(B, L_max)`` bool, True = padding: the slots after each shorter sequence's end."""
        lens = torch.tensor(self.lengths(layer), device=self.keys[layer].device)
        return torch.arange(int(lens.max()), device=lens.device)[None, :] >= lens[:, None]

    def nbytes(self) -> int:
        """Bytes of the pools (all layers, keys and values), allocated once."""
        return sum(t.untyped_storage().nbytes() for t in self.keys + self.values)

    def memory_stats(self) -> dict[str, float]:
        """Token slots held by the live sequences and how many of them hold a token.

        ``waste_fraction`` = 1 - used / held: only the unfilled tail of each sequence's last block.
        """
        held = sum(len(t) for t in self._tables.values()) * self.block_size
        used = sum(max(n) for n in self._lens.values())
        return {
            "sequences": len(self._tables),
            "held_slots": held,
            "used_slots": used,
            "waste_fraction": 1.0 - used / held if held else 0.0,
        }

    # -- internals ------------------------------------------------------------------------------

    def _check_known(self, seq_id: Hashable) -> None:
        if seq_id not in self._tables:
            raise KeyError(f"seq_id {seq_id!r}: no such sequence in the cache (add it first); "
                           f"known: {list(self._tables)[:10]}")

    def _reserve(self, seq_id: Hashable, n_tokens: int) -> None:
        table = self._tables[seq_id]
        need = -(-n_tokens // self.block_size) - len(table)
        if need > len(self._free):
            raise RuntimeError(
                f"out of KV blocks: sequence {seq_id!r} needs {need} more, {len(self._free)} "
                f"free of {self.num_blocks}; finish (remove) sequences or create the "
                f"cache with more num_blocks"
            )
        table.extend(self._free.pop() for _ in range(max(need, 0)))

    def _slots(self, seq_id: Hashable, start: int, end: int) -> torch.Tensor:
        """Flattened pool slots of tokens ``start..end-1`` of ``seq_id``."""
        pos = torch.arange(start, end)
        table = torch.tensor(self._tables[seq_id])
        return (table[pos // self.block_size] * self.block_size + pos % self.block_size).to(
            self.keys[0].device
        )


def contiguous_waste_fraction(lengths: Sequence[int], max_len: int) -> float:
    """The share of a contiguous cache's slots left empty when each of the ``lengths`` sequences
    reserves ``max_len`` slots (what a server must do when it cannot know a reply's length).

    >>> contiguous_waste_fraction([100, 300], max_len=1000)
    0.8
    """
    check_positive_int("max_len", max_len)
    if not lengths or any(
        isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= max_len for n in lengths
    ):
        raise ValueError(
            f"lengths must be a non-empty list of ints in [0, max_len={max_len}], got "
            f"{describe(lengths)}"
        )
    return 1.0 - sum(lengths) / (len(lengths) * max_len)
