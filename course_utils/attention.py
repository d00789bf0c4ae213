"""Attention, written out: scaled dot-product, additive (Bahdanau) and multi-head.

Every function here is proved equal to PyTorch's own (``F.scaled_dot_product_attention``,
``nn.MultiheadAttention``) by the tests in ``tests/test_attention*.py``. Read it top to bottom:

1. :func:`scaled_dot_product_attention` — ``softmax(q kᵀ / √d) v``, the core of every layer below.
2. :class:`AdditiveAttention` — Bahdanau et al. (2015): score with a tiny MLP instead of a dot.
3. :func:`split_heads` / :func:`merge_heads` and :class:`MultiHeadAttention` — Vaswani et al.
   (2017): run several attentions side by side on slices of the embedding.

Mask conventions (the same in the whole course):

* a **boolean** ``attn_mask`` means ``True`` = *may attend* (as ``F.scaled_dot_product_attention``);
* a **float** ``attn_mask`` is *added* to the scores (``-inf`` forbids, ``0`` allows);
* a ``key_padding_mask`` means ``True`` = *this key is padding, ignore it*
  (as ``nn.MultiheadAttention``);
* a query row that may attend to nothing at all gives a **zero** output and **zero** weights,
  never NaN (and zero, finite gradients).

Watch out: ``nn.MultiheadAttention`` and ``nn.Transformer*`` read a *boolean* ``attn_mask`` the
other way round (``True`` = *not* allowed). Convert with ``~mask`` when you move between them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AdditiveAttention",
    "MultiHeadAttention",
    "causal_mask",
    "masked_softmax",
    "merge_heads",
    "padding_mask_to_attn_mask",
    "scaled_dot_product_attention",
    "split_heads",
]

_NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------
# Small checks shared by everything below. They turn a cryptic "size mismatch" deep inside a
# matmul into a message that says what was expected and what was received.
# ---------------------------------------------------------------------------------------------


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_tensor(name: str, t: object, min_dim: int = 0) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dims, got shape {_shape(t)} ({t.dim()} dims)"
        )


def _check_mask_dtype(name: str, mask: object) -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"{name} must be a bool tensor (True = may attend) or a float tensor (added to "
            f"the scores), got dtype {mask.dtype}"
        )


def _check_same_device(**tensors: torch.Tensor | None) -> None:
    """All given tensors on one device, else a ValueError that lists each tensor's device."""
    present = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(present.values())) > 1:
        got = ", ".join(f"{name} on {dev}" for name, dev in present.items())
        raise ValueError(f"all inputs must be on the same device, got {got}")


def _check_like_module(name: str, t: torch.Tensor, weight: torch.Tensor) -> None:
    """``t`` must have the dtype and device of the module's weights (else F.linear fails cryptically)."""
    if t.device != weight.device:
        raise ValueError(
            f"{name} must be on the module's device {weight.device}, got {name} on {t.device} "
            f"(move one of them with .to(device))"
        )
    if t.dtype != weight.dtype and not _autocast_on(t.device.type):  # autocast mixes dtypes on purpose
        raise TypeError(
            f"{name} must have the module's dtype {weight.dtype}, got {t.dtype} "
            f"(convert with .to({weight.dtype}) or the module with .to(dtype))"
        )


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # an unusual device type: no autocast there
        return False


def _check_probability(name: str, p: object) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        what = "a float in" if name == "dropout_p" else "in"  # the messages the tests know
        raise ValueError(f"{name} must be {what} [0, 1), got {p!r}")


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """True if a tensor of ``shape`` broadcasts to ``target`` without growing it."""
    try:
        return tuple(torch.broadcast_shapes(shape, target)) == tuple(target)
    except RuntimeError:
        return False


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------


