"""Sliding-window attention and its rolling KV cache: decoding memory O(W) instead of O(N).

With a window of ``W`` tokens (Longformer's local attention; Mistral 7B uses W = 4096), query
``i`` attends only to keys ``i - W < j <= i``. While decoding, a key older than ``W`` tokens will
never be read again, so the cache need not keep it: a **ring buffer** of ``W`` slots per layer
suffices, and the token at position ``t`` overwrites slot ``t mod W`` — the key that just left
the window (Mistral's "rolling buffer cache"). The cache then holds ``W`` tokens whatever the
length of the text, where the contiguous :class:`~course_utils.kv_cache.KVCache` holds all ``N``.

A decoding step (one new token) attends to every slot: all of them lie inside its window, and
the order of the keys does not matter to attention (``softmax(q Kᵀ) V`` is a sum over keys),
so :meth:`RollingKVCache.update` returns the buffer itself, no copy. The positions must already
be in the keys (RoPE is applied before the cache, as the course's attention modules do). A chunk
of several new tokens (a prompt) needs the keys in order and a window mask:
:meth:`RollingKVCache.chunk_mask` gives it.

>>> from course_utils.attention import MultiHeadAttention
>>> from course_utils.positional import RotaryEmbedding
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> mha = MultiHeadAttention(16, 2, rope=RotaryEmbedding(8)).eval()
>>> x = torch.randn(1, 12, 16)                                   # 12 tokens, window 4
>>> full = mha(x, attn_mask=window_mask(12, 12, window=4))[0]
>>> cache = RollingKVCache(num_layers=1, batch=1, num_heads=2, head_dim=8, window=4)
>>> steps = [mha(x[:, t : t + 1], cache=cache)[0] for t in range(12)]
>>> torch.allclose(torch.cat(steps, 1), full, atol=1e-6), cache.nbytes()   # 2 x 4 slots x 2 x 8
(True, 512)
"""

from __future__ import annotations

import torch

from course_utils.checks import (
    check_device,
    check_dtype,
    check_int,
    check_non_negative_int,
    check_positive_int,
    check_sizes,
    check_tensor,
    describe,
)
from course_utils.kv_cache import KVCacheBase

__all__ = ["RollingKVCache", "window_mask"]


