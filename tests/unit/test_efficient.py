"""course_utils.efficient: tiled attention, online softmax, GQA and the KV cache against references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_utils.attention import MultiHeadAttention
from course_utils.efficient import (
    DecoderLM,
    GroupedQueryAttention,
    KVCache,
    cached_self_attention,
    grouped_query_attention,
    naive_attention,
    online_softmax,
    repeat_kv,
    tiled_attention,
)
from course_utils.transformer import TransformerDecoderLayer


def _torch_reference(q, k, v, causal=False, key_padding_mask=None):
    """F.scaled_dot_product_attention with the course's masks; fully masked rows -> 0."""
    mask = None
    if key_padding_mask is not None:
        keep = ~key_padding_mask
        mask = keep.view(keep.size(0), *([1] * (q.dim() - 2)), keep.size(1))
    if causal:
        c = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool).tril()
        mask = c if mask is None else mask & c
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    mask = mask.expand(*q.shape[:-2], q.size(-2), k.size(-2))
    dead = ~mask.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | dead)
    return out.masked_fill(dead, 0.0)


# ---------------------------------------------------------------------------------------------
# online softmax and tiled attention
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [1, 3, 7, 100])
def test_online_softmax_equals_softmax(block):
    x = torch.randn(4, 37) * 10
    torch.testing.assert_close(online_softmax(x, block=block), torch.softmax(x, -1))


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 2),
    h=st.integers(1, 3),
    lq=st.integers(1, 40),
    lk=st.integers(1, 40),
    d=st.sampled_from([4, 8, 16]),
    dv=st.sampled_from([4, 8]),
    block_q=st.integers(1, 17),
    block_k=st.integers(1, 17),
    causal=st.booleans(),
    padded=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_tiled_equals_naive_and_torch(b, h, lq, lk, d, dv, block_q, block_k, causal, padded, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(b, h, lq, d, generator=g), torch.randn(b, h, lk, d, generator=g)
    v = torch.randn(b, h, lk, dv, generator=g)
    pad = torch.rand(b, lk, generator=g) < 0.3 if padded else None
    out = tiled_attention(q, k, v, causal=causal, key_padding_mask=pad, block_q=block_q, block_k=block_k)
    assert out.shape == (b, h, lq, dv)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, naive_attention(q, k, v, causal=causal, key_padding_mask=pad), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, _torch_reference(q, k, v, causal, pad), atol=1e-5, rtol=1e-5)


def test_tiled_block_sizes_that_do_not_divide_n_and_3d_inputs():
    q, k, v = torch.randn(3, 100, 16), torch.randn(3, 77, 16), torch.randn(3, 77, 16)
    for bq, bk in [(7, 13), (64, 32), (100, 77), (1000, 1000)]:
        torch.testing.assert_close(
            tiled_attention(q, k, v, block_q=bq, block_k=bk), F.scaled_dot_product_attention(q, k, v),
            atol=1e-5, rtol=1e-5,
        )
    pad = torch.zeros(3, 77, dtype=torch.bool)
    pad[1, 50:] = True
    torch.testing.assert_close(
        tiled_attention(q, k, v, key_padding_mask=pad, block_q=9, block_k=11),
        naive_attention(q, k, v, key_padding_mask=pad), atol=1e-5, rtol=1e-5,
    )


def test_tiled_fully_masked_rows_are_zero_not_nan():
    q, k, v = torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1] = True  # batch element 1: every key is padding
    out = tiled_attention(q, k, v, key_padding_mask=pad, block_q=4, block_k=4)
    assert torch.isfinite(out).all()
    assert (out[1] == 0).all()
    torch.testing.assert_close(out[0], F.scaled_dot_product_attention(q[:1], k[:1], v[:1])[0])
    # causal with more queries than keys... and fewer: rows past the end still see keys
    out = tiled_attention(q[..., :3, :].contiguous(), k, v, causal=True, block_k=2)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q[..., :3, :], k, v, is_causal=True))


