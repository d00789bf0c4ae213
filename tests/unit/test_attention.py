"""Unit tests of course_utils.attention (the random-shape comparisons with PyTorch are in
tests/test_attention_properties.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import randn
from torch import nn

from course_utils.attention import (
    AdditiveAttention,
    GroupedQueryAttention,
    MultiHeadAttention,
    causal_mask,
    masked_softmax,
    merge_heads,
    padding_mask_to_attn_mask,
    scaled_dot_product_attention,
    split_heads,
)

NEG_INF = float("-inf")




# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lq,lk", [(4, 4), (3, 5), (5, 3), (1, 1)])
def test_causal_mask_matches_torch_is_causal(lq: int, lk: int) -> None:
    q, k, v = randn(2, lq, 4), randn(2, lk, 4, seed=1), randn(2, lk, 3, seed=2)
    ours = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(lq, lk))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, ref)
    assert causal_mask(lq, lk).dtype == torch.bool and causal_mask(lq, lk).shape == (lq, lk)


def test_padding_mask_to_attn_mask() -> None:
    pad = torch.tensor([[False, True, False], [True, True, True]])
    m = padding_mask_to_attn_mask(pad)
    assert m.shape == (2, 1, 1, 3)
    assert torch.equal(m[:, 0, 0], ~pad)


def test_masked_softmax_zero_rows_and_float_masks() -> None:
    scores = randn(3, 4)
    keep = torch.tensor([[True, False, True, True], [False] * 4, [True] * 4])
    w = masked_softmax(scores, keep)
    assert torch.equal(w[1], torch.zeros(4)) and w[0, 1] == 0
    torch.testing.assert_close(w[[0, 2]].sum(-1), torch.ones(2))
    additive = torch.zeros(3, 4).masked_fill(~keep, NEG_INF)
    torch.testing.assert_close(masked_softmax(scores, additive), w)


# ---------------------------------------------------------------------------------------------
# scaled_dot_product_attention
# ---------------------------------------------------------------------------------------------


def test_sdpa_by_hand() -> None:
    """One tiny case computed by hand: two keys, the query matches the first one."""
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[10.0], [20.0]])
    out, w = scaled_dot_product_attention(q, k, v, scale=1.0, return_weights=True)
    e = torch.tensor(1.0).exp()
    torch.testing.assert_close(w, torch.tensor([[e / (e + 1), 1 / (e + 1)]]))
    torch.testing.assert_close(out, w @ v)


def test_sdpa_scale_default_is_inverse_sqrt_d() -> None:
    q, k, v = randn(2, 3, 16), randn(2, 5, 16, seed=1), randn(2, 5, 4, seed=2)
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v),
        scaled_dot_product_attention(q, k, v, scale=0.25),
    )


def test_sdpa_fully_masked_rows_zero_with_finite_grads() -> None:
    q = randn(2, 3, 4, 8, dtype=torch.float64).requires_grad_()
    k = randn(2, 3, 5, 8, seed=1, dtype=torch.float64).requires_grad_()
    v = randn(2, 3, 5, 6, seed=2, dtype=torch.float64).requires_grad_()
    mask = torch.ones(2, 1, 4, 5, dtype=torch.bool)
    mask[0, :, 1] = False  # batch 0, query 1: nothing to attend to
    mask[1] = False  # batch 1: every query fully masked
    out, w = scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True)
    assert (out[0, :, 1] == 0).all() and (w[0, :, 1] == 0).all()
    assert (out[1] == 0).all() and (w[1] == 0).all()
    (out.square().sum() + w.sum()).backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[1] == 0).all() and (k.grad[1] == 0).all() and (v.grad[1] == 0).all()
    assert (q.grad[0, :, 1] == 0).all()
    # the same with a float mask of -inf
    fmask = torch.zeros(2, 1, 4, 5, dtype=torch.float64).masked_fill(~mask, NEG_INF)
    out2 = scaled_dot_product_attention(q, k, v, attn_mask=fmask)
    torch.testing.assert_close(out2, out)


def test_sdpa_gradcheck_float64_with_masks() -> None:
    q = randn(2, 3, 3, dtype=torch.float64).requires_grad_()
    k = randn(2, 4, 3, seed=1, dtype=torch.float64).requires_grad_()
    v = randn(2, 4, 2, seed=2, dtype=torch.float64).requires_grad_()
    mask = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(3)) < 0.6
    mask[:, :, 0] = True
    mask[1, 2] = False  # a fully masked row
    fmask = randn(3, 4, seed=4, dtype=torch.float64)
    fmask[1] = NEG_INF  # a fully masked row in a float mask
    fmask[0, 2] = NEG_INF

    def f(attn_mask, causal=False):
        return lambda q, k, v: scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, causal=causal, return_weights=True
        )

    for fn in (f(mask), f(fmask, causal=True)):
        assert torch.autograd.gradcheck(fn, (q, k, v))


def test_sdpa_dropout_scales_kept_weights() -> None:
    q, k, v = randn(4, 6, 8), randn(4, 7, 8, seed=1), randn(4, 7, 5, seed=2)
    _, w_full = scaled_dot_product_attention(q, k, v, return_weights=True)
    torch.manual_seed(0)
    out, w = scaled_dot_product_attention(q, k, v, dropout_p=0.5, return_weights=True)
    kept = w != 0
    assert 0.3 < kept.float().mean() < 0.7
    torch.testing.assert_close(w[kept], w_full[kept] / 0.5)
    torch.testing.assert_close(out, w @ v)


def test_sdpa_causal_with_float_mask() -> None:
    q, k, v = randn(2, 4, 8), randn(2, 4, 8, seed=1), randn(2, 4, 3, seed=2)
    bias = randn(4, 4, seed=3)
    ours = scaled_dot_product_attention(q, k, v, attn_mask=bias, causal=True)
    ref = F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias.masked_fill(~causal_mask(4), NEG_INF)
    )
    torch.testing.assert_close(ours, ref)


# ---------------------------------------------------------------------------------------------
# AdditiveAttention
# ---------------------------------------------------------------------------------------------


def additive_by_loops(attn: AdditiveAttention, query, keys, values, pad=None):
    """score(q, k) = w_v . tanh(W_q q + W_k k), one (batch, query, key) at a time."""
    b, lq, lk = query.size(0), query.size(1), keys.size(1)
    scores = torch.empty(b, lq, lk, dtype=query.dtype)
    for i in range(b):
        for t in range(lq):
            for j in range(lk):
                h = torch.tanh(attn.W_q.weight @ query[i, t] + attn.W_k.weight @ keys[i, j])
                scores[i, t, j] = attn.w_v.weight[0] @ h
    if pad is not None:
        scores = scores.masked_fill(pad[:, None, :], NEG_INF)
    w = torch.softmax(scores, dim=-1)
    return w @ values, w


def test_additive_attention_equals_formula_3d_and_2d_queries() -> None:
    torch.manual_seed(0)
    attn = AdditiveAttention(query_dim=3, key_dim=5, hidden_dim=4, value_dim=2)
    query, keys, values = randn(2, 3, 3), randn(2, 6, 5, seed=1), randn(2, 6, 2, seed=2)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    ctx, w = attn(query, keys, values, key_padding_mask=pad)
    ref_ctx, ref_w = additive_by_loops(attn, query, keys, values, pad)
    assert ctx.shape == (2, 3, 2) and w.shape == (2, 3, 6)
    torch.testing.assert_close(ctx, ref_ctx)
    torch.testing.assert_close(w, ref_w)
    assert (w[1, :, 4:] == 0).all()
    # one decoder step: query (B, Dq) -> context (B, Dv), weights (B, Lk)
    ctx1, w1 = attn(query[:, 0], keys, values, key_padding_mask=pad)
    assert ctx1.shape == (2, 2) and w1.shape == (2, 6)
    torch.testing.assert_close(ctx1, ref_ctx[:, 0])
    torch.testing.assert_close(w1, ref_w[:, 0])


def test_additive_attention_projected_keys_and_default_values() -> None:
    torch.manual_seed(0)
    attn = AdditiveAttention(4, 6, 8)
    query, keys = randn(3, 4), randn(3, 5, 6, seed=1)
    pk = attn.project_keys(keys)
    assert pk.shape == (3, 5, 8)
    ctx, w = attn(query, keys)
    ctx2, w2 = attn(query, keys, projected_keys=pk)
    torch.testing.assert_close(ctx, ctx2)
    torch.testing.assert_close(w, w2)
    torch.testing.assert_close(ctx, (w[:, :, None] * keys).sum(1))  # values default to keys


def test_additive_attention_all_padding_row_and_gradcheck() -> None:
    torch.manual_seed(0)
    attn = AdditiveAttention(3, 4, 5).double()
    query = randn(2, 2, 3, dtype=torch.float64).requires_grad_()
    keys = randn(2, 4, 4, seed=1, dtype=torch.float64).requires_grad_()
    values = randn(2, 4, 3, seed=2, dtype=torch.float64).requires_grad_()
    pad = torch.tensor([[False, False, True, False], [True, True, True, True]])
    ctx, w = attn(query, keys, values, key_padding_mask=pad)
    assert (ctx[1] == 0).all() and (w[1] == 0).all()
    assert torch.autograd.gradcheck(
        lambda q, k, v: attn(q, k, v, key_padding_mask=pad), (query, keys, values)
    )


# ---------------------------------------------------------------------------------------------
# split / merge heads and MultiHeadAttention
# ---------------------------------------------------------------------------------------------


def test_split_heads_takes_contiguous_feature_slices() -> None:
    x = randn(2, 5, 12)
    h = split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4)
    for i in range(3):
        torch.testing.assert_close(h[:, i], x[..., 4 * i : 4 * (i + 1)])
    assert torch.equal(merge_heads(h), x)


def test_mha_self_attention_by_hand() -> None:
    """MHA = concat of per-head attentions on slices of the projections, then out_proj."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).eval()
    x = randn(2, 5, 8)
    q, k, v = mha.q_proj(x), mha.k_proj(x), mha.v_proj(x)
    heads = [
        torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 2.0, dim=-1) @ v[..., s]
        for s in (slice(0, 4), slice(4, 8))
    ]
    ref = mha.out_proj(torch.cat(heads, dim=-1))
    out, _ = mha(x)
    torch.testing.assert_close(out, ref)


