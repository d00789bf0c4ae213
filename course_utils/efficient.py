"""Efficient attention, written out: online softmax, tiled ("flash") attention, KV cache, GQA.

Notebook 08 builds each of these step by step; this file is the tested version.

1. :func:`naive_attention` — ``softmax(q kᵀ / √d) v`` with the whole ``(Lq, Lk)`` score matrix in
   memory: O(N²) time *and* memory.
2. :func:`online_softmax` — the softmax of a stream in one pass, with a running maximum ``m``
   and a running normaliser ``l`` (Milakov & Gimelshein, 2018).
3. :func:`tiled_attention` — the same idea applied to attention (Dao et al., 2022,
   "FlashAttention"): loop over blocks of queries and keys, never hold more than one
   ``(block_q, block_k)`` tile of scores. O(N²) time, O(N) extra memory.
4. :class:`KVCache`, :func:`cached_self_attention`, :class:`DecoderLM` — autoregressive decoding
   that projects each token's key and value once, instead of recomputing the whole prefix.
5. :func:`repeat_kv`, :func:`grouped_query_attention`, :class:`GroupedQueryAttention` —
   multi-query (Shazeer, 2019) and grouped-query attention (Ainslie et al., 2023): fewer key/value
   heads than query heads, a smaller KV cache.

Masks follow the course: ``key_padding_mask`` is ``(B, Lk)`` with **True = padding**;
``causal=True`` lets query ``i`` see keys ``j <= i`` (top-left aligned, like PyTorch's
``is_causal``). A query with no key to attend to gets a zero output, never NaN.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import torch
import torch.nn.functional as F  # noqa: F401  (used by the doctests)
from torch import nn

from course_utils.attention import (
    MultiHeadAttention,
    causal_mask,
    scaled_dot_product_attention,
    split_heads,
)
from course_utils.positional import LearnedPositionalEmbedding
from course_utils.transformer import TransformerDecoder, TransformerDecoderLayer

__all__ = [
    "DecoderLM",
    "GroupedQueryAttention",
    "KVCache",
    "cached_self_attention",
    "grouped_query_attention",
    "naive_attention",
    "online_softmax",
    "peak_memory_mb",
    "peak_memory_table",
    "repeat_kv",
    "tiled_attention",
]

_LOG2E = 1.4426950408889634  # exp(x) = 2^(x · log2 e); exp2 is the cheaper instruction


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_floats(q: object, k: object, v: object) -> None:
    """q, k, v: floating-point tensors of one dtype on one device (what every function here needs)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must have the same dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on the same device, got q {q.device}, k {k.device}, v {v.device}")


def _check_qkv(q: object, k: object, v: object) -> None:
    _check_floats(q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (..., L, D), got {_shape(t)}")
    if q.size(-1) != k.size(-1):
        raise ValueError(f"q and k must have the same head dim, got q {_shape(q)} and k {_shape(k)}")
    if k.size(-2) != v.size(-2):
        raise ValueError(f"k and v must have the same number of keys (dim -2), got k {_shape(k)} and v {_shape(v)}")
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise ValueError(
            f"q, k and v must have the same leading (batch, head) dims, got q {_shape(q)}, k {_shape(k)}, "
            f"v {_shape(v)}"
        )


def _check_padding(key_padding_mask: object, q: torch.Tensor, lk: int) -> None:
    if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
        got = key_padding_mask.dtype if isinstance(key_padding_mask, torch.Tensor) else type(key_padding_mask).__name__
        raise TypeError(f"key_padding_mask must be a bool tensor (True = padding), got {got}")
    if q.dim() < 3 or _shape(key_padding_mask) != (q.size(0), lk):
        raise ValueError(
            f"key_padding_mask must have shape (B, Lk) = {(q.size(0) if q.dim() >= 3 else '?', lk)} for q of "
            f"shape (B, [H,] Lq, D), got key_padding_mask {_shape(key_padding_mask)} and q {_shape(q)}"
        )
    if key_padding_mask.device != q.device:
        raise ValueError(f"key_padding_mask must be on q's device {q.device}, got {key_padding_mask.device}")


# ---------------------------------------------------------------------------------------------
# 1. The reference: the whole score matrix at once
# ---------------------------------------------------------------------------------------------


def naive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """``softmax(q kᵀ · scale) v`` with the full ``(..., Lq, Lk)`` scores in memory.

    The course's :func:`~course_utils.attention.scaled_dot_product_attention` with the
    masks of this file's signature; it is the reference every faster version is tested against.

    >>> q = k = v = torch.randn(1, 2, 5, 4)
    >>> torch.allclose(naive_attention(q, k, v, causal=True),
    ...                F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6)
    True
    """
    _check_qkv(q, k, v)
    mask = None
    if key_padding_mask is not None:
        _check_padding(key_padding_mask, q, k.size(-2))
        keep = ~key_padding_mask  # (B, Lk), True = may attend
        mask = keep.view(keep.size(0), *([1] * (q.dim() - 2)), keep.size(1))  # (B, 1.., 1, Lk)
    scale = q.size(-1) ** -0.5 if scale is None else scale
    if mask is None and not causal:  # the textbook formula, nothing else
        return torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1) @ v
    return scaled_dot_product_attention(q, k, v, attn_mask=mask, causal=causal, scale=scale)