def causal_mask(
    lq: int, lk: int | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean causal mask of shape ``(lq, lk)``: query ``i`` may attend to keys ``j <= i``.

    ``True`` = may attend. The mask is aligned top-left, exactly as PyTorch's ``is_causal=True``
    (when ``lq != lk`` it is *not* shifted to the bottom-right as in a KV-cache decoder).

    >>> causal_mask(3).int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    >>> causal_mask(2, 4).int()
    tensor([[1, 0, 0, 0],
            [1, 1, 0, 0]], dtype=torch.int32)
    """
    lk = lq if lk is None else lk
    for name, n in (("lq", lq), ("lk", lk)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril()


def padding_mask_to_attn_mask(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """Turn a ``(B, Lk)`` padding mask (True = padding) into a ``(B, 1, 1, Lk)`` attention mask
    (True = may attend) that broadcasts over heads and queries.

    >>> pad = torch.tensor([[False, False, True]])        # the last key is padding
    >>> padding_mask_to_attn_mask(pad)
    tensor([[[[ True,  True, False]]]])
    """
    if not isinstance(key_padding_mask, torch.Tensor):
        raise TypeError(
            f"key_padding_mask must be a torch.Tensor, got {type(key_padding_mask).__name__}"
        )
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(
            f"key_padding_mask must be a bool tensor (True = padding), got dtype "
            f"{key_padding_mask.dtype}"
        )
    if key_padding_mask.dim() != 2:
        raise ValueError(
            f"key_padding_mask must have shape (B, Lk), got shape {_shape(key_padding_mask)}"
        )
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
    _check_tensor("scores", scores, min_dim=1)
    if isinstance(dim, bool) or not isinstance(dim, int) or not -scores.dim() <= dim < scores.dim():
        raise ValueError(
            f"dim must be an int in [{-scores.dim()}, {scores.dim() - 1}] for scores of shape "
            f"{_shape(scores)}, got {dim!r}"
        )
    if mask is not None:
        _check_mask_dtype("mask", mask)
        _check_same_device(scores=scores, mask=mask)
        if not _broadcasts_to(_shape(mask), _shape(scores)):
            raise ValueError(
                f"mask must broadcast to the scores shape {_shape(scores)}, got {_shape(mask)}"
            )
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, _NEG_INF)
        else:
            scores = scores + mask.to(scores.dtype)
    if scores.size(dim) == 0:  # nothing to normalise over: no weights at all
        return torch.zeros_like(scores)
    # A row whose scores are all -inf has nothing to attend to. Give it finite scores so that
    # the softmax (and its gradient) stay finite, then zero its weights afterwards.
    dead = scores.amax(dim=dim, keepdim=True) == _NEG_INF  # (..., 1) along `dim`
    scores = scores.masked_fill(dead, 0.0)
    if scores.dtype in (torch.float16, torch.bfloat16):
        # exp() and the sum are much more accurate in float32; cast back afterwards
        weights = torch.softmax(scores.float(), dim=dim).to(scores.dtype)
    else:
        weights = torch.softmax(scores, dim=dim)
    return weights.masked_fill(dead, 0.0)


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
    output row and zero weights, never NaN.

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
    # ---- check the inputs, so that a wrong shape fails here and not inside a matmul ----
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t, min_dim=2)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"q, k and v must have the same dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}"
        )
    _check_same_device(q=q, k=k, v=v, attn_mask=attn_mask)
    if q.size(-1) != k.size(-1):
        raise ValueError(
            f"q and k must have the same last dim (head dim), got q {_shape(q)} and k {_shape(k)}"
        )
    if q.size(-1) == 0:
        raise ValueError(f"q and k must have a head dim D >= 1, got q {_shape(q)} and k {_shape(k)}")
    if k.size(-2) != v.size(-2):
        raise ValueError(
            f"k and v must have the same number of keys Lk (dim -2), got k {_shape(k)} and "
            f"v {_shape(v)}"
        )
    if k.size(-2) == 0:
        raise ValueError(f"k must have at least one key (Lk >= 1), got k {_shape(k)}")
    try:
        batch = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    except RuntimeError:
        raise ValueError(
            f"the leading (batch, head) dims of q, k and v must broadcast, got q {_shape(q)}, "
            f"k {_shape(k)}, v {_shape(v)}"
        ) from None
    lq, lk = q.size(-2), k.size(-2)
    scores_shape = (*batch, lq, lk)
    if attn_mask is not None:
        _check_mask_dtype("attn_mask", attn_mask)
        if not _broadcasts_to(_shape(attn_mask), scores_shape):
            raise ValueError(
                f"attn_mask must broadcast to the scores shape (..., Lq, Lk) = {scores_shape}, "
                f"got attn_mask {_shape(attn_mask)}"
            )
    _check_probability("dropout_p", dropout_p)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__} {scale!r}")

    if q.dtype in (torch.float16, torch.bfloat16):
        # Low precision: bf16 keeps 8 bits of mantissa, so a score of 20 is only known to
        # about ±0.06, enough to move the softmax visibly. Compute in float32 and round once
        # at the end (as PyTorch's math backend does on CPU).
        mask32 = (
            attn_mask.float()
            if attn_mask is not None and attn_mask.is_floating_point()
            else attn_mask
        )
        out, weights = scaled_dot_product_attention(
            q.float(), k.float(), v.float(), mask32, causal, dropout_p, scale, True
        )
        out, weights = out.to(q.dtype), weights.to(q.dtype)
        return (out, weights) if return_weights else out

    # ---- the maths ----
    scale = q.size(-1) ** -0.5 if scale is None else scale
    # Why scale? For random unit-variance q, k the dot product has variance D; without 1/√D
    # large D pushes the softmax into a near one-hot regime with vanishing gradients.
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., Lq, Lk)

    mask = attn_mask
    if causal:
        allowed = causal_mask(lq, lk, device=q.device)  # (Lq, Lk)
        if mask is None:
            mask = allowed
        elif mask.dtype == torch.bool:
            mask = mask & allowed
        else:  # float mask: forbid the future by adding -inf there
            mask = mask.to(scores.dtype).masked_fill(~allowed, _NEG_INF)

    weights = masked_softmax(scores, mask)  # (..., Lq, Lk), zero rows where nothing allowed
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    out = weights @ v  # (..., Lq, Dv)
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
        for name, n in (("query_dim", query_dim), ("key_dim", key_dim), ("hidden_dim", hidden_dim)):
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                raise ValueError(f"{name} must be a positive int, got {n!r}")
        _check_probability("dropout", dropout)
        self.query_dim, self.key_dim, self.hidden_dim = query_dim, key_dim, hidden_dim
        self.value_dim = value_dim
        self.W_q = nn.Linear(query_dim, hidden_dim, bias=False)  # query  -> hidden
        self.W_k = nn.Linear(key_dim, hidden_dim, bias=False)  # key    -> hidden
        self.w_v = nn.Linear(hidden_dim, 1, bias=False)  # hidden -> one score
        self.dropout = nn.Dropout(dropout)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """``W_k keys``: ``(B, Lk, Dk) -> (B, Lk, hidden_dim)``. Compute once per sequence."""
        _check_tensor("keys", keys)
        _check_like_module("keys", keys, self.W_k.weight)
        if keys.dim() != 3 or keys.size(-1) != self.key_dim:
            raise ValueError(
                f"keys must have shape (B, Lk, key_dim={self.key_dim}), got {_shape(keys)}"
            )
        return self.W_k(keys)

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        projected_keys: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_tensor("query", query)
        _check_like_module("query", query, self.W_q.weight)
        if query.dim() not in (2, 3) or query.size(-1) != self.query_dim:
            raise ValueError(
                f"query must have shape (B, query_dim={self.query_dim}) or "
                f"(B, Lq, query_dim={self.query_dim}), got {_shape(query)}"
            )
        one_step = query.dim() == 2
        q = query[:, None, :] if one_step else query  # (B, Lq, Dq)
        pk = self.project_keys(keys) if projected_keys is None else projected_keys  # (B, Lk, H)
        values = keys if values is None else values
        _check_tensor("values", values)
        _check_like_module("values", values, self.W_q.weight)
        _check_same_device(query=query, values=values, projected_keys=pk,
                           key_padding_mask=key_padding_mask)
        b, lk = keys.size(0), keys.size(1)
        if pk.dim() != 3 or _shape(pk) != (b, lk, self.hidden_dim):
            raise ValueError(
                f"projected_keys must have shape (B, Lk, hidden_dim) = {(b, lk, self.hidden_dim)}"
                f", got {_shape(pk)}"
            )
        if values.dim() != 3 or values.shape[:2] != keys.shape[:2]:
            raise ValueError(
                f"values must have shape (B, Lk, Dv) with (B, Lk) = {(b, lk)} from keys, "
                f"got values {_shape(values)}"
            )
        if self.value_dim is not None and values.size(-1) != self.value_dim:
            raise ValueError(
                f"values must have last dim value_dim={self.value_dim}, got {_shape(values)}"
            )
        if q.size(0) != b:
            raise ValueError(
                f"query and keys must have the same batch size, got query {_shape(query)} "
                f"and keys {_shape(keys)}"
            )

        # every query against every key: broadcast (B, Lq, 1, H) + (B, 1, Lk, H)
        features = torch.tanh(self.W_q(q)[:, :, None, :] + pk[:, None, :, :])  # (B, Lq, Lk, H)
        scores = self.w_v(features).squeeze(-1)  # (B, Lq, Lk)

        mask = None
        if key_padding_mask is not None:
            if not isinstance(key_padding_mask, torch.Tensor) or _shape(key_padding_mask) != (
                b,
                lk,
            ):
                got = (
                    _shape(key_padding_mask)
                    if isinstance(key_padding_mask, torch.Tensor)
                    else type(key_padding_mask).__name__
                )
                raise ValueError(f"key_padding_mask must have shape (B, Lk) = {(b, lk)}, got {got}")
            mask = padding_mask_to_attn_mask(key_padding_mask)[:, 0]  # (B, 1, Lk)

        weights = self.dropout(masked_softmax(scores, mask))  # (B, Lq, Lk)
        context = weights @ values  # (B, Lq, Dv)
        if one_step:
            return context[:, 0], weights[:, 0]  # (B, Dv), (B, Lk)
        return context, weights


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
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        got = _shape(x) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (..., T, E), got {got}")
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if x.size(-1) % num_heads != 0:
        raise ValueError(
            f"the last dim of x ({x.size(-1)}) must be divisible by num_heads ({num_heads}), "
            f"got x {_shape(x)}"
        )
    x = x.unflatten(-1, (num_heads, x.size(-1) // num_heads))  # (..., T, H, D)
    return x.transpose(-3, -2)  # (..., H, T, D)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(..., H, T, D) -> (..., T, H*D)``: the inverse of :func:`split_heads`.

    >>> merge_heads(torch.zeros(2, 4, 5, 8)).shape
    torch.Size([2, 5, 32])
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 3:
        got = _shape(x) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (..., H, T, D), got {got}")
    return x.transpose(-3, -2).flatten(-2)  # (..., T, H, D) -> (..., T, H*D)


class MultiHeadAttention(nn.Module):
    r"""Multi-head attention (Vaswani et al., 2017), a readable ``nn.MultiheadAttention``.

    head_i = Attention(x W_q^i, y W_k^i, y W_v^i);  out = concat(head_1..head_H) W_o.

    Submodules ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` are plain ``nn.Linear``
    layers (``kdim``/``vdim`` are the input sizes of keys and values; default ``embed_dim``).

    ``forward(query, key=None, value=None, key_padding_mask=None, attn_mask=None,
    is_causal=False, need_weights=False, average_attn_weights=True)`` returns
    ``(out, weights)``:

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
    ) -> None:
        super().__init__()
        for name, n in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                raise ValueError(f"{name} must be a positive int, got {n!r}")
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim must be divisible by num_heads, got embed_dim={embed_dim} and "
                f"num_heads={num_heads}"
            )
        _check_probability("dropout", dropout)
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.dropout = dropout  # a probability (as in nn.MultiheadAttention), used when training
        self.batch_first = batch_first
        self.use_sdpa = use_sdpa
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

    # -- the mask: attn_mask, key_padding_mask and is_causal folded into one (B, H, Lq, Lk) --

    def _build_mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        is_causal: bool,
        b: int,
        lq: int,
        lk: int,
        device: torch.device,
    ) -> torch.Tensor | None:
        h = self.num_heads
        mask = None
        for name, m in (("attn_mask", attn_mask), ("key_padding_mask", key_padding_mask)):
            if isinstance(m, torch.Tensor) and m.device != device:
                raise ValueError(f"{name} must be on the device of the inputs {device}, got {m.device}")
        if attn_mask is not None:
            _check_mask_dtype("attn_mask", attn_mask)
            expected = "(Lq, Lk), (B, Lq, Lk) or (B, H, Lq, Lk)"
            if attn_mask.dim() == 2:
                mask = attn_mask[None, None]  # (1, 1, Lq, Lk)
            elif attn_mask.dim() == 3:
                mask = attn_mask[:, None]  # (B, 1, Lq, Lk)
            elif attn_mask.dim() == 4:
                mask = attn_mask
            else:
                raise ValueError(
                    f"attn_mask must have shape {expected} = {(lq, lk)}, {(b, lq, lk)} or "
                    f"{(b, h, lq, lk)}, got {_shape(attn_mask)}"
                )
            if not _broadcasts_to(_shape(mask), (b, h, lq, lk)):
                raise ValueError(
                    f"attn_mask must have shape {expected} = {(lq, lk)}, {(b, lq, lk)} or "
                    f"{(b, h, lq, lk)}, got {_shape(attn_mask)}"
                )
        if key_padding_mask is not None:
            if isinstance(key_padding_mask, torch.Tensor) and _shape(key_padding_mask) != (b, lk):
                raise ValueError(
                    f"key_padding_mask must have shape (B, Lk) = {(b, lk)}, got "
                    f"{_shape(key_padding_mask)}"
                )
            keep = padding_mask_to_attn_mask(key_padding_mask)  # (B, 1, 1, Lk), True = attend
            mask = _and_masks(mask, keep)
        if is_causal:
            mask = _and_masks(mask, causal_mask(lq, lk, device=device))
        return mask

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
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = query if key is None else key
        value = key if value is None else value
        layout = "(B, T, E)" if self.batch_first else "(T, B, E)"
        for name, t, dim in (
            ("query", query, self.embed_dim),
            ("key", key, self.kdim),
            ("value", value, self.vdim),
        ):
            _check_tensor(name, t)
            _check_like_module(name, t, self.q_proj.weight)
            if t.dim() != 3 or t.size(-1) != dim:
                raise ValueError(f"{name} must have shape {layout} with E = {dim}, got {_shape(t)}")
        if not self.batch_first:  # (T, B, E) -> (B, T, E): inside, we always work batch-first
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if key.shape[:2] != value.shape[:2] or key.size(0) != query.size(0):
            raise ValueError(
                f"query, key and value must share the batch size and key/value the length, got "
                f"query {_shape(query)}, key {_shape(key)}, value {_shape(value)} (batch-first)"
            )
        b, lq, lk = query.size(0), query.size(1), key.size(1)

        q = split_heads(self.q_proj(query), self.num_heads)  # (B, H, Lq, D)
        k = split_heads(self.k_proj(key), self.num_heads)  # (B, H, Lk, D)
        v = split_heads(self.v_proj(value), self.num_heads)  # (B, H, Lk, D)

        mask = self._build_mask(
            attn_mask, key_padding_mask, is_causal, b, lq, lk, q.device
        )  # (B|1, H|1, Lq|1, Lk) or None
        p = self.dropout if self.training else 0.0
        want_weights = need_weights or self.store_weights

        weights = None
        if self.use_sdpa and is_causal and attn_mask is None and key_padding_mask is None:
            # only the causal mask: let PyTorch pick a kernel that never builds it
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            if want_weights:
                _, weights = scaled_dot_product_attention(q, k, v, causal=True, return_weights=True)
        elif self.use_sdpa:
            out = _sdpa_no_nan(q, k, v, mask, dropout_p=p)  # (B, H, Lq, D)
            if want_weights:  # the fused kernel never materialises the weights: recompute
                _, weights = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
        else:
            out, weights = scaled_dot_product_attention(
                q, k, v, mask, dropout_p=p, return_weights=True
            )  # (B, H, Lq, D), (B, H, Lq, Lk)

        out = self.out_proj(merge_heads(out))  # (B, Lq, E)
        if not self.batch_first:
            out = out.transpose(0, 1)  # (Lq, B, E)

        if self.store_weights and weights is not None:
            self.last_attn_weights = weights.detach()
        if not need_weights or weights is None:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights

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
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(
                f"module must be a torch.nn.MultiheadAttention, got {type(module).__name__}"
            )
        if module.bias_k is not None or module.add_zero_attn:
            raise ValueError("add_bias_kv=True and add_zero_attn=True are not supported")
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


def _and_masks(mask: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor:
    """Combine a bool-or-float mask with a bool ``keep`` mask (True = may attend)."""
    if mask is None:
        return keep
    if mask.dtype == torch.bool:
        return mask & keep
    return mask.masked_fill(~keep, _NEG_INF)  # float mask: -inf where keep is False


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