def test_mha_default_key_value_and_need_weights() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, kdim=3, vdim=3).eval()
    x, mem = randn(2, 4, 8), randn(2, 6, 3, seed=1)
    out, w = mha(x, mem, need_weights=True)  # value defaults to key
    assert out.shape == (2, 4, 8) and w.shape == (2, 4, 6)
    out2, _ = mha(x, mem, mem)
    torch.testing.assert_close(out, out2)
    assert mha(x, mem)[1] is None


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_mha_is_causal_and_store_weights(use_sdpa: bool) -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, use_sdpa=use_sdpa).eval()
    mha.store_weights = True
    x = randn(3, 5, 8)
    out, w = mha(x, is_causal=True, need_weights=True, average_attn_weights=False)
    assert w.shape == (3, 2, 5, 5)
    assert (w.triu(diagonal=1) == 0).all()
    torch.testing.assert_close(out, mha(x, attn_mask=causal_mask(5))[0])
    assert mha.last_attn_weights is not None and mha.last_attn_weights.shape == (3, 2, 5, 5)
    assert not mha.last_attn_weights.requires_grad
    ref = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(ref).eval()
    ours.use_sdpa = use_sdpa
    torch.testing.assert_close(
        ours(x, is_causal=True)[0],
        ref(x, x, x, attn_mask=~causal_mask(5), need_weights=False)[0],
        atol=1e-6,
        rtol=0,
    )


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_mha_all_padding_batch_element_is_zero_not_nan(use_sdpa: bool) -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, use_sdpa=use_sdpa)
    with torch.no_grad():
        mha.out_proj.bias.normal_()
    x = randn(2, 4, 8).requires_grad_()
    pad = torch.tensor([[False, False, True, False], [True, True, True, True]])
    out, w = mha(x, key_padding_mask=pad, need_weights=True, average_attn_weights=False)
    assert torch.isfinite(out).all() and (w[1] == 0).all()
    # the attention output is zero, so the layer output is just out_proj's bias
    torch.testing.assert_close(out[1], mha.out_proj.bias.expand(4, 8))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in mha.parameters())


