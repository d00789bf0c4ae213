"""Efficient attention, written out: online softmax, tiled ("flash") attention, KV-cache decoding.

Notebook 08 builds each of these step by step; this file is the tested version.

1. :func:`naive_attention` — ``softmax(q kᵀ / √d) v`` with the whole ``(Lq, Lk)`` score matrix in
   memory: O(N²) time *and* memory.
2. :func:`online_softmax` — the softmax of a stream in one pass, with a running maximum ``m``
   and a running normaliser ``l`` (Milakov & Gimelshein, 2018).
3. :func:`tiled_attention` — the same idea applied to attention (Dao et al., 2022,
   "FlashAttention"): loop over blocks of queries and keys, never hold more than one
   ``(block_q, block_k)`` tile of scores. O(N²) time, O(N) extra memory.
4. :class:`DecoderLM` — a small decoder that generates with the KV cache of
   :mod:`course_utils.kv_cache` through :mod:`course_utils.decoding`, projecting each token's
   key and value once instead of recomputing the whole prefix.

Multi-query and grouped-query attention (:func:`repeat_kv`, :func:`grouped_query_attention`,
:class:`GroupedQueryAttention`) live in :mod:`course_utils.attention`, the KV cache
(:class:`KVCache`) in :mod:`course_utils.kv_cache` and the memory probes
(:func:`peak_memory_mb`, :func:`peak_memory_table`) in :mod:`course_utils.monitor`; they are
importable from here too.

Masks follow the course: ``key_padding_mask`` is ``(B, Lk)`` with **True = padding**;
``causal=True`` lets query ``i`` see keys ``j <= i`` (top-left aligned, like PyTorch's
``is_causal``). A query with no key to attend to gets a zero output, never NaN.

>>> q, k, v = torch.randn(1, 2, 300, 16), torch.randn(1, 2, 300, 16), torch.randn(1, 2, 300, 16)
>>> torch.allclose(tiled_attention(q, k, v, causal=True, block_q=64, block_k=128),
...                naive_attention(q, k, v, causal=True), atol=1e-5)
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: F401  (used by the doctests)
from torch import nn

from course_utils.attention import (
    GroupedQueryAttention,
    MultiHeadAttention,
    grouped_query_attention,
    repeat_kv,
    scaled_dot_product_attention,
)
from course_utils.checks import (
    check_finite,
    check_float_tensor,
    check_instances,
    check_non_negative_int,
    check_optional_sizes,
    check_padding_mask,
    check_positive_int,
    check_qkv,
    check_same_device,
    check_same_size,
    check_sequences,
    check_shape,
    check_sizes,
    check_token_ids,
)
from course_utils.decoding import greedy
from course_utils.kv_cache import KVCache, KVCacheBase
from course_utils.monitor import peak_memory_mb, peak_memory_table
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


def _check_inputs(q: object, k: object, v: object, key_padding_mask: object, causal: bool,
                  scale: float | None) -> None:
    """q, k, v with the same leading dims; key_padding_mask ``(B, Lk)`` for ``q (B, ..., D)``."""
    check_qkv(q, k, v, scale=scale, causal=causal)
    check_shape("k", k, (*q.shape[:-2], None, q.size(-1)), what=f"q's (..., Lk, D) = "
                f"{(*q.shape[:-2], 'Lk', q.size(-1))}")
    check_shape("v", v, (*q.shape[:-2], k.size(-2), None), what="(..., Lk, Dv) with k's Lk")
    if key_padding_mask is not None:
        check_float_tensor("q (with a key_padding_mask)", q, min_dims=3)
        check_padding_mask("key_padding_mask", key_padding_mask, q.size(0), k.size(-2), q.device)


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
    _check_inputs(q, k, v, key_padding_mask, causal, scale)
    mask = None
    if key_padding_mask is not None:
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
    check_float_tensor("x", x, min_dims=1)
    check_positive_int("block", block)
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
    All heads of a block go through one batched matmul, and the scale and ``log2 e`` are folded
    into the query block once, so that each tile needs only ``exp2(S - m)``.

    Gradients flow through it with autograd; FlashAttention proper instead recomputes the tiles
    in a custom backward. When no input requires grad, the same loop runs in place in one
    score buffer (:func:`_tiled_attention_in_place`), which is what the benchmarks time.

    >>> q, k, v = torch.randn(2, 4, 100, 16), torch.randn(2, 4, 70, 16), torch.randn(2, 4, 70, 8)
    >>> out = tiled_attention(q, k, v, block_q=32, block_k=24)        # (2, 4, 100, 8)
    >>> torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5)
    True
    """
    _check_inputs(q, k, v, key_padding_mask, causal, scale)
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)
    lead, lq, dv = q.shape[:-2], q.size(-2), v.size(-1)
    scale = q.size(-1) ** -0.5 if scale is None else scale
    qf, kt, vf, pad = _as_batched_heads(q, k, v, key_padding_mask)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if not grad:
        out = _tiled_attention_in_place(qf, kt, vf, pad, causal, scale, block_q, block_k)
        return out.reshape(*lead, lq, dv).to(q.dtype)

    c = scale * _LOG2E  # exp(s · scale) = exp2(s · scale · log2 e)
    rows = []
    for i0 in range(0, lq, block_q):
        i1 = min(i0 + block_q, lq)
        qb = qf[:, i0:i1] * c  # (BH, bq, D)
        m = qb.new_full((qb.size(0), i1 - i0, 1), -math.inf)  # running max
        l = torch.zeros_like(m)  # noqa: E741  # running sum
        acc = qb.new_zeros(qb.size(0), i1 - i0, dv)  # un-normalised output
        for j0, j1 in _key_blocks(i1, kt.size(-1), block_k, causal):
            s = torch.bmm(qb, kt[:, :, j0:j1])  # (BH, bq, bk) scores, in log2 units
            forbidden = _tile_mask(i0, i1, j0, j1, causal, pad)
            s = s if forbidden is None else s.masked_fill(forbidden, -math.inf)
            m_new = torch.maximum(m, s.amax(-1, keepdim=True))  # (BH, bq, 1)
            # rows that have seen no allowed key yet keep m = -inf; subtract 0 there, not -inf
            m_safe = torch.where(m_new == -math.inf, 0.0, m_new)
            alpha = torch.exp2(m - m_safe)  # rescales what was accumulated so far
            p = torch.exp2(s - m_safe)
            l = l * alpha + p.sum(-1, keepdim=True)  # noqa: E741
            acc = torch.baddbmm(acc * alpha, p, vf[:, j0:j1])
            m = m_new
        rows.append(acc / torch.where(l == 0, 1.0, l))  # fully masked row: acc = 0, output 0
    out = torch.cat(rows, dim=1)  # (BH, Lq, Dv)
    return out.reshape(*lead, lq, dv).to(q.dtype)


