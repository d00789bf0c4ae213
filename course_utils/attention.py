"""Attention, written out: scaled dot-product, additive (Bahdanau), multi-head and grouped-query.

Every function here is proved equal to PyTorch's own (``F.scaled_dot_product_attention``,
``nn.MultiheadAttention``) by the tests in ``tests/unit/test_attention.py`` and
``tests/properties/``. Read it top to bottom:

1. :func:`causal_mask`, :func:`masked_softmax` — who may attend to whom, and a softmax that
   never returns NaN.
2. :func:`scaled_dot_product_attention` — ``softmax(q kᵀ / √d) v``, the core of every layer below.
3. :class:`AdditiveAttention` — Bahdanau et al. (2015): score with a tiny MLP instead of a dot.
4. :func:`split_heads` / :func:`merge_heads` and :class:`MultiHeadAttention` — Vaswani et al.
   (2017): run several attentions side by side on slices of the embedding.
5. :func:`repeat_kv`, :func:`grouped_query_attention`, :class:`GroupedQueryAttention` —
   multi-query (Shazeer, 2019) and grouped-query attention (Ainslie et al., 2023): fewer
   key/value heads than query heads, a smaller KV cache.

Both attention modules take ``rope=`` (a :class:`~course_utils.positional.RotaryEmbedding`,
applied to queries and keys after the head split) and ``cache=`` / ``layer=`` (any
:class:`~course_utils.kv_cache.KVCacheBase`): with a cache, ``x`` holds only the new tokens;
their keys and values are appended and the causal mask is aligned bottom-right, so that new
query ``i`` sits at position ``length + i``. One function does that for both,
:func:`_rotate_and_cache`, and the mask comes from :func:`causal_mask` with ``offset=``.

>>> from course_utils.kv_cache import KVCache
>>> from course_utils.positional import RotaryEmbedding
>>> attn = GroupedQueryAttention(32, num_heads=4, num_kv_heads=2, head_dim=16,
...                              rope=RotaryEmbedding(16)).eval()
>>> x = torch.randn(1, 6, 32)
>>> cache = KVCache(1, batch=1, num_heads=2, head_dim=16, max_len=6)
>>> steps = [attn(x[:, :4], is_causal=True, cache=cache)]            # a prompt of 4 tokens
>>> steps += [attn(x[:, t : t + 1], is_causal=True, cache=cache) for t in (4, 5)]
>>> torch.allclose(torch.cat(steps, 1), attn(x, is_causal=True), atol=1e-5)
True

Mask conventions (the same in the whole course):

* a **boolean** ``attn_mask`` means ``True`` = *may attend* (as ``F.scaled_dot_product_attention``);
* a **float** ``attn_mask`` is *added* to the scores (``-inf`` forbids, ``0`` allows; an ALiBi
  bias from :func:`~course_utils.positional.alibi_bias` is one);
* a ``key_padding_mask`` means ``True`` = *this key is padding, ignore it*
  (as ``nn.MultiheadAttention``);
* a query row that may attend to nothing at all gives a **zero** output and **zero** weights,
  never NaN (and zero, finite gradients).

Watch out: ``nn.MultiheadAttention`` and ``nn.Transformer*`` read a *boolean* ``attn_mask`` the
other way round (``True`` = *not* allowed). Convert with ``~mask`` when you move between them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from course_utils.checks import (
    check_bool,
    check_bools,
    check_device,
    check_divisible,
    check_float_tensor,
    check_grouped_heads,
    check_instance,
    check_int,
    check_mask,
    check_module_input,
    check_one_of,
    check_optional_padding_mask,
    check_optional_sizes,
    check_padding_mask,
    check_positive_int,
    check_probability,
    check_qkv,
    check_sequences,
    check_sizes,
    check_tensor,
)

if TYPE_CHECKING:
    from course_utils.kv_cache import KVCacheBase
    from course_utils.positional import RotaryEmbedding

__all__ = [
    "AdditiveAttention",
    "GroupedQueryAttention",
    "MultiHeadAttention",
    "causal_mask",
    "grouped_query_attention",
    "masked_softmax",
    "merge_heads",
    "padding_mask_to_attn_mask",
    "repeat_kv",
    "scaled_dot_product_attention",
    "split_heads",
]

_NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------


def causal_mask(
    lq: int, lk: int | None = None, device: torch.device | str | None = None, offset: int = 0
) -> torch.Tensor:
    """Boolean causal mask ``(lq, lk)``: query ``i`` may attend to keys ``j <= i + offset``.

    ``True`` = may attend. ``offset`` is the position of the first query among the keys. With
    ``offset=0`` the mask is aligned top-left, exactly as PyTorch's ``is_causal=True``; for a
    chunk of ``lq`` new tokens after ``n`` cached ones (keys ``0..n+lq-1``) pass ``offset=n``:
    the mask is aligned bottom-right and the last query sees every key.

    >>> causal_mask(3).int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    >>> causal_mask(2, 4).int()                      # top-left, as is_causal=True
    tensor([[1, 0, 0, 0],
            [1, 1, 0, 0]], dtype=torch.int32)
    >>> causal_mask(2, 4, offset=2).int()            # 2 new tokens after 2 cached ones
    tensor([[1, 1, 1, 0],
            [1, 1, 1, 1]], dtype=torch.int32)
    """
    lk = lq if lk is None else lk
    check_sizes(0, lq=lq, lk=lk, offset=offset)
    device = None if device is None else check_device("device", device)
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(diagonal=offset)


def padding_mask_to_attn_mask(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """Turn a ``(B, Lk)`` padding mask (True = padding) into a ``(B, 1, 1, Lk)`` attention mask
    (True = may attend) that broadcasts over heads and queries.

    >>> pad = torch.tensor([[False, False, True]])        # the last key is padding
    >>> padding_mask_to_attn_mask(pad)
    tensor([[[[ True,  True, False]]]])
    """
    check_padding_mask("key_padding_mask", key_padding_mask)
    # invert (True = padding -> True = may attend), then add the head and query axes
    return (~key_padding_mask)[:, None, None, :]  # (B, 1, 1, Lk)


def masked_softmax(
    scores: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1
) -> torch.Tensor:
    """Softmax over ``dim`` that respects a mask and never returns NaN.

    ``mask`` is bool (True = keep) or float (added to the scores). A row in which every score
    is masked gets all-zero weights instead of ``0 / 0 = NaN``.

    >>> scores = torch.zeros(2, 3)
    >>> keep = torch.tensor([[True, True, False], [False, False, False]])
    >>> masked_softmax(scores, keep)
    tensor([[0.5000, 0.5000, 0.0000],
            [0.0000, 0.0000, 0.0000]])
    """
    check_float_tensor("scores", scores, min_dims=1)
    check_int("dim", dim, low=-scores.dim(), high=scores.dim() - 1)
    if mask is not None:
        check_mask("mask", mask, shape=scores.shape, device=scores.device, of="scores")
        scores = _apply_mask(scores, mask)
    if scores.size(dim) == 0:  # nothing to normalise over: no weights at all
        return torch.zeros_like(scores)
    # A row whose scores are all -inf has nothing to attend to. Give it finite scores so that
    # the softmax (and its gradient) stay finite, then zero its weights afterwards.
    dead = scores.amax(dim=dim, keepdim=True) == _NEG_INF  # (..., 1) along `dim`
    scores = scores.masked_fill(dead, 0.0)
    # exp() and the sum are much more accurate in float32 than in fp16/bf16: cast back after
    work = torch.promote_types(scores.dtype, torch.float)
    weights = torch.softmax(scores, dim=dim, dtype=work)
    return weights.to(scores.dtype).masked_fill(dead, 0.0)


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scores with a bool mask (False -> -inf) or a float mask (added) applied."""
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, _NEG_INF)
    return scores + mask.to(scores.dtype)