def test_mha_use_sdpa_same_result_and_grads() -> None:
    torch.manual_seed(0)
    a = MultiHeadAttention(12, 3, kdim=5, vdim=7)
    b = MultiHeadAttention(12, 3, kdim=5, vdim=7, use_sdpa=True)
    b.load_state_dict(a.state_dict())
    x, k, v = randn(2, 4, 12), randn(2, 6, 5, seed=1), randn(2, 6, 7, seed=2)
    pad = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(3)) < 0.7
    oa, wa = a(x, k, v, key_padding_mask=pad, attn_mask=mask, need_weights=True)
    ob, wb = b(x, k, v, key_padding_mask=pad, attn_mask=mask, need_weights=True)
    torch.testing.assert_close(oa, ob, atol=1e-6, rtol=0)
    torch.testing.assert_close(wa, wb)
    oa.sum().backward()
    ob.sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=0)


def test_mha_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, dropout=0.5)
    x = randn(2, 6, 8)
    mha.eval()
    torch.testing.assert_close(mha(x)[0], mha(x)[0])
    mha.train()
    assert not torch.allclose(mha(x)[0], mha(x)[0])


def test_mha_from_torch_copies_layout_and_flags() -> None:
    ref = nn.MultiheadAttention(8, 4, kdim=3, vdim=5, batch_first=False, bias=False, dropout=0.1)
    ours = MultiHeadAttention.from_torch(ref)
    assert (ours.kdim, ours.vdim, ours.batch_first, ours.dropout) == (3, 5, False, 0.1)
    assert ours.q_proj.bias is None
    torch.testing.assert_close(ours.k_proj.weight, ref.k_proj_weight)
    with pytest.raises(ValueError, match="add_bias_kv"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, add_bias_kv=True))


