"""Tests of course_utils.positional: the sinusoidal formula, learned tables, RoPE against
Hugging Face transformers' LLaMA implementation, and RoPE's relative-position property."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import randn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from course_utils.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    apply_rotary,
    rotate_half,
    sinusoidal_table,
)

# ---------------------------------------------------------------------------------------------
# Sinusoidal
# ---------------------------------------------------------------------------------------------


def test_sinusoidal_hand_computed_values() -> None:
    pe = SinusoidalPositionalEncoding(d_model=4, max_len=50).pe
    assert pe.shape == (50, 4)
    # PE[pos, 2i] = sin(pos / 10000^(2i/4)), PE[pos, 2i+1] = cos(...): frequencies 1 and 1/100
    expected = {
        (0, 0): 0.0, (0, 1): 1.0, (0, 2): 0.0, (0, 3): 1.0,
        (1, 0): math.sin(1.0), (1, 1): math.cos(1.0),
        (1, 2): math.sin(0.01), (1, 3): math.cos(0.01),
        (7, 0): math.sin(7.0), (7, 1): math.cos(7.0),
        (42, 2): math.sin(0.42), (42, 3): math.cos(0.42),
    }  # fmt: skip
    for (pos, dim), value in expected.items():
        assert pe[pos, dim].item() == pytest.approx(value, abs=1e-6), (pos, dim)


def test_sinusoidal_matches_formula_everywhere_and_odd_d_model() -> None:
    for d in (6, 7):
        pe = sinusoidal_table(30, d)
        for pos in range(30):
            for j in range(d):
                angle = pos / 10000 ** ((j - j % 2) / d)
                ref = math.sin(angle) if j % 2 == 0 else math.cos(angle)
                assert pe[pos, j].item() == pytest.approx(ref, abs=1e-6)


def test_sinusoidal_forward_adds_table_keeps_dtype_and_checks_length() -> None:
    enc = SinusoidalPositionalEncoding(8, max_len=10)
    x = randn(2, 6, 8)
    torch.testing.assert_close(enc(x), x + enc.pe[:6])
    torch.testing.assert_close(enc(x[:, :1], offset=4), x[:, :1] + enc.pe[4])
    assert enc(x.bfloat16()).dtype == torch.bfloat16
    assert "pe" not in enc.state_dict()  # recomputed, not saved in checkpoints
    with pytest.raises(ValueError, match=r"need max_len >= 11, got max_len=10 \(x \(1, 11, 8\)\)"):
        enc(randn(1, 11, 8))
    with pytest.raises(
        ValueError, match=r"x must have shape \(\.\.\., T, d_model=8\), got \(2, 6, 4\)"
    ):
        enc(randn(2, 6, 4))


# ---------------------------------------------------------------------------------------------
# Learned
# ---------------------------------------------------------------------------------------------


def test_learned_positional_embedding() -> None:
    torch.manual_seed(0)
    emb = LearnedPositionalEmbedding(max_len=12, d_model=4)
    assert emb.weight.shape == (12, 4) and emb.weight.requires_grad
    x = randn(3, 5, 4)
    torch.testing.assert_close(emb(x), x + emb.weight[:5])
    torch.testing.assert_close(emb(x, offset=7), x + emb.weight[7:12])
    emb(x).sum().backward()
    assert (emb.weight.grad[:5] == 3).all() and (emb.weight.grad[5:] == 0).all()
    with pytest.raises(ValueError, match=r"need max_len >= 13, got max_len=12"):
        emb(randn(1, 13, 4))


# ---------------------------------------------------------------------------------------------
# Rotary
# ---------------------------------------------------------------------------------------------


def test_rotate_half_pairs_dim_i_with_i_plus_half() -> None:
    x = torch.arange(1.0, 7.0)
    assert torch.equal(rotate_half(x), torch.tensor([-4.0, -5.0, -6.0, 1.0, 2.0, 3.0]))


@pytest.mark.parametrize("base", [10000.0, 500000.0])
def test_rope_matches_transformers_llama(base: float) -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    config = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=32,
        num_hidden_layers=1,
        vocab_size=16,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": base},
    )
    hf_rope = LlamaRotaryEmbedding(config)
    b, h, t, d = 2, 4, 9, 16
    q, k = randn(b, h, t, d), randn(b, h, t, d, seed=1)
    position_ids = torch.stack([torch.arange(t), torch.arange(t) + 30])  # (B, T), 2nd offset
    cos, sin = hf_rope(q, position_ids)  # (B, T, D)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, cos, sin)

    ours = RotaryEmbedding(head_dim=d, base=base)
    torch.testing.assert_close(ours.inv_freq, hf_rope.inv_freq)
    our_cos, our_sin = ours.cos_sin(position_ids)
    torch.testing.assert_close(our_cos, cos)
    torch.testing.assert_close(our_sin, sin)
    torch.testing.assert_close(ours(q, position_ids), hf_q)
    torch.testing.assert_close(ours(k, position_ids), hf_k)
    # rotate(offset=...) equals explicit positions
    torch.testing.assert_close(ours.rotate(q[1:], offset=30), hf_q[1:])
    torch.testing.assert_close(ours(q[:1]), hf_q[:1])


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],  # a loaded CI machine is not a bug
)
@given(
    m=st.integers(0, 200), n=st.integers(0, 200), shift=st.integers(-200, 200),
    half=st.integers(1, 8), seed=st.integers(0, 2**31 - 1),
)  # fmt: skip
def test_rope_score_depends_only_on_relative_position(m, n, shift, half, seed) -> None:
    """R(m)q . R(n)k == R(m+s)q . R(n+s)k, and rotations keep the norm."""
    if min(m, n) + shift < 0:
        shift = -min(m, n)
    d = 2 * half
    rope = RotaryEmbedding(d)
    q, k = (
        randn(1, d, seed=seed, dtype=torch.float64),
        randn(1, d, seed=seed + 1, dtype=torch.float64),
    )

    def at(x, pos):
        return rope(x, torch.tensor([pos]))

    s1 = (at(q, m) * at(k, n)).sum()
    s2 = (at(q, m + shift) * at(k, n + shift)).sum()
    assert s1.item() == pytest.approx(s2.item(), abs=1e-9)
    assert at(q, m).norm().item() == pytest.approx(q.norm().item(), rel=1e-12)


def test_rope_position_zero_is_identity_and_apply_rotary() -> None:
    rope = RotaryEmbedding(8)
    x = randn(3, 1, 8)
    torch.testing.assert_close(rope(x), x)
    cos, sin = rope.cos_sin(torch.arange(5))
    y = randn(5, 8)
    torch.testing.assert_close(apply_rotary(y, cos, sin), rope(y))
    assert rope(y.bfloat16()).dtype == torch.bfloat16


def test_rope_bad_input() -> None:
    with pytest.raises(ValueError, match=r"head_dim must be divisible by 2, got head_dim=7"):
        RotaryEmbedding(7)
    rope = RotaryEmbedding(8)
    with pytest.raises(
        ValueError, match=r"x must have shape \(\.\.\., T, head_dim=8\), got \(2, 3, 6\)"
    ):
        rope(randn(2, 3, 6))
    with pytest.raises(
        ValueError, match=r"positions must have shape \(T,\) or \(B, T\), T = 3, got \(4,\)"
    ):
        rope(randn(2, 3, 8), torch.arange(4))


# ---------------------------------------------------------------------------------------------
# ALiBi
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_heads", [1, 2, 4, 6, 8, 12, 16, 20, 32])
def test_alibi_slopes_equal_bloom(num_heads: int) -> None:
    """transformers' BLOOM carries the authors' slopes, non-power-of-2 head counts included."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    from course_utils.positional import alibi_slopes

    ref = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), num_heads, torch.float32)
    torch.testing.assert_close(alibi_slopes(num_heads), ref.view(num_heads, 2)[:, 1])


