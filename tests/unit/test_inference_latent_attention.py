"""Multi-head latent attention: naive and weight-absorbed forms equal each other, the cached
decoding equals the full pass, and the layer equals transformers' DeepseekV2Attention."""

from __future__ import annotations

import pytest
import torch

from course_utils.inference.latent_attention import (
    DEEPSEEK_V2,
    LatentKVCache,
    MLAConfig,
    MultiHeadLatentAttention,
    kv_cache_bytes_per_token,
)
from course_utils.kv_cache import KVCache

SIZES = dict(d_model=64, num_heads=4, kv_rank=16, q_rank=24, nope_dim=8, rope_dim=4, v_dim=6)


def mla(seed=0, dtype=torch.float32, **overrides):
    torch.manual_seed(seed)
    m = MultiHeadLatentAttention(**{**SIZES, **overrides}).to(dtype)
    with torch.no_grad():  # non-trivial norms, so a misplaced one would show
        for norm in (m.q_norm, m.kv_norm):
            if norm is not None:
                norm.weight.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("q_rank", [24, None])
def test_absorbed_equals_naive(q_rank):
    m = mla(q_rank=q_rank)
    x = torch.randn(3, 17, 64)
    assert (m(x) - m(x, absorbed=True)).abs().max() <= 1e-5
    m64 = mla(q_rank=q_rank, dtype=torch.float64)
    x64 = x.double()
    assert (m64(x64) - m64(x64, absorbed=True)).abs().max() <= 1e-12


@pytest.mark.parametrize("absorbed", [False, True])
def test_cached_decoding_equals_the_full_pass(absorbed):
    m = mla()
    x = torch.randn(2, 15, 64)
    full = m(x)
    cache = m.new_cache(batch=2, max_len=15, num_layers=2)
    chunks, t, outs = [5, 1, 1, 4, 1, 3], 0, []
    for size in chunks:  # a prompt, steps, more chunks; layer 1 of the cache
        outs.append(m(x[:, t : t + size], cache=cache, layer=1, absorbed=absorbed))
        t += size
    assert (torch.cat(outs, 1) - full).abs().max() <= 1e-5
    assert cache.length(1) == 15 and cache.length(0) == 0


def test_crop_rolls_back():
    m = mla()
    x = torch.randn(1, 8, 64)
    cache = m.new_cache(1, 8)
    with torch.no_grad():
        m(x[:, :6], cache=cache)
        first = m(x[:, 6:7], cache=cache, absorbed=True)
        cache.crop(6)
        again = m(x[:, 6:7], cache=cache, absorbed=True)
    assert cache.length(0) == 7 and torch.equal(first, again)
    with pytest.raises(ValueError, match="length must be"):
        cache.crop(9)


def test_is_causal():
    m = mla()
    x = torch.randn(1, 10, 64)
    y = x.clone()
    y[:, 6:] = torch.randn(1, 4, 64)  # change the future of token 5
    assert torch.allclose(m(x)[:, :6], m(y)[:, :6], atol=1e-6)
    assert not torch.allclose(m(x)[:, 6:], m(y)[:, 6:], atol=1e-3)


@pytest.mark.parametrize("q_rank", [24, None])
def test_equals_transformers_deepseek_v2_attention(q_rank):
    tf = pytest.importorskip("transformers.models.deepseek_v2.modeling_deepseek_v2")
    m = mla(q_rank=q_rank)
    hf = m.to_transformers()
    x = torch.randn(2, 11, 64)
    t = x.size(1)
    freqs = tf.DeepseekV2RotaryEmbedding(hf.config)(x, torch.arange(t)[None])
    causal = torch.full((t, t), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        ref = hf(x, attention_mask=causal, position_embeddings=freqs)[0]
        for absorbed in (False, True):
            assert (m(x, absorbed=absorbed) - ref).abs().max() <= 1e-5


def test_a_wrong_rope_layout_would_show():
    """The RoPE reordering matters: without it the outputs differ (the test above can fail)."""
    tf = pytest.importorskip("transformers.models.deepseek_v2.modeling_deepseek_v2")
    m = mla()
    hf = m.to_transformers()
    with torch.no_grad():
        hf.kv_a_proj_with_mqa.weight[-m.rope_dim :] = m.w_kr.weight  # course layout, not DeepSeek's
    x = torch.randn(1, 6, 64)
    freqs = tf.DeepseekV2RotaryEmbedding(hf.config)(x, torch.arange(6)[None])
    causal = torch.full((6, 6), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        assert (
            m(x) - hf(x, attention_mask=causal, position_embeddings=freqs)[0]
        ).abs().max() > 1e-4


def test_cache_bytes_per_token_at_deepseek_v2():
    """DeepSeek-V2's Table 1, per layer: MHA 2 n_h d_h, GQA 2 n_g d_h, MQA 2 d_h, MLA d_c + d_R."""
    per_layer = {
        kind: kv_cache_bytes_per_token(kind, DEEPSEEK_V2, kv_heads=8, bytes_per_number=1)
        // DEEPSEEK_V2.num_layers
        for kind in ("mha", "gqa", "mqa", "mla")
    }
    assert per_layer == {"mha": 32768, "gqa": 2048, "mqa": 256, "mla": 576}
    assert per_layer["mla"] == 4.5 * DEEPSEEK_V2.head_dim  # the paper's "≈ 9/2 d_h l"
    # measured on the cache objects themselves, bf16, one layer
    mla_cache = LatentKVCache(
        1, 1, DEEPSEEK_V2.kv_rank, DEEPSEEK_V2.rope_dim, 4, dtype=torch.bfloat16
    )
    mha_cache = KVCache(1, 1, DEEPSEEK_V2.num_heads, DEEPSEEK_V2.head_dim, 4, dtype=torch.bfloat16)
    assert mla_cache.bytes_per_token() == 2 * 576 and mha_cache.nbytes() // 4 == 2 * 32768


def test_bad_inputs():
    m = mla()
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, d_model=64\)"):
        m(torch.randn(2, 3, 32))
    with pytest.raises(ValueError, match="kind must be one of"):
        kv_cache_bytes_per_token("mlp", DEEPSEEK_V2)
    with pytest.raises(ValueError, match="kv_heads must be a positive int"):
        kv_cache_bytes_per_token("gqa", DEEPSEEK_V2)
    cache = m.new_cache(1, 2)
    m(torch.randn(1, 2, 64), cache=cache)
    with pytest.raises(ValueError, match="latent cache full"):
        m(torch.randn(1, 1, 64), cache=cache)
    with pytest.raises(ValueError, match="layer must be"):
        m(torch.randn(1, 1, 64), cache=cache, layer=3)
    assert isinstance(DEEPSEEK_V2, MLAConfig)
    with pytest.raises(ValueError, match=r"x must have shape \(B=1, T, d_model=64\) \(B from the"):
        m(torch.randn(2, 1, 64), cache=m.new_cache(1, 4))
    with pytest.raises(TypeError, match="c_new must be a floating-point tensor"):
        m.new_cache(1, 4).update(0, torch.ones(1, 1, 1, 16, dtype=torch.long), torch.ones(1, 1, 1, 4))
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        MLAConfig(d_model=8, num_heads=0, head_dim=4, kv_rank=4, rope_dim=2, q_rank=None,
                  num_layers=1)