# ---------------------------------------------------------------------------------------------
# Bad input: each message names what was expected and what was received
# ---------------------------------------------------------------------------------------------

Q, K, V = randn(2, 4, 8, 16), randn(2, 4, 6, 16), randn(2, 4, 6, 5)

BAD_SDPA = [
    # (kwargs overriding q/k/v/..., exception, regex the message must match)
    (dict(q=randn(16)), ValueError, r"q must have at least 2 dims, got a tensor of shape \(16,\)"),
    (
        dict(k=randn(2, 4, 8, 32)),
        ValueError,
        r"q and k must have the same last dim \(head dim D\), got q \(2, 4, 8, 16\), "
        r"k \(2, 4, 8, 32\)",
    ),
    (
        dict(v=randn(2, 4, 7, 5)),
        ValueError,
        r"number of keys Lk.*got q \(2, 4, 8, 16\), k \(2, 4, 6, 16\), v \(2, 4, 7, 5\)",
    ),
    (
        dict(attn_mask=torch.ones(8, 5, dtype=torch.bool)),
        ValueError,
        r"attn_mask must broadcast to the scores shape \(2, 4, 8, 6\), got \(8, 5\)",
    ),
    (
        dict(attn_mask=torch.ones(8, 6, dtype=torch.int64)),
        TypeError,
        r"attn_mask must be a bool tensor .* got dtype torch.int64",
    ),
    (dict(dropout_p=1.0), ValueError, r"dropout_p must be a real number in \[0.0, 1.0\), got 1.0"),
    (dict(dropout_p=-0.1), ValueError, r"dropout_p must be a real number in \[0.0, 1.0\), got -0.1"),
    (
        dict(q=Q.double()),
        TypeError,
        r"same dtype, got q torch.float64, k torch.float32, v torch.float32",
    ),
    (dict(q=Q.long()), TypeError, r"q must be a floating-point tensor, got .* dtype torch.int64"),
    (dict(k=[[1.0]]), TypeError, r"k must be a torch.Tensor, got list"),
    (
        dict(k=randn(3, 4, 6, 16), v=randn(3, 4, 6, 5)),
        ValueError,
        r"must broadcast, got q \(2, 4, 8, 16\), k \(3, 4, 6, 16\), v \(3, 4, 6, 5\)",
    ),
]