def _as_batched_heads(q, k, v, key_padding_mask):
    """``(..., L, D)`` -> ``(BH, L, D)`` float32 views (keys transposed, ``(BH, D, Lk)``) and
    the padding mask as ``(BH, 1, Lk)``."""
    lead, lq, lk = q.shape[:-2], q.size(-2), k.size(-2)
    bh = math.prod(lead)
    work = torch.promote_types(q.dtype, torch.float)  # accumulate fp16/bf16 in float32
    qf = q.reshape(bh, lq, q.size(-1)).to(work)  # (BH, Lq, D)
    kt = k.reshape(bh, lk, k.size(-1)).to(work).transpose(1, 2)  # (BH, D, Lk), a view
    vf = v.reshape(bh, lk, v.size(-1)).to(work)  # (BH, Lk, Dv)
    pad = None
    if key_padding_mask is not None:  # (B, Lk) -> (BH, 1, Lk): the same row for every head
        per_b = bh // q.size(0)
        pad = key_padding_mask[:, None, :].expand(q.size(0), per_b, lk).reshape(bh, 1, lk)
    return qf, kt, vf, pad


def _key_blocks(i1: int, lk: int, block_k: int, causal: bool):
    """``(j0, j1)`` of the key blocks a query block ending at ``i1`` needs: with a causal mask,
    the keys after its last query are skipped."""
    k_end = min(lk, i1) if causal else lk
    return ((j0, min(j0 + block_k, k_end)) for j0 in range(0, k_end, block_k))


