"""The KV cache: keys and values of the tokens decoded so far, kept instead of recomputed.

A decoder that generates token ``t`` needs the keys and values of tokens ``0..t-1`` at every
layer. They do not change (the mask is causal), so a cache keeps them and each step projects
only the new token's key and value. Every cache in the course implements one interface,
:class:`KVCacheBase`, per layer:

* ``update(layer, k_new, v_new) -> (k, v)``: append ``(B, Hkv, T_new, D)`` keys and values
  and return the keys and values to attend to, ``(B, Hkv, L, D)``;
* ``length(layer) -> int``: how many tokens were written so far (the position of the next one,
  which is what RoPE and the causal mask need);
* ``reset()``: forget everything (the buffers may be kept for the next sequence);
* ``reorder(index)``: keep batch rows ``index`` (beam search), optional.

:class:`KVCache` is the contiguous one: one pre-allocated ``(B, Hkv, max_len, D)`` buffer per
layer. The paged and rolling caches of the long-context notebook implement the same interface
(a rolling cache may return fewer keys than ``length``: the attention code builds its causal
mask from the keys returned, not from ``length``).

>>> cache = KVCache(num_layers=2, batch=1, num_heads=2, head_dim=4, max_len=10)
>>> k, v = cache.update(0, torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))     # a 3-token prompt
>>> k, v = cache.update(0, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))   # one more token
>>> k.shape, cache.length(0), cache.length(1)
(torch.Size([1, 2, 4, 4]), 4, 0)
>>> cache.update(0, torch.zeros(1, 2, 1, 4, dtype=torch.float64), torch.zeros(1, 2, 1, 4))
Traceback (most recent call last):
...
TypeError: all inputs must have the same dtype, got k_new torch.float64, cache torch.float32
"""

from __future__ import annotations

import abc

import torch

from course_utils.checks import (
    check_device,
    check_dtype,
    check_float_tensor,
    check_int,
    check_int_tensor,
    check_same_device,
    check_same_dtype,
    check_shape,
    check_sizes,
)

__all__ = ["KVCache", "KVCacheBase"]


class KVCacheBase(abc.ABC):
    """The interface every KV cache implements (see the module docstring).

    Subclasses set ``num_layers`` and implement :meth:`update`, :meth:`length` and
    :meth:`reset`; :meth:`reorder` is needed for beam search only. :meth:`check_update` holds
    the checks every ``update`` needs, so that a wrong layer, shape, dtype or device fails
    with a message instead of being written silently (float64 cast into a float32 cache, or
    ``layer=-1`` meaning the last layer).
    """

    num_layers: int

    @abc.abstractmethod
    def update(
        self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k_new, v_new (B, Hkv, T_new, D)``; return the keys and values to attend to."""

    @abc.abstractmethod
    def length(self, layer: int = 0) -> int:
        """Tokens written to ``layer`` so far (the position of the next token)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget every token (start a new sequence)."""

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows ``index (B,)``, in that order (beam search)."""
        raise NotImplementedError(f"{type(self).__name__} does not support reorder (beam search)")

    def check_update(
        self,
        layer: int,
        k_new: torch.Tensor,
        v_new: torch.Tensor,
        like: torch.Tensor,
        head_dim_v: int | None = None,
    ) -> None:
        """``layer`` in range and ``k_new``/``v_new`` shaped ``(B, Hkv, T, D)`` as ``like``
        (a ``(B, Hkv, *, D)`` buffer of the cache), with its dtype and device."""
        check_int("layer", layer, low=0, high=self.num_layers - 1)
        b, h, _, d = like.shape
        for name, t, dim in (("k_new", k_new, d), ("v_new", v_new, head_dim_v or d)):
            check_float_tensor(name, t, dims=4)
            check_shape(name, t, (b, h, None, dim), what=f"(B, Hkv, T, D) = {(b, h, 'T', dim)} "
                        f"(the cache holds B={b} sequences of Hkv={h} heads of D={dim} dims)")
            check_same_dtype(**{name: t, "cache": like})
            check_same_device(**{name: t, "cache": like})
        if k_new.size(2) != v_new.size(2):
            raise ValueError(f"k_new and v_new must hold the same number of tokens, got k_new "
                             f"{tuple(k_new.shape)} and v_new {tuple(v_new.shape)}")


class KVCache(KVCacheBase):
    """Contiguous, pre-allocated keys and values: one ``(B, Hkv, max_len, D)`` buffer per layer.

    ``update`` copies the new entries after the ``length(layer)`` already there and returns
    views of everything so far: nothing is re-allocated while decoding (``torch.cat`` at every
    step would copy the whole cache each time). ``nbytes()`` is the memory of the buffers.

    >>> cache = KVCache(1, batch=2, num_heads=1, head_dim=2, max_len=4)
    >>> _ = cache.update(0, torch.arange(4.).view(2, 1, 1, 2), torch.zeros(2, 1, 1, 2))
    >>> cache.reorder(torch.tensor([1, 1]))                        # beam search keeps row 1 twice
    >>> cache.keys[0][:, 0, :1].tolist(), cache.nbytes()
    ([[[2.0, 3.0]], [[2.0, 3.0]]], 128)
    """

    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        check_sizes(num_layers=num_layers, batch=batch, num_heads=num_heads, head_dim=head_dim,
                    max_len=max_len)
        check_dtype("dtype", dtype)
        device = None if device is None else check_device("device", device)
        shape = (batch, num_heads, max_len, head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self._len = [0] * num_layers
        self.num_layers, self.max_len = num_layers, max_len

    def __repr__(self) -> str:
        b, h, n, d = self.keys[0].shape
        return (f"KVCache(num_layers={self.num_layers}, batch={b}, num_heads={h}, head_dim={d}, "
                f"max_len={n}, dtype={self.keys[0].dtype}, lengths={self._len})")

    def length(self, layer: int = 0) -> int:
        check_int("layer", layer, low=0, high=self.num_layers - 1)
        return self._len[layer]

    def reset(self) -> None:
        self._len = [0] * self.num_layers

    def nbytes(self) -> int:
        """Bytes of the buffers (all layers, keys and values, filled or not)."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def update(
        self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_update(layer, k_new, v_new, self.keys[0])  # every layer has one shape
        start, t = self._len[layer], k_new.size(2)
        if start + t > self.max_len:
            raise ValueError(f"KV cache full: {start} + {t} new positions > max_len={self.max_len}"
                             f" (got k_new {tuple(k_new.shape)}); create it with a larger max_len")
        self.keys[layer][:, :, start : start + t] = k_new
        self.values[layer][:, :, start : start + t] = v_new
        self._len[layer] = end = start + t
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]  # (B, Hkv, end, D)

    def reorder(self, index: torch.Tensor) -> None:
        batch = self.keys[0].size(0)
        check_int_tensor("index", index, 1, batch, self.keys[0].device, f"({batch},): a row each")
        if int(index.min()) < 0 or int(index.max()) >= batch:
            raise ValueError(f"index must hold row numbers in [0, {batch}), got values from "
                             f"{int(index.min())} to {int(index.max())}")
        for buffers in (self.keys, self.values):
            for layer, buf in enumerate(buffers):
                n = self._len[layer]
                buf[:, :, :n] = buf[index, :, :n]  # (B, Hkv, n, D), the rows chosen