def window_mask(
    lq: int, lk: int, window: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """``(lq, lk)`` bool, True = may attend: the last ``lq`` of ``lk`` positions (aligned
    bottom-right, as queries after a cache) each see themselves and the ``window - 1`` keys
    before them.

    >>> window_mask(2, 5, window=3).int()                  # 2 new queries after 3 cached keys
    tensor([[0, 1, 1, 1, 0],
            [0, 0, 1, 1, 1]], dtype=torch.int32)
    """
    check_non_negative_int("lq", lq)
    check_non_negative_int("lk", lk)
    check_positive_int("window", window)
    device = None if device is None else check_device("device", device)
    if lq > lk:
        raise ValueError(
            f"the queries are the last lq of the lk positions, so lq <= lk; got lq={lq}, lk={lk}"
        )
    ones = torch.ones(lq, lk, dtype=torch.bool, device=device)
    causal = ones.tril(lk - lq)  # query i (position lk - lq + i) sees keys j <= its position
    return causal & ~ones.tril(lk - lq - window)  # ...minus those `window` or more positions back


class RollingKVCache(KVCacheBase):
    """A KV cache that keeps only the last ``window`` tokens: a ring buffer per layer.

    The same interface as :class:`~course_utils.kv_cache.KVCache` (``update``, ``length``,
    ``reset``, ``reorder``, ``nbytes``); ``length(layer)`` counts every token written (the position
    of the next one, for RoPE), while at most ``window`` are kept.

    ``update(layer, k_new, v_new)`` with ``(B, Hkv, T, D)`` new entries returns

    * for one token (``T = 1``): the kept slots, ``(B, Hkv, min(length, window), D)``, a view of
      the buffer in slot order — every one of them is inside the new query's window;
    * for a chunk (``T > 1``): the kept keys in time order followed by the new ones; mask the
      attention with :meth:`chunk_mask` (taken *before* the update), or with
      ``window_mask(T, k.size(-2), window)``.
    """

    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_heads: int,
        head_dim: int,
        window: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        check_sizes(num_layers=num_layers, batch=batch, num_heads=num_heads, head_dim=head_dim,
                    window=window)
        check_dtype("dtype", dtype)
        device = None if device is None else check_device("device", device)
        shape = (batch, num_heads, window, head_dim)  # (B, Hkv, W, D)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self._len = [0] * num_layers
        self.num_layers, self.window = num_layers, window

    def __repr__(self) -> str:
        b, h, w, d = self.keys[0].shape
        return (
            f"RollingKVCache(num_layers={self.num_layers}, batch={b}, num_heads={h}, head_dim={d}, "
            f"window={w}, dtype={self.keys[0].dtype}, lengths={self._len})"
        )

    def length(self, layer: int = 0) -> int:
        check_int("layer", layer, low=0, high=self.num_layers - 1)
        return self._len[layer]

    def reset(self) -> None:
        self._len = [0] * self.num_layers

    def nbytes(self) -> int:
        """Bytes of the buffers (all layers, keys and values), ``2 · L · B · Hkv · W · D ·
        itemsize`` whatever the number of tokens written."""
        return sum(t.untyped_storage().nbytes() for t in self.keys + self.values)

    def _in_time_order(self, buf: torch.Tensor, n: int, count: int) -> torch.Tensor:
        """The last ``count`` of the ``n`` tokens written, oldest first: ``(B, Hkv, count, D)``."""
        slots = torch.arange(n - count, n, device=buf.device) % self.window
        return buf.index_select(2, slots)

    def chunk_mask(self, layer: int, t_new: int) -> torch.Tensor:
        """The ``(t_new, kept + t_new)`` window mask for the next ``update`` of ``t_new`` tokens at
        ``layer`` (``kept = min(length, window - 1)`` old keys come back with the new ones)."""
        check_int("layer", layer, low=0, high=self.num_layers - 1)
        check_positive_int("t_new", t_new)
        n, device = self._len[layer], self.keys[layer].device
        if t_new == 1:  # one token: every slot returned is in its window
            return torch.ones(1, min(n + 1, self.window), dtype=torch.bool, device=device)
        kept = min(n, self.window - 1)
        return window_mask(t_new, kept + t_new, self.window, device=device)

    def update(
        self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_int("layer", layer, low=0, high=self.num_layers - 1)
        self.check_update(layer, k_new, v_new, self.keys[layer])
        kbuf, vbuf = self.keys[layer], self.values[layer]
        n, t, w = self._len[layer], k_new.size(2), self.window
        if t == 1:
            kbuf[:, :, n % w] = k_new[:, :, 0]  # overwrite the key that just left the window
            vbuf[:, :, n % w] = v_new[:, :, 0]
            self._len[layer] = n + 1
            kept = min(n + 1, w)
            return kbuf[:, :, :kept], vbuf[:, :, :kept]  # (B, Hkv, kept, D): views, no copy
        past = min(n, w - 1)  # older keys are outside every new query's window
        k = torch.cat([self._in_time_order(kbuf, n, past), k_new], dim=2)  # (B, Hkv, past + T, D)
        v = torch.cat([self._in_time_order(vbuf, n, past), v_new], dim=2)
        last = min(t, w)  # only the last W new tokens can still be read later
        slots = torch.arange(n + t - last, n + t, device=kbuf.device) % w
        kbuf.index_copy_(2, slots, k_new[:, :, t - last :])
        vbuf.index_copy_(2, slots, v_new[:, :, t - last :])
        self._len[layer] = n + t
        return k, v

    def reorder(self, index: torch.Tensor) -> None:
        batch = self.keys[0].size(0)
        check_tensor("index", index, dims=1)
        if (
            index.is_floating_point()
            or index.dtype == torch.bool
            or index.numel() != batch
            or int(index.min()) < 0
            or int(index.max()) >= batch
        ):
            raise ValueError(
                f"index must be an integer tensor of {batch} row numbers in [0, {batch}), got "
                f"{describe(index)}"
            )
        for buffers in (self.keys, self.values):
            for buf in buffers:
                buf.copy_(buf[index.to(buf.device)])