@pytest.mark.parametrize("override,exc,msg", BAD_SDPA)
def test_sdpa_bad_input(override: dict, exc: type, msg: str) -> None:
    kwargs = dict(q=Q, k=K, v=V) | override
    with pytest.raises(exc, match=msg):
        scaled_dot_product_attention(**kwargs)


def test_mha_bad_input() -> None:
    with pytest.raises(ValueError, match=r"embed_dim=10 and num_heads=4"):
        MultiHeadAttention(10, 4)
    mha = MultiHeadAttention(8, 2, kdim=3, vdim=3)
    x = randn(2, 5, 8)
    with pytest.raises(
        ValueError, match=r"query must have shape \(B, T, E\) with E = 8, got \(2, 5, 6\)"
    ):
        mha(randn(2, 5, 6), randn(2, 4, 3))
    with pytest.raises(
        ValueError, match=r"key must have shape \(B, T, E\) with E = 3, got \(2, 4, 8\)"
    ):
        mha(x, randn(2, 4, 8))
    with pytest.raises(
        ValueError, match=r"key_padding_mask must have shape \(B, Lk\) = \(2, 4\), got \(2, 5\)"
    ):
        mha(x, randn(2, 4, 3), key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(
        TypeError, match=r"key_padding_mask must be a bool tensor .* got .* dtype torch.float32"
    ):
        mha(x, randn(2, 4, 3), key_padding_mask=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"attn_mask must broadcast to .* \(5, 4\), got \(4, 5\)"):
        mha(x, randn(2, 4, 3), attn_mask=torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(
        TypeError, match=r"attn_mask must be a bool tensor .* got dtype torch.int32"
    ):
        mha(x, randn(2, 4, 3), attn_mask=torch.ones(5, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"query, key and value must have the same size along dim 0 \(the batch\), got query \(2, 5, 8\), key \(3, 4, 3\)"):
        mha(x, randn(3, 4, 3))
    with pytest.raises(ValueError, match=r"dropout must be a real number in \[0.0, 1.0\), got 1.5"):
        MultiHeadAttention(8, 2, dropout=1.5)
    with pytest.raises(TypeError, match=r"torch.nn.MultiheadAttention, got Linear"):
        MultiHeadAttention.from_torch(nn.Linear(2, 2))


def test_split_heads_bad_input() -> None:
    with pytest.raises(
        ValueError, match=r"x.size\(-1\) must be divisible by num_heads, got x.size\(-1\)=10 and num_heads=4"
    ):
        split_heads(randn(2, 3, 10), 4)
    with pytest.raises(ValueError, match=r"x must have at least 3 dims, got a tensor of shape \(2, 3\)"):
        merge_heads(randn(2, 3))


def test_additive_attention_bad_input() -> None:
    attn = AdditiveAttention(query_dim=4, key_dim=6, hidden_dim=8, value_dim=3)
    keys, values = randn(2, 5, 6), randn(2, 5, 3)
    with pytest.raises(
        ValueError, match=r"query must have shape \(B, query_dim=4\) .* got \(2, 5\)"
    ):
        attn(randn(2, 5), keys, values)
    with pytest.raises(
        ValueError, match=r"keys must have shape \(B, T, E\) with E = 6, got \(2, 5, 4\)"
    ):
        attn(randn(2, 4), randn(2, 5, 4), values)
    with pytest.raises(ValueError, match=r"values must have shape \(B, T, E\) with E = 3, got \(2, 5, 2\)"):
        attn(randn(2, 4), keys, randn(2, 5, 2))
    with pytest.raises(
        ValueError, match=r"keys, values and projected_keys must have the same size along dim 1 "
        r"\(the length\), got keys \(2, 5, 6\), values \(2, 7, 3\)"
    ):
        attn(randn(2, 4), keys, randn(2, 7, 3))
    with pytest.raises(
        ValueError, match=r"projected_keys must have shape .* E = 8, got \(2, 5, 7\)"
    ):
        attn(randn(2, 4), keys, values, projected_keys=randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, Lk\) = \(2, 5\) "
                                         r"from keys, got \(2, 4\)"):
        attn(randn(2, 4), keys, values, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(
        ValueError, match=r"query must have shape \(B, query_dim=4\) .*, got \(3, 4\)"
    ):
        attn(randn(3, 4), keys, values)


def test_masked_softmax_bad_input() -> None:
    with pytest.raises(
        ValueError, match=r"mask must broadcast to the scores shape \(2, 3\), got \(4,\)"
    ):
        masked_softmax(torch.zeros(2, 3), torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"mask must be a bool tensor .* got dtype torch.uint8"):
        masked_softmax(torch.zeros(2, 3), torch.ones(3, dtype=torch.uint8))


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_mha_bfloat16_close_to_float32(use_sdpa: bool) -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, use_sdpa=use_sdpa).eval()
    x = randn(2, 6, 16)
    bias = randn(6, 6, seed=1)  # a float (additive) mask stays float32 on our path
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    ref, _ = mha(x, attn_mask=bias, key_padding_mask=pad)
    out, _ = mha.bfloat16()(x.bfloat16(), attn_mask=bias, key_padding_mask=pad)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=5e-2 * ref.abs().max().item(), rtol=0)


# ---------------------------------------------------------------------------------------------
# One cached path: the bottom-right causal mask, the KV cache, RoPE after the head split, GQA
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_cached,lq", [(0, 4), (3, 1), (3, 4), (5, 2)])
def test_causal_mask_offset_is_the_bottom_rows_of_the_full_mask(n_cached, lq):
    full = causal_mask(n_cached + lq)
    torch.testing.assert_close(causal_mask(lq, n_cached + lq, offset=n_cached), full[n_cached:])
    with pytest.raises(ValueError, match=r"offset must be a non-negative int, got -1"):
        causal_mask(2, 3, offset=-1)


def _decode_in_chunks(attn, x, cache, chunks, **kwargs):
    outs, t = [], 0
    for n in chunks:
        out = attn(x[:, t : t + n], cache=cache, **kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
        t += n
    return torch.cat(outs, 1)


@pytest.mark.parametrize("use_sdpa", [False, True])
@pytest.mark.parametrize("with_rope", [False, True])
def test_mha_with_cache_equals_full_causal_attention(use_sdpa, with_rope):
    from course_utils.kv_cache import KVCache
    from course_utils.positional import RotaryEmbedding

    torch.manual_seed(0)
    rope = RotaryEmbedding(4) if with_rope else None
    mha = MultiHeadAttention(16, 4, use_sdpa=use_sdpa, rope=rope).eval()
    x = randn(2, 9, 16)
    full, _ = mha(x, is_causal=True)
    cache = KVCache(1, batch=2, num_heads=4, head_dim=4, max_len=9)
    out = _decode_in_chunks(mha, x, cache, [4, 1, 3, 1], is_causal=True)
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)


def test_rope_inside_mha_is_rope_after_the_head_split():
    from course_utils.positional import RotaryEmbedding

    torch.manual_seed(0)
    rope = RotaryEmbedding(8)
    mha = MultiHeadAttention(16, 2, rope=rope).eval()
    x = randn(2, 5, 16)
    q = rope(split_heads(mha.q_proj(x), 2))  # (B, H, T, D), rotated at positions 0..4
    k = rope(split_heads(mha.k_proj(x), 2))
    v = split_heads(mha.v_proj(x), 2)
    ref = mha.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True)))
    torch.testing.assert_close(mha(x, is_causal=True)[0], ref, atol=1e-6, rtol=1e-5)
    # explicit positions (e.g. a left-padded batch) are used as given
    pos = torch.tensor([[0, 0, 1, 2, 3], [0, 1, 2, 3, 4]])
    q = rope(split_heads(mha.q_proj(x), 2), pos)
    k = rope(split_heads(mha.k_proj(x), 2), pos)
    ref = mha.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True)))
    torch.testing.assert_close(mha(x, is_causal=True, positions=pos)[0], ref, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"positions \(they need rope=\) must be one of None"):
        MultiHeadAttention(16, 2)(x, positions=pos)