def test_tiled_large_scores_do_not_overflow():
    q = torch.randn(1, 1, 32, 16) * 100
    k = torch.randn(1, 1, 32, 16) * 100
    v = torch.randn(1, 1, 32, 16)
    out = tiled_attention(q, k, v, block_q=8, block_k=8)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("causal,padded", [(False, False), (True, False), (False, True), (True, True)])
def test_tiled_gradcheck_float64(causal, padded):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(1, 2, 7, 3, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(1, 2, 7, 2, dtype=torch.float64, generator=g, requires_grad=True)
    pad = torch.tensor([[False, False, True, False, False, True, False]]) if padded else None

    def fn(q, k, v):
        return tiled_attention(q, k, v, causal=causal, key_padding_mask=pad, block_q=2, block_k=3)

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_tiled_gradients_equal_torch():
    q, k, v = (torch.randn(2, 3, 19, 8, requires_grad=True) for _ in range(3))
    grads = torch.autograd.grad(tiled_attention(q, k, v, causal=True, block_q=5, block_k=6).sum(), (q, k, v))
    ref = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True).sum(), (q, k, v))
    for a, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-4)


def test_tiled_half_precision_inputs():
    q, k, v = (torch.randn(1, 2, 33, 16) for _ in range(3))
    out = tiled_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), block_q=8, block_k=8)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.scaled_dot_product_attention(q, k, v), atol=3e-2, rtol=3e-2)