def test_alibi_slopes_by_the_paper() -> None:
    from course_utils.positional import alibi_slopes

    assert alibi_slopes(8).tolist() == [2.0**-i for i in range(1, 9)]  # 2^(-8h/n), n = 8
    torch.testing.assert_close(alibi_slopes(16)[:2], torch.tensor([2**-0.5, 2**-1.0]))


def test_alibi_bias_is_minus_slope_times_distance() -> None:
    from course_utils.positional import alibi_bias, alibi_slopes

    bias = alibi_bias(4, 3, 5, offset=2)  # 3 queries at positions 2, 3, 4 against keys 0..4
    i = torch.arange(2, 5)[:, None]
    j = torch.arange(5)
    ref = -alibi_slopes(4)[:, None, None] * (i - j).abs()
    torch.testing.assert_close(bias, ref)
    # with the causal mask the softmax sees exactly Press et al.'s m·(j - i): equal up to a
    # per-row constant, which the softmax ignores, to BLOOM's m·j
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    bloom = build_alibi_tensor(torch.ones(1, 5, dtype=torch.long), 4, torch.float32).view(4, 1, 5)
    keep = torch.ones(3, 5, dtype=torch.bool).tril(diagonal=2)
    ours = bias.masked_fill(~keep, float("-inf")).softmax(-1)
    theirs = bloom.expand(4, 3, 5).masked_fill(~keep, float("-inf")).softmax(-1)
    torch.testing.assert_close(ours, theirs)


def test_alibi_bad_input() -> None:
    from course_utils.positional import alibi_bias, alibi_slopes

    with pytest.raises(ValueError, match=r"num_heads must be a positive int, got 0"):
        alibi_slopes(0)
    with pytest.raises(ValueError, match=r"lq must be a non-negative int, got -1"):
        alibi_bias(2, -1)
    with pytest.raises(ValueError, match=r"offset must be a non-negative int, got 1.5"):
        alibi_bias(2, 3, offset=1.5)