def test_cache_is_for_self_attention_only():
    from course_utils.kv_cache import KVCache

    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"a KV cache is for self-attention"):
        mha(randn(1, 2, 8), randn(1, 3, 8), cache=KVCache(1, 1, 2, 4, 4))


@pytest.mark.parametrize("hkv", [1, 2, 4])
@pytest.mark.parametrize("head_dim", [None, 6])
def test_gqa_module_equals_repeated_heads_reference(hkv, head_dim):
    from course_utils.attention import GroupedQueryAttention, repeat_kv
    from course_utils.kv_cache import KVCache
    from course_utils.positional import RotaryEmbedding

    torch.manual_seed(0)
    d = head_dim or 16 // 4
    gqa = GroupedQueryAttention(16, 4, hkv, head_dim=head_dim, rope=RotaryEmbedding(d)).eval()
    assert gqa.q_proj.out_features == 4 * d and gqa.k_proj.out_features == hkv * d
    x = randn(2, 7, 16)
    q = gqa.rope(split_heads(gqa.q_proj(x), 4))
    k = gqa.rope(split_heads(gqa.k_proj(x), hkv))
    v = split_heads(gqa.v_proj(x), hkv)
    att = F.scaled_dot_product_attention(q, repeat_kv(k, 4 // hkv), repeat_kv(v, 4 // hkv),
                                         is_causal=True)
    ref = gqa.out_proj(merge_heads(att))
    torch.testing.assert_close(gqa(x, is_causal=True), ref, atol=1e-5, rtol=1e-5)
    cache = KVCache(1, batch=2, num_heads=hkv, head_dim=d, max_len=7)
    torch.testing.assert_close(_decode_in_chunks(gqa, x, cache, [3, 1, 1, 2]), ref,
                               atol=1e-5, rtol=1e-5)


def test_gqa_cached_path_goes_through_grouped_query_attention(monkeypatch):
    """No second (5-D broadcast) path: the cached forward calls grouped_query_attention."""
    from course_utils import attention
    from course_utils.kv_cache import KVCache

    calls = []
    real = attention.grouped_query_attention
    monkeypatch.setattr(attention, "grouped_query_attention",
                        lambda q, k, v, **kw: calls.append(q.dim()) or real(q, k, v, **kw))
    gqa = attention.GroupedQueryAttention(16, 4, 2).eval()
    gqa(randn(1, 3, 16), cache=KVCache(1, 1, 2, 4, 4))
    assert calls == [4]


def test_alibi_bias_in_the_course_attention():
    from course_utils.attention import GroupedQueryAttention
    from course_utils.positional import alibi_bias

    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = randn(2, 6, 16)
    bias = alibi_bias(4, 6)[None]  # (1, H, T, T)
    q, k, v = (split_heads(p(x), 4) for p in (mha.q_proj, mha.k_proj, mha.v_proj))
    scores = q @ k.transpose(-2, -1) / 2.0 + bias
    scores = scores.masked_fill(~causal_mask(6), NEG_INF)
    ref = mha.out_proj(merge_heads(scores.softmax(-1) @ v))
    torch.testing.assert_close(mha(x, attn_mask=bias, is_causal=True)[0], ref, atol=1e-6, rtol=1e-5)
    gqa = GroupedQueryAttention(16, 4, 2).eval()  # a per-head float mask through the groups
    out = gqa(x, attn_mask=bias, is_causal=True)
    qg = split_heads(gqa.q_proj(x), 4)
    kg, vg = (split_heads(p(x), 2).repeat_interleave(2, 1) for p in (gqa.k_proj, gqa.v_proj))
    sg = (qg @ kg.transpose(-2, -1) / 2.0 + bias).masked_fill(~causal_mask(6), NEG_INF)
    torch.testing.assert_close(out, gqa.out_proj(merge_heads(sg.softmax(-1) @ vg)),
                               atol=1e-6, rtol=1e-5)


def test_gqa_bad_input():
    from course_utils.attention import GroupedQueryAttention, grouped_query_attention

    with pytest.raises(ValueError, match=r"num_heads must be divisible by num_kv_heads, got "
                                         r"num_heads=8 and num_kv_heads=3"):
        GroupedQueryAttention(32, 8, 3)
    with pytest.raises(ValueError, match=r"embed_dim must be divisible by num_heads"):
        GroupedQueryAttention(30, 4, 2)
    GroupedQueryAttention(30, 4, 2, head_dim=8)  # an explicit head_dim needs no divisibility
    with pytest.raises(ValueError, match=r"head_dim must be a positive int, got 0"):
        GroupedQueryAttention(32, 4, 2, head_dim=0)
    gqa = GroupedQueryAttention(16, 4, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, E\) with E = 16, got \(2, 3, 8\)"):
        gqa(randn(2, 3, 8))
    with pytest.raises(TypeError, match=r"x must have the module's dtype torch.float32, got "
                                        r"torch.float64"):
        gqa(randn(2, 3, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"q.size\(1\) must be divisible by the key/value "
                                         r"heads k.size\(1\), got .*=4 and .*=3"):
        grouped_query_attention(randn(1, 4, 2, 8), randn(1, 3, 2, 8), randn(1, 3, 2, 8))
    with pytest.raises(ValueError, match=r"attn_mask must broadcast to the scores shape "
                                         r"\(1, 4, 2, 2\), got \(3, 2\)"):
        grouped_query_attention(randn(1, 4, 2, 8), randn(1, 2, 2, 8), randn(1, 2, 2, 8),
                                attn_mask=torch.ones(3, 2, dtype=torch.bool))


# One case per kind of mistake: a flag that is not a bool (bias=None built a module without
# biases, batch_first="no" read as true), a device that does not exist, a mask on another device
# than the scores, a padding mask that does not fit x (and the cache) named against x.
@pytest.mark.parametrize("call, error, message", [
    (lambda: MultiHeadAttention(8, 2, bias=None), TypeError,
     "bias must be True or False, got None"),
    (lambda: MultiHeadAttention(8, 2, batch_first="no"), TypeError,
     "batch_first must be True or False, got str 'no'"),
    (lambda: MultiHeadAttention(8, 2, use_sdpa=1), TypeError, "use_sdpa must be True or False"),
    (lambda: MultiHeadAttention(8, 2)(randn(2, 3, 8), need_weights=True, average_attn_weights=0),
     TypeError, "average_attn_weights must be True or False"),
    (lambda: GroupedQueryAttention(16, 4, 2,
                                                                                 bias="yes"),
     TypeError, "bias must be True or False"),
    (lambda: causal_mask(3, device="gpu"), ValueError, "device must be a device such as 'cpu'"),
    (lambda: causal_mask(3, device=""), ValueError, "device must be a device such as 'cpu'"),
    (lambda: masked_softmax(randn(2, 3).to("meta"), torch.ones(2, 3, dtype=torch.bool)),
     ValueError, "mask must be on meta .*device of scores.* got mask on cpu"),
    (lambda: GroupedQueryAttention(16, 4, 2)(
        randn(0, 3, 16), key_padding_mask=torch.zeros(2, 3, dtype=torch.bool)),
     ValueError, r"key_padding_mask must have shape \(B, Lk\) = \(0, 3\) from x, got"),
])
def test_flags_devices_and_masks_name_their_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("x_rank", [3, 4])
def test_split_and_merge_heads_take_any_leading_dims(x_rank):
    """(..., T, E) and (..., H, T, D): one leading dim more or less is the documented contract."""
    x = randn(*(2, 3, 5, 8)[-x_rank:])
    heads = split_heads(x, 2)
    assert heads.shape == (*x.shape[:-2], 2, x.size(-2), 4)
    assert torch.equal(merge_heads(heads), x)


def test_project_kv_with_other_key_and_value_widths():
    """Keys and values projected once equal the ones forward computes (kdim, vdim != E)."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, kdim=6, vdim=5).eval()
    q, k, v = randn(2, 3, 8), randn(2, 4, 6, seed=1), randn(2, 4, 5, seed=2)
    torch.testing.assert_close(mha(q, projected_kv=mha.project_kv(k, v))[0], mha(q, k, v)[0])
    with pytest.raises(ValueError, match=r"key and value must have the same size along dim 1"):
        mha.project_kv(k, randn(2, 3, 5))