def test_tiled_bad_input_names_the_shapes():
    q = torch.randn(2, 4, 8, 16)
    with pytest.raises(ValueError, match=r"head dim.*\(2, 4, 8, 16\).*\(2, 4, 8, 32\)"):
        tiled_attention(q, torch.randn(2, 4, 8, 32), torch.randn(2, 4, 8, 32))
    with pytest.raises(ValueError, match="block_k"):
        tiled_attention(q, q, q, block_k=0)
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        tiled_attention(q, q, q, key_padding_mask=torch.zeros(2, 9, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        tiled_attention(q, q, q, key_padding_mask=torch.zeros(2, 8))


# ---------------------------------------------------------------------------------------------
# grouped-query attention
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,hkv", [(8, 1), (8, 2), (8, 8), (6, 3)])
@pytest.mark.parametrize("causal", [False, True])
def test_gqa_equals_repeated_heads(h, hkv, causal):
    q = torch.randn(2, h, 9, 16)
    k, v = torch.randn(2, hkv, 11, 16), torch.randn(2, hkv, 11, 8)
    pad = torch.zeros(2, 11, dtype=torch.bool)
    pad[0, -3:] = True
    out = grouped_query_attention(q, k, v, causal=causal, key_padding_mask=pad)
    ref = _torch_reference(q, repeat_kv(k, h // hkv), repeat_kv(v, h // hkv), causal, pad)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    if not causal:  # PyTorch's own GQA (torch >= 2.5)
        torch_gqa = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :], enable_gqa=True)
        torch.testing.assert_close(out, torch_gqa, atol=1e-5, rtol=1e-5)


def test_gqa_module_with_cache_equals_full_causal():
    torch.manual_seed(0)
    gqa = GroupedQueryAttention(32, num_heads=8, num_kv_heads=2).eval()
    x = torch.randn(2, 10, 32)
    full = gqa(x, is_causal=True)
    cache = KVCache(1, batch=2, num_heads=2, head_dim=4, max_len=10)
    parts = [gqa(x[:, :4], cache=cache)] + [gqa(x[:, t : t + 1], cache=cache) for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        GroupedQueryAttention(32, num_heads=8, num_kv_heads=3)


def test_repeat_kv_bad_shape():
    with pytest.raises(ValueError, match=r"x must have 4 dims, got a tensor of shape \(2, 3, 4\)"):
        repeat_kv(torch.zeros(2, 3, 4), 2)


# ---------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------


def test_cached_self_attention_equals_recompute_rows(one_thread):
    torch.manual_seed(0)
    mha = MultiHeadAttention(24, 3).eval()
    x = torch.randn(2, 12, 24)
    full, _ = mha(x, is_causal=True)
    cache = KVCache(1, 2, 3, 8, max_len=12)
    outs = [cached_self_attention(mha, x[:, :5], cache)]
    outs += [cached_self_attention(mha, x[:, t : t + 1], cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="KV cache full"):
        cached_self_attention(mha, x[:, :1], cache)


@pytest.fixture
def one_thread():
    # decoding is a chain of tiny ops: with several threads on a busy machine, OpenMP's hand-offs
    # dominate (10x slower); one thread keeps these tests quick
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_lm_cache_gives_the_same_tokens(norm_first, one_thread):
    torch.manual_seed(0)
    lm = DecoderLM(vocab=97, d_model=32, nhead=4, num_layers=2, max_len=64)
    if not norm_first:  # the same model with post-LN layers
        for layer in lm.decoder.layers:
            layer.norm_first = False
    lm.eval()
    memory = torch.randn(3, 9, 32)
    start = torch.randint(0, 97, (3, 4))
    with_cache = lm.generate(memory, start, 24, use_cache=True)
    recompute = lm.generate(memory, start, 24, use_cache=False)
    assert with_cache.shape == (3, 28)
    assert torch.equal(with_cache, recompute)
    # and the logits of the cached steps equal the full forward pass
    cache, cross = lm.new_cache(3, 28, memory)
    stepped = torch.cat([lm.step(with_cache[:, :4], cache, cross)] + [
        lm.step(with_cache[:, t : t + 1], cache, cross) for t in range(4, 28)
    ], 1)
    torch.testing.assert_close(stepped, lm(with_cache, memory), atol=1e-4, rtol=1e-4)


def test_decoder_layer_step_matches_torch_layer_via_course_layer(one_thread):
    # the cached step runs the course's TransformerDecoderLayer, itself proved equal to torch's
    ref = torch.nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    layer = TransformerDecoderLayer.from_torch(ref).eval()
    lm = DecoderLM(vocab=11, d_model=16, nhead=4, num_layers=1, dim_feedforward=32, max_len=16).eval()
    lm.decoder.layers[0] = layer
    memory, start = torch.randn(1, 5, 16), torch.zeros(1, 1, dtype=torch.long)
    assert torch.equal(lm.generate(memory, start, 10), lm.generate(memory, start, 10, use_cache=False))


def test_cache_refuses_training_mode():
    lm = DecoderLM(vocab=11, d_model=16, nhead=4, num_layers=1, max_len=8).train()
    with pytest.raises(RuntimeError, match="eval"):
        lm.generate(torch.randn(1, 3, 16), torch.zeros(1, 1, dtype=torch.long), 2)


def test_decoder_lm_bad_input():
    lm = DecoderLM(vocab=11, d_model=16, nhead=4, num_layers=1, max_len=8).eval()
    memory, start = torch.randn(1, 3, 16), torch.zeros(1, 1, dtype=torch.long)
    with pytest.raises(ValueError, match=r"start must hold token ids in \[0, 11\), got values "
                                         r"from 0 to 12"):
        lm.generate(memory, torch.tensor([[0, 12]]), 2)
    with pytest.raises(TypeError, match=r"start must be an integer tensor of token ids"):
        lm.generate(memory, start.float(), 2)
    with pytest.raises(ValueError, match=r"steps must be a non-negative int, got -1"):
        lm.generate(memory, start, -1)
    with pytest.raises(ValueError, match=r"T0 \+ steps <= max_len=8, got start \(1, 1\) and "
                                         r"steps=8"):
        lm.generate(memory, start, 8)
    with pytest.raises(ValueError, match=r"memory must have shape \(B, T, E\) with E = 16, got "
                                         r"\(1, 3, 8\)"):
        lm.generate(torch.randn(1, 3, 8), start, 2)
    with pytest.raises(ValueError, match=r"the batch\), got tgt \(1, 1, 16\), memory \(2, 3, 16\)"):
        lm(start, torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match=r"vocab must be a positive int, got 0"):
        DecoderLM(vocab=0)
    assert lm.generate(memory, start, 0).tolist() == [[0]]  # nothing to generate