def _tile_mask(i0, i1, j0, j1, causal, pad):
    """True where query ``i0..i1`` may not see key ``j0..j1`` (the future, padding), or None."""
    forbidden = None
    if causal and j1 - 1 > i0:  # a diagonal tile: some keys are in some query's future
        future = torch.arange(j0, j1, device=pad.device if pad is not None else None)
        forbidden = future > torch.arange(i0, i1, device=future.device)[:, None]  # (bq, bk)
    if pad is not None:
        tile = pad[:, :, j0:j1]  # (BH, 1, bk)
        forbidden = tile if forbidden is None else forbidden | tile
    return forbidden


def _tiled_attention_in_place(qf, kt, vf, pad, causal, scale, block_q, block_k) -> torch.Tensor:
    """:func:`tiled_attention`'s loop without autograd, in place: one score buffer for every
    tile and in-place updates of ``m``, ``l`` and ``acc``, so no tile allocates memory."""
    (bh, lq, _), (lk, dv) = qf.shape, vf.shape[1:]
    c = scale * _LOG2E
    out = qf.new_empty(bh, lq, dv)
    s_buf = qf.new_empty(bh * min(block_q, lq) * min(block_k, lk))
    for i0 in range(0, lq, block_q):
        i1 = min(i0 + block_q, lq)
        qb, nq = qf[:, i0:i1] * c, i1 - i0
        m = qf.new_full((bh, nq, 1), -math.inf)
        l = qf.new_zeros(bh, nq, 1)  # noqa: E741
        acc = qf.new_zeros(bh, nq, dv)
        for j0, j1 in _key_blocks(i1, lk, block_k, causal):
            tile = s_buf[: bh * nq * (j1 - j0)].view(bh, nq, j1 - j0)
            s = torch.bmm(qb, kt[:, :, j0:j1], out=tile)  # (BH, bq, bk), in log2 units
            forbidden = _tile_mask(i0, i1, j0, j1, causal, pad)
            if forbidden is not None:
                s.masked_fill_(forbidden, -math.inf)
            m_new = torch.maximum(m, s.amax(-1, keepdim=True))
            m_safe = torch.where(m_new == -math.inf, 0.0, m_new)
            alpha = torch.exp2(m - m_safe)
            p = s.sub_(m_safe).exp2_()
            l.mul_(alpha).add_(p.sum(-1, keepdim=True))
            acc.mul_(alpha).baddbmm_(p, vf[:, j0:j1])
            m = m_new
        out[:, i0:i1] = acc.div_(torch.where(l == 0, 1.0, l))
    return out


# ---------------------------------------------------------------------------------------------
# 4. KV-cache decoding
# ---------------------------------------------------------------------------------------------