def _and_masks(mask: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor:
    """Combine a bool-or-float mask with a bool ``keep`` mask (True = may attend)."""
    if mask is None:
        return keep
    if mask.dtype == torch.bool:
        return mask & keep
    return mask.masked_fill(~keep, _NEG_INF)  # float mask: -inf where keep is False


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention
# ---------------------------------------------------------------------------------------------


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Attention(q, k, v) = softmax(q kᵀ · scale + mask) v, with scale = 1/√D by default.

    Shapes: ``q (..., Lq, D)``, ``k (..., Lk, D)``, ``v (..., Lk, Dv)``; the leading ``...``
    (batch, heads) broadcast. ``attn_mask`` is bool (True = may attend) or float (added to the
    scores) and broadcasts to ``(..., Lq, Lk)``. ``causal=True`` lets query ``i`` see keys
    ``j <= i`` (top-left aligned, like PyTorch's ``is_causal``); it may be combined with
    ``attn_mask`` (both must allow a key). Dropout, if ``dropout_p > 0``, is applied to the
    weights every call (like ``F.scaled_dot_product_attention``; pass ``0.0`` in eval).

    Returns ``out (..., Lq, Dv)``, or ``(out, weights)`` with ``weights (..., Lq, Lk)`` (after
    dropout) when ``return_weights=True``. A query row with no key to attend to gives a zero
    output row and zero weights, never NaN. fp16/bf16 inputs are computed in float32 and the
    result rounded once (as PyTorch's math backend does on CPU).

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 3)
    >>> out, w = scaled_dot_product_attention(q, k, v, return_weights=True)
    >>> out.shape, w.shape
    (torch.Size([2, 4, 5, 3]), torch.Size([2, 4, 5, 6]))
    >>> torch.allclose(w.sum(-1), torch.ones(2, 4, 5))    # each row is a distribution
    True
    >>> torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-6)
    True
    """
    check_qkv(q, k, v, None, True, attn_mask, scale, causal=causal, return_weights=return_weights)
    check_probability("dropout_p", dropout_p)
    dtype = q.dtype
    work = torch.promote_types(dtype, torch.float)  # fp16/bf16 are computed in float32
    q, k, v = q.to(work), k.to(work), v.to(work)
    scale = q.size(-1) ** -0.5 if scale is None else scale
    # Why scale? For random unit-variance q, k the dot product has variance D; without 1/√D
    # large D pushes the softmax into a near one-hot regime with vanishing gradients.
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., Lq, Lk)
    mask = attn_mask
    if causal:  # query i may see keys j <= i
        mask = _and_masks(mask, causal_mask(q.size(-2), k.size(-2), device=q.device))
    weights = masked_softmax(scores, mask)  # (..., Lq, Lk), zero rows where nothing allowed
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    out = weights @ v  # (..., Lq, Dv)
    out, weights = out.to(dtype), weights.to(dtype)
    return (out, weights) if return_weights else out


# ---------------------------------------------------------------------------------------------
# Additive (Bahdanau) attention
# ---------------------------------------------------------------------------------------------


class AdditiveAttention(nn.Module):
    r"""Additive attention (Bahdanau et al., 2015): score(q, k) = w_vᵀ tanh(W_q q + W_k k).

    The score is a one-hidden-layer MLP, so the query size ``query_dim`` and the key size
    ``key_dim`` may differ (e.g. a decoder state of 256 against encoder states of 512).
    Values default to the keys (the encoder states, as in the paper); ``value_dim`` (if given)
    is only checked, there is no value projection.

    ``forward(query, keys, values=None, key_padding_mask=None, projected_keys=None)``:

    * ``query`` ``(B, Dq)`` (one decoder step) or ``(B, Lq, Dq)``;
    * ``keys`` ``(B, Lk, Dk)``, ``values`` ``(B, Lk, Dv)`` (default: ``keys``);
    * ``key_padding_mask`` ``(B, Lk)``, True = padding;
    * returns ``(context, weights)``: ``(B, Dv)`` and ``(B, Lk)`` for a 2-D query,
      ``(B, Lq, Dv)`` and ``(B, Lq, Lk)`` for a 3-D one.

    **Decoding tip.** ``W_k k`` does not depend on the decoder step. A translation or captioning
    decoder should compute it once per source sequence with :meth:`project_keys` and pass it as
    ``projected_keys=`` at every step, instead of re-projecting all keys each step.

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> attn = AdditiveAttention(query_dim=6, key_dim=10, hidden_dim=16)
    >>> state, enc = torch.randn(2, 6), torch.randn(2, 7, 10)      # (B, Dq), (B, Lk, Dk)
    >>> context, w = attn(state, enc)
    >>> context.shape, w.shape
    (torch.Size([2, 10]), torch.Size([2, 7]))
    >>> pk = attn.project_keys(enc)                                   # once per sentence
    >>> torch.allclose(attn(state, enc, projected_keys=pk)[0], context)
    True
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        hidden_dim: int,
        value_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_sizes(query_dim=query_dim, key_dim=key_dim, hidden_dim=hidden_dim)
        check_optional_sizes(value_dim=value_dim)
        check_probability("dropout", dropout)
        self.query_dim, self.key_dim, self.hidden_dim = query_dim, key_dim, hidden_dim
        self.value_dim = value_dim
        self.W_q = nn.Linear(query_dim, hidden_dim, bias=False)  # query  -> hidden
        self.W_k = nn.Linear(key_dim, hidden_dim, bias=False)  # key    -> hidden
        self.w_v = nn.Linear(hidden_dim, 1, bias=False)  # hidden -> one score
        self.dropout = nn.Dropout(dropout)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """``W_k keys``: ``(B, Lk, Dk) -> (B, Lk, hidden_dim)``. Compute once per sequence."""
        check_sequences(self.W_k.weight, keys=(keys, self.key_dim))
        return self.W_k(keys)

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        projected_keys: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        values = keys if values is None else values
        pk = self.project_keys(keys) if projected_keys is None else projected_keys  # (B, Lk, H)
        self._check_inputs(query, keys, values, pk, key_padding_mask)
        one_step = query.dim() == 2
        q = query[:, None, :] if one_step else query  # (B, Lq, Dq)

        # every query against every key: broadcast (B, Lq, 1, H) + (B, 1, Lk, H)
        features = torch.tanh(self.W_q(q)[:, :, None, :] + pk[:, None, :, :])  # (B, Lq, Lk, H)
        scores = self.w_v(features).squeeze(-1)  # (B, Lq, Lk)
        mask = None
        if key_padding_mask is not None:
            mask = padding_mask_to_attn_mask(key_padding_mask)[:, 0]  # (B, 1, Lk)
        weights = self.dropout(masked_softmax(scores, mask))  # (B, Lq, Lk)
        context = weights @ values  # (B, Lq, Dv)
        if one_step:
            return context[:, 0], weights[:, 0]  # (B, Dv), (B, Lk)
        return context, weights

    def _check_inputs(self, query, keys, values, pk, key_padding_mask) -> None:
        """keys, values and projected keys ``(B, Lk, *)``, query ``(B, Dq)`` or ``(B, Lq, Dq)``."""
        w, dq = self.W_q.weight, self.query_dim
        check_sequences(w, same_length=True, keys=(keys, self.key_dim),
                        values=(values, self.value_dim), projected_keys=(pk, self.hidden_dim))
        shape = (keys.size(0), dq) if getattr(query, "ndim", 3) == 2 else (keys.size(0), None, dq)
        check_module_input("query", query, w, shape, f"(B, query_dim={dq}) or (B, Lq, query_dim)")
        check_optional_padding_mask("key_padding_mask", key_padding_mask, keys, "keys")


# ---------------------------------------------------------------------------------------------
# Multi-head attention
# ---------------------------------------------------------------------------------------------


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(..., T, E) -> (..., H, T, E/H)``: cut the embedding into ``num_heads`` slices.

    Each head sees its own contiguous ``E/H`` slice of the features; moving ``H`` before ``T``
    makes the heads a batch dimension, so one matmul runs all heads at once.

    >>> x = torch.arange(12.).reshape(1, 2, 6)          # (B=1, T=2, E=6)
    >>> split_heads(x, 3).shape                          # (B, H, T, D)
    torch.Size([1, 3, 2, 2])
    >>> split_heads(x, 3)[0, 1]                          # head 1 = features 2:4
    tensor([[2., 3.],
            [8., 9.]])
    >>> torch.equal(merge_heads(split_heads(x, 3)), x)
    True
    """
    check_float_tensor("x", x, min_dims=2)
    check_divisible("x.size(-1)", x.size(-1), "num_heads", num_heads)
    x = x.unflatten(-1, (num_heads, x.size(-1) // num_heads))  # (..., T, H, D)
    return x.transpose(-3, -2)  # (..., H, T, D)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(..., H, T, D) -> (..., T, H*D)``: the inverse of :func:`split_heads`.

    >>> merge_heads(torch.zeros(2, 4, 5, 8)).shape
    torch.Size([2, 5, 32])
    """
    check_float_tensor("x", x, min_dims=3)
    return x.transpose(-3, -2).flatten(-2)  # (..., T, H, D) -> (..., T, H*D)


def _rotate_and_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rope: RotaryEmbedding | None,
    positions: torch.Tensor | None,
    cache: KVCacheBase | None,
    layer: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The one cached path of both attention modules, on heads ``(B, H, T, D)``.

    RoPE rotates the new queries and keys at their positions (``cache.length(layer) + 0..T-1``
    unless ``positions`` says otherwise, e.g. for a left-padded batch); then the new keys and
    values go into the cache, which returns every key to attend to. Returns ``q, k, v`` and
    the causal ``offset`` of the first new query among the keys returned.
    """
    start = 0 if cache is None else cache.length(layer)
    if rope is not None:
        if positions is None:
            positions = torch.arange(start, start + q.size(-2), device=q.device)
        same = k.size(-2) == q.size(-2)  # self-attention; cross-attention keys sit at 0..Lk-1
        q, k = rope(q, positions), rope(k, positions if same else None)
    else:  # positions without rope would be silently ignored
        check_one_of("positions (they need rope=)", positions, (None,))
    if cache is None:
        return q, k, v, 0
    k, v = cache.update(layer, k, v)  # (B, Hkv, L, D): every key so far
    return q, k, v, k.size(-2) - q.size(-2)


class MultiHeadAttention(nn.Module):
    r"""Multi-head attention (Vaswani et al., 2017), a readable ``nn.MultiheadAttention``.

    head_i = Attention(x W_q^i, y W_k^i, y W_v^i);  out = concat(head_1..head_H) W_o.

    Submodules ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` are plain ``nn.Linear``
    layers (``kdim``/``vdim`` are the input sizes of keys and values; default ``embed_dim``).

    ``forward(query, key=None, value=None, key_padding_mask=None, attn_mask=None,
    is_causal=False, need_weights=False, average_attn_weights=True, *, cache=None, layer=0,
    positions=None, projected_kv=None)`` returns ``(out, weights)``:

    * ``query (B, Lq, E)``, ``key (B, Lk, kdim)``, ``value (B, Lk, vdim)`` (``(T, B, E)`` when
      ``batch_first=False``). ``key`` defaults to ``query`` (self-attention), ``value`` to
      ``key``.
    * ``attn_mask``: bool (**True = may attend**) or float (added), of shape ``(Lq, Lk)``,
      ``(B, Lq, Lk)`` or ``(B, H, Lq, Lk)`` (size-1 dims broadcast).
      Note: torch's 3-D ``(B*H, Lq, Lk)`` layout is *not* accepted; reshape it to 4-D.
    * ``key_padding_mask``: bool ``(B, Lk)``, **True = padding**.
    * ``is_causal=True`` *builds* the causal mask (and ANDs it with any ``attn_mask``). In
      ``nn.MultiheadAttention`` it is only a hint that ``attn_mask`` already is causal.
    * ``weights`` is ``None`` unless ``need_weights``: then ``(B, Lq, Lk)`` averaged over
      heads, or ``(B, H, Lq, Lk)`` with ``average_attn_weights=False``.
    * A query that may attend to no key gets a zero attention output, so its ``out`` row is
      just ``out_proj.bias``; its weights are zero; never NaN.
    * ``cache`` (self-attention only): ``query`` holds the new tokens; their keys and values are
      appended to ``cache`` at ``layer``; attention is then causal (with or without
      ``is_causal``), the mask aligned bottom-right. Masks cover every key so far
      (``Lk = cache.length(layer)`` after the update).
    * ``rope`` (constructor): a :class:`~course_utils.positional.RotaryEmbedding` applied to
      queries and keys after the head split, at ``positions`` (default: ``0..T-1`` after the
      tokens in the cache).
    * ``projected_kv=(k, v)``: keys and values already projected, ``(B, H, Lk, D)``, from
      :meth:`project_kv` (cross-attention while decoding: project the memory once).

    ``use_sdpa=True`` computes the attention with ``F.scaled_dot_product_attention`` (fused
    kernels on GPU); the result is the same. Set ``store_weights = True`` to keep the detached
    per-head weights ``(B, H, Lq, Lk)`` of the last call in ``last_attn_weights`` (for
    attention maps, rollout, ...).

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> mha = MultiHeadAttention(embed_dim=16, num_heads=4)
    >>> x = torch.randn(2, 5, 16)                              # (B, T, E)
    >>> out, w = mha(x, need_weights=True, average_attn_weights=False)
    >>> out.shape, w.shape                                     # w: (B, H, Lq, Lk)
    (torch.Size([2, 5, 16]), torch.Size([2, 4, 5, 5]))
    >>> ref = nn.MultiheadAttention(16, 4, batch_first=True)
    >>> ours = MultiHeadAttention.from_torch(ref)
    >>> torch.allclose(ours(x)[0], ref(x, x, x)[0], atol=1e-6)
    True
    """

    store_weights: bool = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = True,
        use_sdpa: bool = False,
        rope: RotaryEmbedding | None = None,
    ) -> None:
        super().__init__()
        check_divisible("embed_dim", embed_dim, "num_heads", num_heads)
        check_optional_sizes(kdim=kdim, vdim=vdim)
        check_probability("dropout", dropout)
        check_bools(bias=bias, batch_first=batch_first, use_sdpa=use_sdpa)
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.dropout = dropout  # a probability (as in nn.MultiheadAttention), used when training
        self.batch_first = batch_first
        self.use_sdpa = use_sdpa
        self.rope = rope
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.last_attn_weights: torch.Tensor | None = None
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # The same initialisation as nn.MultiheadAttention: Xavier for the input projections,
        # zero biases; out_proj keeps nn.Linear's default weight.
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(lin.weight)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
            f"batch_first={self.batch_first}, use_sdpa={self.use_sdpa}"
        )

    def project_kv(
        self, key: torch.Tensor, value: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values projected and split into heads, ``(B, H, Lk, D)`` each: compute
        them once for a memory that every decoding step attends to, pass ``projected_kv=``."""
        value = key if value is None else value
        check_sequences(self.q_proj.weight, self.batch_first, same_length=True,
                        key=(key, self.kdim), value=(value, self.vdim))
        if not self.batch_first:
            key, value = key.transpose(0, 1), value.transpose(0, 1)
        return split_heads(self.k_proj(key), self.num_heads), split_heads(
            self.v_proj(value), self.num_heads)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        average_attn_weights: bool = True,
        *,
        cache: KVCacheBase | None = None,
        layer: int = 0,
        positions: torch.Tensor | None = None,
        projected_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_bools(is_causal=is_causal, need_weights=need_weights,
                    average_attn_weights=average_attn_weights)
        check_one_of("key (a KV cache is for self-attention)", key if cache is not None else None,
                     (None,))
        key = query if key is None and projected_kv is None else key
        value = key if value is None else value
        self._check_inputs(query, key, value, projected_kv)
        if not self.batch_first:  # (T, B, E) -> (B, T, E): inside, we always work batch-first
            query, key, value = (t if t is None else t.transpose(0, 1) for t in (query, key, value))

        q = split_heads(self.q_proj(query), self.num_heads)  # (B, H, Lq, D)
        if projected_kv is None:
            k = split_heads(self.k_proj(key), self.num_heads)  # (B, H, Lk, D)
            v = split_heads(self.v_proj(value), self.num_heads)  # (B, H, Lk, D)
        else:
            k, v = projected_kv
        q, k, v, offset = _rotate_and_cache(q, k, v, self.rope, positions, cache, layer)

        p = self.dropout if self.training else 0.0
        want_weights = need_weights or self.store_weights
        is_causal = is_causal or cache is not None  # a cache decodes causally
        # only a causal mask: let PyTorch pick a kernel that never builds it
        fused_causal = (self.use_sdpa and is_causal and offset == 0 and attn_mask is None
                        and key_padding_mask is None)
        mask = None if fused_causal else self._build_mask(
            attn_mask, key_padding_mask, is_causal, offset, q, k)  # (B|1, H|1, Lq|1, Lk)
        weights = None
        if fused_causal:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        elif self.use_sdpa:
            out = _sdpa_no_nan(q, k, v, mask, dropout_p=p)  # (B, H, Lq, D)
        else:
            out, weights = scaled_dot_product_attention(
                q, k, v, mask, dropout_p=p, return_weights=True
            )  # (B, H, Lq, D), (B, H, Lq, Lk)
        if self.use_sdpa and want_weights:  # the fused kernel never materialises the weights
            _, weights = scaled_dot_product_attention(q, k, v, mask, causal=fused_causal,
                                                      return_weights=True)

        out = self.out_proj(merge_heads(out))  # (B, Lq, E)
        if not self.batch_first:
            out = out.transpose(0, 1)  # (Lq, B, E)
        if self.store_weights and weights is not None:
            self.last_attn_weights = weights.detach()
        if not need_weights or weights is None:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights

    def _check_inputs(self, query, key, value, projected_kv) -> None:
        """query, key, value ``(B, T, E)`` (or ``(T, B, E)``) of one batch; or ``projected_kv``,
        ``(B, H, Lk, D)`` each, of the batch of query."""
        kv = {"key": (key, self.kdim), "value": (value, self.vdim)} if projected_kv is None else {}
        check_sequences(self.q_proj.weight, self.batch_first, query=(query, self.embed_dim), **kv)
        b = query.size(1 - self.batch_first)
        for i, t in enumerate(projected_kv or ()):
            check_module_input(f"projected_kv[{i}]", t, self.q_proj.weight,
                               (b, self.num_heads, None, self.head_dim), "(B, H, Lk, D)")

    def _build_mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        is_causal: bool,
        offset: int,
        q: torch.Tensor,
        k: torch.Tensor,
    ) -> torch.Tensor | None:
        """``attn_mask``, ``key_padding_mask`` and the causal mask folded into one mask that
        broadcasts to ``(B, H, Lq, Lk)``."""
        (b, _, lq, _), lk = q.shape, k.size(-2)
        mask = None
        if attn_mask is not None:
            ndim = getattr(attn_mask, "ndim", 4)
            scores = {2: (lq, lk), 3: (b, lq, lk)}.get(ndim, (b, self.num_heads, lq, lk))
            check_mask("attn_mask", attn_mask, shape=scores, device=q.device)
            mask = _as_4d(attn_mask)  # (B|1, H|1, Lq|1, Lk|1)
        if key_padding_mask is not None:
            check_padding_mask("key_padding_mask", key_padding_mask, b, lk, device=q.device)
            mask = _and_masks(mask, padding_mask_to_attn_mask(key_padding_mask))  # (B, 1, 1, Lk)
        if is_causal:
            mask = _and_masks(mask, causal_mask(lq, lk, device=q.device, offset=offset))
        return mask

    # -- interop with PyTorch --

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> MultiHeadAttention:
        """Build a :class:`MultiHeadAttention` holding a copy of ``module``'s weights.

        Both layouts of ``nn.MultiheadAttention`` are handled: the packed ``in_proj_weight``
        (``kdim == vdim == embed_dim``) and the separate ``q/k/v_proj_weight``. ``batch_first``,
        ``dropout`` and ``bias`` are copied too; ``add_bias_kv``/``add_zero_attn`` are not
        supported.

        **Masks differ.** In ``nn.MultiheadAttention`` a *boolean* ``attn_mask`` means
        ``True`` = *not allowed*, the opposite of ours: pass ``~mask``. Float masks and
        ``key_padding_mask`` (True = padding) mean the same in both. A torch 3-D mask
        ``(B*H, Lq, Lk)`` becomes ours with ``mask.view(B, H, Lq, Lk)``.

        >>> ref = nn.MultiheadAttention(8, 2, kdim=3, vdim=5, batch_first=False)
        >>> ours = MultiHeadAttention.from_torch(ref)
        >>> q, k, v = torch.randn(4, 2, 8), torch.randn(6, 2, 3), torch.randn(6, 2, 5)
        >>> torch.allclose(ours(q, k, v)[0], ref(q, k, v)[0], atol=1e-6)
        True
        """
        check_instance("module", module, nn.MultiheadAttention)
        check_one_of("add_bias_kv and add_zero_attn (not supported)",
                     (module.bias_k is not None, module.add_zero_attn), [(False, False)])
        ref = module.out_proj.weight
        new = cls(
            module.embed_dim,
            module.num_heads,
            dropout=module.dropout,
            bias=module.in_proj_bias is not None,
            kdim=module.kdim,
            vdim=module.vdim,
            batch_first=module.batch_first,
        ).to(device=ref.device, dtype=ref.dtype)
        e = module.embed_dim
        with torch.no_grad():
            if module._qkv_same_embed_dim:  # one packed (3E, E) matrix: rows [q; k; v]
                w_q, w_k, w_v = module.in_proj_weight.split(e, dim=0)
            else:
                w_q, w_k, w_v = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
            new.q_proj.weight.copy_(w_q)
            new.k_proj.weight.copy_(w_k)
            new.v_proj.weight.copy_(w_v)
            new.out_proj.weight.copy_(module.out_proj.weight)
            if module.in_proj_bias is not None:
                b_q, b_k, b_v = module.in_proj_bias.split(e, dim=0)
                new.q_proj.bias.copy_(b_q)
                new.k_proj.bias.copy_(b_k)
                new.v_proj.bias.copy_(b_v)
            if module.out_proj.bias is not None and new.out_proj.bias is not None:
                new.out_proj.bias.copy_(module.out_proj.bias)
        return new


def _sdpa_no_nan(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with the course's rule for fully masked rows.

    PyTorch's kernels may return NaN (or anything) for a query that can attend to nothing.
    We let such rows attend everywhere (so every kernel computes finite numbers and gradients)
    and zero them afterwards.
    """
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    if mask.dtype == torch.bool:
        dead = ~mask.any(dim=-1, keepdim=True)  # (..., Lq, 1)
        mask = mask | dead
    else:
        dead = mask.amax(dim=-1, keepdim=True) == _NEG_INF
        mask = mask.masked_fill(dead, 0.0).to(q.dtype)  # PyTorch wants the dtype of q
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return out.masked_fill(dead, 0.0)


def _as_4d(mask: torch.Tensor) -> torch.Tensor:
    """An MHA mask ``(Lq, Lk)``, ``(B, Lq, Lk)`` or ``(B, H, Lq, Lk)`` as 4-D (B, H, Lq, Lk)."""
    if mask.dim() == 2:
        return mask[None, None]  # (1, 1, Lq, Lk)
    return mask[:, None] if mask.dim() == 3 else mask  # (B, 1, Lq, Lk) or (B, H, Lq, Lk)


# ---------------------------------------------------------------------------------------------
# Multi-query and grouped-query attention
# ---------------------------------------------------------------------------------------------


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, Hkv, L, D) -> (B, Hkv·n_rep, L, D)``: each key/value head serves ``n_rep`` query heads.

    Head ``h`` of the result is head ``h // n_rep`` of ``x`` (the layout of LLaMA's ``repeat_kv``).

    >>> repeat_kv(torch.arange(2.0).view(1, 2, 1, 1), 3).flatten().tolist()
    [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    """
    check_tensor("x", x, dims=4)
    check_positive_int("n_rep", n_rep)
    b, h, length, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, length, d).reshape(b, h * n_rep, length, d)


def grouped_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention with fewer key/value heads than query heads, without copying K and V.

    ``q (B, H, Lq, D)``, ``k (B, Hkv, Lk, D)``, ``v (B, Hkv, Lk, Dv)`` with ``H % Hkv == 0``;
    ``Hkv = 1`` is multi-query attention, ``Hkv = H`` is ordinary multi-head attention. The
    queries of the ``G = H/Hkv`` heads that share a key/value head are stacked along the
    sequence axis, ``(B, Hkv, G·Lq, D)``, and attend to ``(B, Hkv, Lk, D)`` in one call: each
    key/value head is read once for its whole group. Equal to attention with :func:`repeat_kv`
    applied to ``k`` and ``v``. ``attn_mask`` (bool or float, e.g. an ALiBi bias) broadcasts
    to ``(B, H, Lq, Lk)``; ``causal`` is top-left aligned (:func:`causal_mask`);
    ``key_padding_mask`` is ``(B, Lk)``, True = padding. ``return_weights=True`` also returns
    the weights ``(B, H, Lq, Lk)``.

    >>> q, k, v = torch.randn(2, 8, 5, 4), torch.randn(2, 2, 6, 4), torch.randn(2, 2, 6, 4)
    >>> ref = F.scaled_dot_product_attention(q, repeat_kv(k, 4), repeat_kv(v, 4))
    >>> torch.allclose(grouped_query_attention(q, k, v), ref, atol=1e-6)
    True
    """
    check_qkv(q, k, v, 4, False, attn_mask, scale, causal=causal, return_weights=return_weights)
    b, h, lq, d = q.shape  # (B, H, Lq, D)
    hkv, lk = k.size(1), k.size(2)  # k: (B, Hkv, Lk, D)
    check_grouped_heads(q, k, v)
    g = h // hkv
    # Stack the G query heads of a group along the sequence axis: (B, Hkv, G·Lq, D) against
    # (B, Hkv, Lk, D) is one ordinary attention call in which each K/V head is read once for its
    # whole group — no copy of K and V, and no 5-D broadcast (which the matmul would
    # materialise group by group). Row r of a group is query r % Lq of head r // Lq.
    qg = q.reshape(b, hkv, g * lq, d)  # (B, Hkv, G·Lq, D)
    mask = None
    if attn_mask is not None:
        mask = _group_mask(attn_mask, hkv, g, lq, lk)  # (B|1, Hkv|1, G·Lq, Lk)
    if causal:  # query i may attend keys j <= i, whichever head of the group it belongs to
        mask = _and_masks(mask, causal_mask(lq, lk, device=q.device).repeat(g, 1))  # (G·Lq, Lk)
    if key_padding_mask is not None:
        check_padding_mask("key_padding_mask", key_padding_mask, b, lk, device=q.device)
        mask = _and_masks(mask, padding_mask_to_attn_mask(key_padding_mask))  # (B, 1, 1, Lk)
    out, weights = scaled_dot_product_attention(
        qg, k, v, mask, dropout_p=dropout_p, scale=scale, return_weights=True
    )  # (B, Hkv, G·Lq, Dv), (B, Hkv, G·Lq, Lk)
    out = out.reshape(b, h, lq, v.size(-1))
    return (out, weights.reshape(b, h, lq, lk)) if return_weights else out


def _group_mask(mask: torch.Tensor, hkv: int, g: int, lq: int, lk: int) -> torch.Tensor:
    """A mask that broadcasts to ``(B, H, Lq, Lk)`` in the stacked layout ``(B, Hkv, G·Lq, Lk)``."""
    m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # (B|1, H|1, Lq|1, Lk|1)
    if m.size(1) == 1:  # the same for every head: repeat it once per head of a group
        return m.expand(-1, 1, lq, lk).repeat(1, 1, g, 1)  # (B|1, 1, G·Lq, Lk)
    return m.expand(-1, hkv * g, lq, lk).reshape(m.size(0), hkv, g * lq, lk)


class GroupedQueryAttention(nn.Module):
    """Self-attention with ``num_kv_heads`` key/value heads shared by ``num_heads`` query heads.

    ``q_proj`` maps ``embed_dim`` to ``num_heads · head_dim``, ``k_proj`` and ``v_proj`` to
    ``num_kv_heads · head_dim`` only, so the parameters and the KV cache of those projections
    shrink by ``num_heads / num_kv_heads``; ``out_proj`` maps ``num_heads · head_dim`` back to
    ``embed_dim``. ``head_dim`` defaults to ``embed_dim // num_heads`` and may be anything
    (Llama-style models often use 128 whatever the width). ``rope`` is applied to queries and
    keys after the head split.

    ``forward(x, is_causal=False, key_padding_mask=None, cache=None, layer=0, attn_mask=None,
    positions=None)`` returns ``(B, T, E)``. With a cache (any
    :class:`~course_utils.kv_cache.KVCacheBase`) ``x`` holds the new tokens only: their keys
    and values are appended, and the causal mask is aligned bottom-right; masks then cover
    every key so far (a cache always decodes causally).

    >>> gqa = GroupedQueryAttention(embed_dim=32, num_heads=8, num_kv_heads=2)
    >>> gqa(torch.randn(2, 5, 32), is_causal=True).shape
    torch.Size([2, 5, 32])
    >>> gqa.k_proj.weight.shape                                   # 2 heads × 4 dims
    torch.Size([8, 32])
    >>> GroupedQueryAttention(32, 4, 2, head_dim=16).q_proj.weight.shape      # 4 heads × 16
    torch.Size([64, 32])
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool = True,
        head_dim: int | None = None,
        rope: RotaryEmbedding | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_divisible("num_heads", num_heads, "num_kv_heads", num_kv_heads)
        check_divisible("embed_dim", embed_dim, "num_heads", num_heads if head_dim is None else 1)
        check_positive_int("head_dim", embed_dim // num_heads if head_dim is None else head_dim)
        check_probability("dropout", dropout)
        check_bool("bias", bias)
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads if head_dim is None else head_dim
        self.dropout, self.rope = dropout, rope
        self.q_proj = nn.Linear(embed_dim, num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(num_heads * self.head_dim, embed_dim, bias=bias)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}")

    def forward(
        self,
        x: torch.Tensor,
        is_causal: bool = False,
        key_padding_mask: torch.Tensor | None = None,
        cache: KVCacheBase | None = None,
        layer: int = 0,
        attn_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_sequences(self.q_proj.weight, x=(x, self.embed_dim), flags={"is_causal": is_causal})
        if key_padding_mask is not None:  # (B, cached + T): every key, once the cache holds x
            lk = x.size(1) + (0 if cache is None else cache.length(layer))
            check_padding_mask("key_padding_mask", key_padding_mask, x.size(0), lk, source="x")
        q = split_heads(self.q_proj(x), self.num_heads)  # (B, H, T, D)
        k = split_heads(self.k_proj(x), self.num_kv_heads)  # (B, Hkv, T, D)
        v = split_heads(self.v_proj(x), self.num_kv_heads)  # (B, Hkv, T, D)
        q, k, v, offset = _rotate_and_cache(q, k, v, self.rope, positions, cache, layer)
        if attn_mask is not None:
            check_mask("attn_mask", attn_mask)
        if is_causal or cache is not None:  # bottom-right after a cache: query i at offset + i
            attn_mask = _and_masks(attn_mask, causal_mask(q.size(2), k.size(2), q.device, offset))
        p = self.dropout if self.training else 0.0
        out = grouped_query_attention(q, k, v, key_padding_mask=key_padding_mask,
                                      attn_mask=attn_mask, dropout_p=p)  # (B, H, T, D)
        return self.out_proj(merge_heads(out))  # (B, T, E)