# ---------------------------------------------------------------------------------------------
# 2. Online softmax
# ---------------------------------------------------------------------------------------------


def online_softmax(x: torch.Tensor, block: int = 1) -> torch.Tensor:
    r"""Softmax over the last dim, reading ``x`` in blocks of ``block`` entries, once.

    Keep the running maximum ``m`` and the running sum ``l = Σ exp(x_j - m)``. When a new block
    raises the maximum from ``m`` to ``m'``, every term already in ``l`` was computed against the
    old maximum, so it is rescaled by ``exp(m - m')``:

    .. math:: m' = \max(m, \max_j x_j), \qquad l' = l\,e^{m - m'} + \sum_j e^{x_j - m'}.

    At the end ``softmax(x)_j = exp(x_j - m) / l``.

    >>> x = torch.tensor([1.0, 3.0, 2.0, 5.0, 0.0])
    >>> torch.allclose(online_softmax(x, block=2), torch.softmax(x, -1))
    True
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        got = f"dtype {x.dtype}, shape {_shape(x)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x must be a floating-point tensor with at least one dim, got {got}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    m = torch.full(x.shape[:-1] + (1,), -math.inf, dtype=x.dtype, device=x.device)  # running max
    l = torch.zeros_like(m)  # noqa: E741  # running normaliser
    for j in range(0, x.size(-1), block):
        xb = x[..., j : j + block]
        m_new = torch.maximum(m, xb.amax(-1, keepdim=True))
        l = l * torch.exp(m - m_new) + torch.exp(xb - m_new).sum(-1, keepdim=True)  # noqa: E741
        m = m_new
    return torch.exp(x - m) / l


# ---------------------------------------------------------------------------------------------
# 3. Tiled ("flash") attention
# ---------------------------------------------------------------------------------------------


def tiled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    block_q: int = 256,
    block_k: int = 512,
) -> torch.Tensor:
    r"""Attention computed tile by tile with an online softmax: O(N) extra memory.

    For each block of ``block_q`` queries, loop over blocks of ``block_k`` keys, keeping per query
    row the running max ``m``, the running normaliser ``l`` and the un-normalised output ``acc``::

        S    = Q_i K_jᵀ · scale                     # (block_q, block_k): the only big tensor
        m'   = max(m, rowmax(S))
        P    = exp(S - m')
        l    = l · exp(m - m') + rowsum(P)
        acc  = acc · exp(m - m') + P V_j
        out_i = acc / l                             # after the last key block

    Shapes: ``q (..., Lq, D)``, ``k (..., Lk, D)``, ``v (..., Lk, Dv)`` with the same leading
    dims; ``key_padding_mask`` ``(B, Lk)`` (True = padding) for ``q`` of shape ``(B, [H,] Lq, D)``.
    ``causal=True`` skips the key blocks that lie wholly in the future and masks only the tiles
    on the diagonal (no ``(Lq, Lk)`` mask is ever built). Block sizes need not divide the lengths.

    Gradients flow through it with autograd (the in-place fast path is used only when no input
    requires grad); FlashAttention proper instead recomputes the tiles in a custom backward.

    >>> q, k, v = torch.randn(2, 4, 100, 16), torch.randn(2, 4, 70, 16), torch.randn(2, 4, 70, 8)
    >>> out = tiled_attention(q, k, v, block_q=32, block_k=24)        # (2, 4, 100, 8)
    >>> torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5)
    True
    """
    _check_qkv(q, k, v)
    for name, b in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"{name} must be a positive int, got {b!r}")
    lead, lq, d = q.shape[:-2], q.size(-2), q.size(-1)
    lk, dv = k.size(-2), v.size(-1)
    if key_padding_mask is not None:
        _check_padding(key_padding_mask, q, lk)
    scale = d**-0.5 if scale is None else scale
    out_dtype = q.dtype
    if q.dtype in (torch.float16, torch.bfloat16):  # accumulate in float32
        q, k, v = q.float(), k.float(), v.float()

    bh = math.prod(lead)
    # Fold the scale and log2(e) into each query block (bq·D multiplications instead of bq·Lk),
    # so that every tile needs only exp2(S - m).
    c = scale * _LOG2E
    qf = q.reshape(bh, lq, d)  # (BH, Lq, D)
    kt = k.reshape(bh, lk, d).transpose(1, 2)  # (BH, D, Lk), a view
    vf = v.reshape(bh, lk, dv)  # (BH, Lk, Dv)
    pad = None
    if key_padding_mask is not None:
        per_b = bh // q.size(0)  # heads per batch element
        pad = key_padding_mask[:, None, :].expand(q.size(0), per_b, lk).reshape(bh, 1, lk)  # (BH, 1, Lk)

    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    rows = []  # with autograd: the output blocks, concatenated at the end
    out = s_buf = None
    if not grad:
        out = torch.empty(bh, lq, dv, dtype=qf.dtype, device=qf.device)
        s_buf = torch.empty(bh * min(block_q, lq) * min(block_k, lk), dtype=qf.dtype, device=qf.device)
    for i0 in range(0, lq, block_q):
        i1 = min(i0 + block_q, lq)
        qb = qf[:, i0:i1] * c  # (BH, bq, D)
        nq = i1 - i0
        m = torch.full((bh, nq, 1), -math.inf, dtype=qf.dtype, device=qf.device)  # running max
        l = torch.zeros(bh, nq, 1, dtype=qf.dtype, device=qf.device)  # noqa: E741  # running sum
        acc = torch.zeros(bh, nq, dv, dtype=qf.dtype, device=qf.device)  # un-normalised output
        k_end = min(lk, i1) if causal else lk  # keys after the last query of the block: skipped
        for j0 in range(0, k_end, block_k):
            j1 = min(j0 + block_k, k_end)
            if grad:
                s = torch.bmm(qb, kt[:, :, j0:j1])  # (BH, bq, bk) scores, in log2 units
            else:  # reuse one buffer for every tile: no allocation, no allocator churn
                s = torch.bmm(qb, kt[:, :, j0:j1], out=s_buf[: bh * nq * (j1 - j0)].view(bh, nq, j1 - j0))
            if causal and j1 - 1 > i0:  # a diagonal tile: some keys are in some query's future
                future = torch.arange(j0, j1, device=s.device) > torch.arange(i0, i1, device=s.device)[:, None]
                s = s.masked_fill(future, -math.inf) if grad else s.masked_fill_(future, -math.inf)
            if pad is not None:
                p_tile = pad[:, :, j0:j1]  # (BH, 1, bk)
                s = s.masked_fill(p_tile, -math.inf) if grad else s.masked_fill_(p_tile, -math.inf)
            m_new = torch.maximum(m, s.amax(-1, keepdim=True))  # (BH, bq, 1)
            # rows that have seen no allowed key yet keep m = -inf; subtract 0 there, not -inf
            m_safe = torch.where(m_new == -math.inf, 0.0, m_new)
            alpha = torch.exp2(m - m_safe)  # rescales what was accumulated so far
            if grad:  # out-of-place: autograd keeps every intermediate it needs
                p = torch.exp2(s - m_safe)
                l = l * alpha + p.sum(-1, keepdim=True)  # noqa: E741
                acc = torch.baddbmm(acc * alpha, p, vf[:, j0:j1])
            else:  # in place: no new (bq, bk) tensor per step
                p = s.sub_(m_safe).exp2_()
                l.mul_(alpha).add_(p.sum(-1, keepdim=True))
                acc.mul_(alpha).baddbmm_(p, vf[:, j0:j1])
            m = m_new
        l_safe = torch.where(l == 0, 1.0, l)  # fully masked row: acc = 0, output 0
        if grad:
            rows.append(acc / l_safe)
        else:
            out[:, i0:i1] = acc.div_(l_safe)
    if grad:
        out = torch.cat(rows, dim=1) if len(rows) > 1 else rows[0]  # (BH, Lq, Dv)
    return out.reshape(*lead, lq, dv).to(out_dtype)


# ---------------------------------------------------------------------------------------------
# 4. Multi-query and grouped-query attention
# ---------------------------------------------------------------------------------------------


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, Hkv, L, D) -> (B, Hkv·n_rep, L, D)``: each key/value head serves ``n_rep`` query heads.

    Head ``h`` of the result is head ``h // n_rep`` of ``x`` (the layout of LLaMA's ``repeat_kv``).

    >>> repeat_kv(torch.arange(2.0).view(1, 2, 1, 1), 3).flatten().tolist()
    [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = _shape(x) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (B, Hkv, L, D), got {got}")
    if isinstance(n_rep, bool) or not isinstance(n_rep, int) or n_rep < 1:
        raise ValueError(f"n_rep must be a positive int, got {n_rep!r}")
    if n_rep == 1:
        return x
    b, h, length, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, length, d).reshape(b, h * n_rep, length, d)


def grouped_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention with fewer key/value heads than query heads, without copying K and V.

    ``q (B, H, Lq, D)``, ``k (B, Hkv, Lk, D)``, ``v (B, Hkv, Lk, Dv)`` with ``H % Hkv == 0``;
    ``Hkv = 1`` is multi-query attention, ``Hkv = H`` is ordinary multi-head attention. The
    queries of the ``H/Hkv`` heads that share a key/value head are stacked along the sequence
    axis, ``(B, Hkv, (H/Hkv)·Lq, D)``, and attend to ``(B, Hkv, Lk, D)`` in one call: each
    key/value head is read once for its whole group. Equal to attention with :func:`repeat_kv`
    applied to ``k`` and ``v``.

    >>> q, k, v = torch.randn(2, 8, 5, 4), torch.randn(2, 2, 6, 4), torch.randn(2, 2, 6, 4)
    >>> ref = F.scaled_dot_product_attention(q, repeat_kv(k, 4), repeat_kv(v, 4))
    >>> torch.allclose(grouped_query_attention(q, k, v), ref, atol=1e-6)
    True
    """
    _check_floats(q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (B, heads, L, D), got {_shape(t)}")
    b, h, lq, d = q.shape
    hkv = k.size(1)
    if hkv == 0 or h % hkv != 0 or v.size(1) != hkv:
        raise ValueError(
            f"the number of query heads must be a multiple of the number of key/value heads, got q {_shape(q)}, "
            f"k {_shape(k)}, v {_shape(v)}"
        )
    if k.size(0) != b or v.size(0) != b or k.size(-1) != d or k.size(-2) != v.size(-2):
        raise ValueError(
            f"expected q (B, H, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv), got q {_shape(q)}, k {_shape(k)}, "
            f"v {_shape(v)}"
        )
    g, lk = h // hkv, k.size(-2)
    # The G query heads of a group share one key/value head, so stack their queries along the
    # sequence axis: (B, Hkv, G·Lq, D) against (B, Hkv, Lk, D) is one ordinary attention call in
    # which each K/V head is read once for its whole group — no copy of K and V, and no 5-D
    # broadcast (which the matmul would materialise group by group).
    qg = q.reshape(b, hkv, g * lq, d)  # (B, Hkv, G·Lq, D); row r is query r % Lq of head r // Lq
    mask = None
    if causal:  # query i may attend keys j <= i, whichever head of the group it belongs to
        mask = causal_mask(lq, lk, device=q.device).repeat(g, 1)  # (G·Lq, Lk)
    if key_padding_mask is not None:
        _check_padding(key_padding_mask, q, lk)
        keep = (~key_padding_mask)[:, None, None, :]  # (B, 1, 1, Lk)
        mask = keep if mask is None else mask & keep  # (B, 1, G·Lq, Lk)
    out = scaled_dot_product_attention(qg, k, v, attn_mask=mask)  # (B, Hkv, G·Lq, Dv)
    return out.reshape(b, h, lq, v.size(-1))


class GroupedQueryAttention(nn.Module):
    """Self-attention with ``num_kv_heads`` key/value heads shared by ``num_heads`` query heads.

    ``k_proj`` and ``v_proj`` map ``embed_dim`` to ``num_kv_heads · head_dim`` only, so the
    parameters and the KV cache of those projections shrink by ``num_heads / num_kv_heads``.
    ``forward(x, is_causal=False, key_padding_mask=None, cache=None, layer=0)`` returns
    ``(B, T, E)``; with a :class:`KVCache` it appends the new keys/values and attends to all.

    >>> gqa = GroupedQueryAttention(embed_dim=32, num_heads=8, num_kv_heads=2)
    >>> gqa(torch.randn(2, 5, 32), is_causal=True).shape
    torch.Size([2, 5, 32])
    >>> gqa.k_proj.weight.shape                                   # 2 heads × 4 dims
    torch.Size([8, 32])
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: int, bias: bool = True) -> None:
        super().__init__()
        if embed_dim % num_heads or num_heads % num_kv_heads:
            raise ValueError(
                "embed_dim must be divisible by num_heads and num_heads by num_kv_heads, got "
                f"embed_dim={embed_dim}, num_heads={num_heads}, num_kv_heads={num_kv_heads}"
            )
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        is_causal: bool = False,
        key_padding_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        q = split_heads(self.q_proj(x), self.num_heads)  # (B, H, T, D)
        k = split_heads(self.k_proj(x), self.num_kv_heads)  # (B, Hkv, T, D)
        v = split_heads(self.v_proj(x), self.num_kv_heads)  # (B, Hkv, T, D)
        if cache is None:
            out = grouped_query_attention(q, k, v, causal=is_causal, key_padding_mask=key_padding_mask)
        else:
            start = cache.length(layer)
            k, v = cache.update(layer, k, v)  # (B, Hkv, start + T, D)
            mask = _decode_mask(q.size(2), start, q.device)
            g = self.num_heads // self.num_kv_heads
            b, _, t, d = q.shape
            out = scaled_dot_product_attention(
                q.view(b, self.num_kv_heads, g, t, d), k[:, :, None], v[:, :, None], attn_mask=mask
            ).reshape(b, self.num_heads, t, d)
        return self.out_proj(out.transpose(1, 2).flatten(2))


# ---------------------------------------------------------------------------------------------
# 5. KV cache
# ---------------------------------------------------------------------------------------------


class KVCache:
    """Pre-allocated keys and values of the tokens decoded so far, one slot per layer.

    ``update(layer, k_new, v_new)`` writes ``(B, Hkv, T_new, D)`` after the ``length(layer)``
    entries already there and returns views of everything so far, ``(B, Hkv, length, D)``.
    Nothing is re-allocated while decoding (``torch.cat`` at every step would copy the whole cache).

    >>> cache = KVCache(num_layers=1, batch=1, num_heads=2, head_dim=4, max_len=10)
    >>> k, v = cache.update(0, torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))
    >>> k, v = cache.update(0, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    >>> k.shape, cache.length(0), cache.nbytes()
    (torch.Size([1, 2, 4, 4]), 4, 640)
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
        shape = (batch, num_heads, max_len, head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self._len = [0] * num_layers
        self.max_len = max_len

    def length(self, layer: int = 0) -> int:
        """How many positions of ``layer`` are filled."""
        return self._len[layer]

    def nbytes(self) -> int:
        """Bytes of the buffers (all layers, keys and values, filled or not)."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, t = self._len[layer], k_new.size(2)
        if start + t > self.max_len:
            raise ValueError(f"KV cache full: {start} + {t} new positions > max_len={self.max_len}")
        if k_new.shape[:2] != self.keys[layer].shape[:2] or k_new.size(3) != self.keys[layer].size(3):
            raise ValueError(
                f"k_new must have shape (B, Hkv, T, D) = {(*self.keys[layer].shape[:2], 'T', self.keys[layer].size(3))}, "
                f"got {_shape(k_new)}"
            )
        self.keys[layer][:, :, start : start + t] = k_new
        self.values[layer][:, :, start : start + t] = v_new
        self._len[layer] = start + t
        return self.keys[layer][:, :, : start + t], self.values[layer][:, :, : start + t]


def _decode_mask(t_new: int, start: int, device: torch.device) -> torch.Tensor | None:
    """Causal mask for ``t_new`` new queries at positions ``start..`` against ``start + t_new`` keys.

    Bottom-right aligned (new query ``i`` sees keys ``0..start+i``); ``None`` for one new token,
    which sees every key in the cache.
    """
    if t_new == 1:
        return None
    rows = torch.arange(start, start + t_new, device=device)[:, None]
    return torch.arange(start + t_new, device=device) <= rows  # (T_new, start + T_new), True = attend


def cached_self_attention(mha: MultiHeadAttention, x: torch.Tensor, cache: KVCache, layer: int = 0) -> torch.Tensor:
    """Causal self-attention of the course's :class:`MultiHeadAttention` for new tokens only.

    ``x (B, T_new, E)`` holds the tokens after the ``cache.length(layer)`` already decoded; their
    keys and values are projected once and appended to ``cache``. The result equals the rows
    ``-T_new:`` of ``mha(whole_sequence, is_causal=True)``.

    >>> mha = MultiHeadAttention(16, 4).eval()
    >>> x = torch.randn(1, 6, 16)
    >>> cache = KVCache(1, batch=1, num_heads=4, head_dim=4, max_len=6)
    >>> steps = [cached_self_attention(mha, x[:, :3], cache)] + [
    ...     cached_self_attention(mha, x[:, t : t + 1], cache) for t in range(3, 6)]
    >>> torch.allclose(torch.cat(steps, 1), mha(x, is_causal=True)[0], atol=1e-6)
    True
    """
    if not mha.batch_first:
        raise ValueError("cached_self_attention needs a batch_first MultiHeadAttention")
    start = cache.length(layer)
    q = split_heads(mha.q_proj(x), mha.num_heads)  # (B, H, T_new, D)
    k = split_heads(mha.k_proj(x), mha.num_heads)
    v = split_heads(mha.v_proj(x), mha.num_heads)
    k, v = cache.update(layer, k, v)  # (B, H, start + T_new, D)
    out = scaled_dot_product_attention(q, k, v, attn_mask=_decode_mask(x.size(1), start, x.device))
    return mha.out_proj(out.transpose(1, 2).flatten(2))  # (B, T_new, E)


class DecoderLM(nn.Module):
    """A small conditional language model: embeddings, the course's decoder stack, a head.

    ``forward(tokens, memory)`` scores every position at once (causal), the way training and
    "recompute" decoding see it. ``generate(memory, start, steps, use_cache)`` decodes greedily:
    with ``use_cache=False`` it re-runs ``forward`` on the whole prefix at every step (O(T²)
    token-layers); with ``use_cache=True`` it feeds only the newest token, keeps the
    self-attention keys/values in a :class:`KVCache` and projects the memory's keys/values once.

    >>> lm = DecoderLM(vocab=50, d_model=32, nhead=4, num_layers=2, max_len=20).eval()
    >>> memory = torch.randn(2, 7, 32)
    >>> start = torch.zeros(2, 1, dtype=torch.long)
    >>> torch.equal(lm.generate(memory, start, 12, use_cache=True),
    ...             lm.generate(memory, start, 12, use_cache=False))
    True
    """

    def __init__(
        self,
        vocab: int,
        d_model: int = 128,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int | None = None,
        max_len: int = 2048,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = LearnedPositionalEmbedding(max_len, d_model)
        nn.init.normal_(self.pos.weight, std=0.02)
        layer = TransformerDecoderLayer(
            d_model, nhead, dim_feedforward or 4 * d_model, dropout=0.0, norm_first=True
        )
        self.decoder = TransformerDecoder(layer, num_layers, norm=nn.LayerNorm(d_model))
        self.head = nn.Linear(d_model, vocab)
        self.max_len = max_len

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``tokens (B, T)``, ``memory (B, S, E)`` -> logits ``(B, T, vocab)``."""
        x = self.pos(self.embed(tokens))  # (B, T, E)
        return self.head(self.decoder(x, memory, tgt_is_causal=True))

    def new_cache(self, batch: int, max_len: int, memory: torch.Tensor) -> tuple[KVCache, list]:
        """An empty self-attention cache and the memory's keys/values per layer (computed once)."""
        first = self.decoder.layers[0].self_attn
        cache = KVCache(
            len(self.decoder.layers), batch, first.num_heads, first.head_dim, max_len,
            dtype=memory.dtype, device=memory.device,
        )
        cross = []
        for layer in self.decoder.layers:
            mha = layer.multihead_attn
            cross.append((split_heads(mha.k_proj(memory), mha.num_heads), split_heads(mha.v_proj(memory), mha.num_heads)))
        return cache, cross

    def step(self, tokens: torch.Tensor, cache: KVCache, cross: list) -> torch.Tensor:
        """Logits ``(B, T_new, vocab)`` for the new ``tokens (B, T_new)``, using and filling ``cache``."""
        x = self.pos(self.embed(tokens), offset=cache.length(0))  # (B, T_new, E)
        for i, layer in enumerate(self.decoder.layers):
            x = _decoder_layer_step(layer, x, cache, i, cross[i])
        return self.head(self.decoder.norm(x))

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, start: torch.Tensor, steps: int, use_cache: bool = True) -> torch.Tensor:
        """Greedy decoding of ``steps`` tokens after ``start (B, T0)``; returns ``(B, T0 + steps)``."""
        tokens = start
        if start.size(1) + steps > self.max_len:
            raise ValueError(f"start length {start.size(1)} + steps {steps} exceeds max_len={self.max_len}")
        if not use_cache:
            for _ in range(steps):
                nxt = self(tokens, memory)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
                tokens = torch.cat([tokens, nxt], dim=1)
            return tokens
        cache, cross = self.new_cache(start.size(0), start.size(1) + steps, memory)
        logits = self.step(start, cache, cross)  # the prompt, all at once ("prefill")
        out = [start]
        for _ in range(steps):
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            out.append(nxt)
            logits = self.step(nxt, cache, cross)
        return torch.cat(out, dim=1)


def _decoder_layer_step(
    layer: TransformerDecoderLayer,
    x: torch.Tensor,
    cache: KVCache,
    index: int,
    cross_kv: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """One :class:`TransformerDecoderLayer` on new tokens only (causal self-attention from the cache).

    The same sub-layers in the same order as ``TransformerDecoderLayer.forward`` (pre- or
    post-LN); only the attention inputs change. Dropout is skipped: decoding runs in eval mode.
    """
    if layer.training:
        raise RuntimeError("cached decoding is for inference: call model.eval() first")
    mha = layer.multihead_attn

    def cross(h: torch.Tensor) -> torch.Tensor:
        q = split_heads(mha.q_proj(h), mha.num_heads)  # (B, H, T_new, D)
        out = scaled_dot_product_attention(q, *cross_kv)  # memory keys/values, projected once
        return mha.out_proj(out.transpose(1, 2).flatten(2))

    if layer.norm_first:
        x = x + cached_self_attention(layer.self_attn, layer.norm1(x), cache, index)
        x = x + cross(layer.norm2(x))
        x = x + layer._ff_block(layer.norm3(x))
    else:
        x = layer.norm1(x + cached_self_attention(layer.self_attn, x, cache, index))
        x = layer.norm2(x + cross(x))
        x = layer.norm3(x + layer._ff_block(x))
    return x


# ---------------------------------------------------------------------------------------------
# Measuring memory honestly: one fresh process per measurement
# ---------------------------------------------------------------------------------------------

_MEMORY_SCRIPT = r"""
import json, resource, sys, torch
import torch.nn.functional as F
from course_utils.efficient import naive_attention, tiled_attention
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
fns = {"naive": naive_attention, "tiled": tiled_attention, "sdpa": F.scaled_dot_product_attention,
       "none": lambda q, k, v: None}
fn = fns[cfg["method"]]
page_kb = resource.getpagesize() // 1024
def rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page_kb
def reset_peak():  # Linux >= 4.0: writing 5 to clear_refs resets the peak RSS (VmHWM)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
def peak_kb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = []
with torch.no_grad():
    for n in cfg["ns"]:
        q, k, v = (torch.randn(cfg["b"], cfg["h"], n, cfg["d"]) for _ in range(3))
        fn(q[..., :8, :], k[..., :8, :], v[..., :8, :])   # load the code paths (libraries, kernels)
        reset_peak()
        before = rss_kb()
        fn(q, k, v)
        after = peak_kb()
        result.append(max(after - before, 0) / 1024)
        del q, k, v
print(json.dumps(result))
"""


def peak_memory_mb(
    method: str, n: int | list[int], b: int = 1, h: int = 8, d: int = 64, threads: int | None = None
) -> float | list[float]:
    """Peak extra resident memory (MiB) of one attention call, measured in a fresh Python process.

    ``method`` is ``"naive"``, ``"tiled"`` or ``"sdpa"``; ``q, k, v`` are float32 ``(b, h, n, d)``.
    The child process creates the inputs, runs a tiny warm-up call (so that libraries and kernels
    are loaded), resets the kernel's record of its peak resident memory (``VmHWM``, Linux), reads
    its resident memory (RSS), runs the call and reads the peak again: the difference is what the
    call needed at its peak, inputs excluded.

    With a list of lengths one child measures them all, in increasing order (quicker; the
    benchmark uses one process per configuration all the same).
    """
    out = peak_memory_table([method], n if isinstance(n, list) else [n], b=b, h=h, d=d, threads=threads)[method]
    return out[0] if isinstance(n, int) else out


def peak_memory_table(
    methods: list[str], ns: list[int], b: int = 1, h: int = 8, d: int = 64, threads: int | None = None
) -> dict[str, list[float]]:
    """:func:`peak_memory_mb` for several methods: one process per method, run side by side.

    >>> table = peak_memory_table(["naive", "tiled"], [256])
    >>> sorted(table), len(table["naive"])
    (['naive', 'tiled'], 1)
    """
    for method in methods:
        if method not in ("naive", "tiled", "sdpa", "none"):
            raise ValueError(f'method must be "naive", "tiled" or "sdpa", got {method!r}')
    procs = {}
    for method in methods:  # separate processes: measurements cannot see each other's memory
        cfg = {"method": method, "ns": sorted(ns), "b": b, "h": h, "d": d,
               "threads": threads or torch.get_num_threads()}
        procs[method] = (cfg, subprocess.Popen(
            [sys.executable, "-c", _MEMORY_SCRIPT, json.dumps(cfg)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    table = {}
    for method, (cfg, proc) in procs.items():
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"memory measurement {cfg} failed:\n{stderr[-2000:]}")
        by_n = dict(zip(sorted(ns), json.loads(stdout.strip().splitlines()[-1]), strict=True))
        table[method] = [by_n[n] for n in ns]
    return table