def cached_self_attention(
    mha: MultiHeadAttention, x: torch.Tensor, cache: KVCacheBase, layer: int = 0
) -> torch.Tensor:
    """Causal self-attention of ``mha`` for new tokens only: ``mha(x, is_causal=True,
    cache=cache, layer=layer)[0]``.

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
    check_instances(mha=(mha, MultiHeadAttention), cache=(cache, KVCacheBase))
    return mha(x, is_causal=True, cache=cache, layer=layer)[0]


class DecoderLM(nn.Module):
    """A small conditional language model: embeddings, the course's decoder stack, a head.

    ``forward(tokens, memory)`` scores every position at once (causal), the way training and
    "recompute" decoding see it. ``generate(memory, start, steps, use_cache)`` decodes greedily
    through :func:`course_utils.decoding.greedy`: with ``use_cache=False`` its step re-runs
    ``forward`` on the whole prefix (O(T²) token-layers); with ``use_cache=True`` it feeds only
    the new tokens to :meth:`step`, which keeps the self-attention keys/values in a
    :class:`KVCache` and reads the memory's keys/values, projected once.

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
        check_sizes(vocab=vocab, d_model=d_model, max_len=max_len)
        check_optional_sizes(dim_feedforward=dim_feedforward)
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = LearnedPositionalEmbedding(max_len, d_model)
        nn.init.normal_(self.pos.weight, std=0.02)
        layer = TransformerDecoderLayer(
            d_model, nhead, dim_feedforward or 4 * d_model, dropout=0.0, norm_first=True
        )
        self.decoder = TransformerDecoder(layer, num_layers, norm=nn.LayerNorm(d_model))
        self.head = nn.Linear(d_model, vocab)
        self.vocab, self.max_len = vocab, max_len

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``tokens (B, T)``, ``memory (B, S, E)`` -> logits ``(B, T, vocab)``."""
        check_token_ids("tokens", tokens, self.vocab)
        x = self.pos(self.embed(tokens))  # (B, T, E)
        return self.head(self.decoder(x, memory, tgt_is_causal=True))

    def new_cache(self, batch: int, max_len: int, memory: torch.Tensor) -> tuple[KVCache, list]:
        """An empty self-attention cache and the memory's keys/values per layer (computed once)."""
        cache = self.decoder.new_cache(batch, max_len, dtype=memory.dtype, device=memory.device)
        return cache, self.decoder.project_memory(memory)

    def step(self, tokens: torch.Tensor, cache: KVCacheBase, cross: list) -> torch.Tensor:
        """Logits ``(B, T_new, vocab)`` for the new ``tokens (B, T_new)``, using and filling
        ``cache``; ``cross`` is the memory's keys/values from :meth:`new_cache`."""
        check_token_ids("tokens", tokens, self.vocab)
        x = self.pos(self.embed(tokens), offset=cache.length(0))  # (B, T_new, E)
        return self.head(self.decoder.step(x, cache, cross))

    @torch.no_grad()
    def generate(
        self, memory: torch.Tensor, start: torch.Tensor, steps: int, use_cache: bool = True
    ) -> torch.Tensor:
        """Greedy decoding of ``steps`` tokens after ``start (B, T0)``: ``(B, T0 + steps)``."""
        check_token_ids("start", start, self.vocab)
        check_sequences(self.head.weight, memory=(memory, self.embed.embedding_dim),
                        flags={"use_cache": use_cache})
        check_same_device(start=start, memory=memory)
        check_same_size(0, "the batch", start=start, memory=memory)
        check_non_negative_int("steps", steps)
        if start.dim() != 2 or start.size(1) + steps > self.max_len:
            raise ValueError(f"start must be (B, T0) with T0 + steps <= max_len={self.max_len}, "
                             f"got start {tuple(start.shape)} and steps={steps}")
        check_finite("memory", memory)  # NaN in memory would decode to arbitrary tokens
        if not use_cache:
            def recompute(tokens: torch.Tensor, state: None) -> tuple[torch.Tensor, None]:
                return self(tokens, memory)[:, -1], state  # (B, vocab) for the next position

            return greedy(recompute, start, None, steps).tokens

        def cached(tokens: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
            cache, cross = state
            new = tokens[:, cache.length(0):]  # the prompt at first, then one token per step
            return self.step(new, cache, cross)[:, -1], state

        state = self.new_cache(start.size(0), start.size(1) + steps, memory)
        return greedy(cached, start, state, steps).tokens
