"""Linear attention: the recurrent (RNN) and chunked forms equal the parallel form; the state's
memory does not grow; the layer trains."""

from __future__ import annotations

import pytest
import torch

from course_utils.inference.linear_attention import (
    LinearAttention,
    LinearAttentionState,
    feature_map,
    linear_attention,
    linear_attention_chunked,
    linear_attention_recurrent,
)


@pytest.mark.parametrize(
    "shape,chunk",
    [((2, 3, 37, 8, 5), 8), ((1, 1, 16, 4, 4), 16), ((2, 2, 50, 16, 16), 7), ((3, 1, 9, 2, 3), 64)],
)
def test_recurrent_and_chunked_equal_parallel(shape, chunk):
    b, h, n, d, dv = shape
    g = torch.Generator().manual_seed(n)
    q, k = torch.randn(b, h, n, d, generator=g), torch.randn(b, h, n, d, generator=g)
    v = torch.randn(b, h, n, dv, generator=g)
    par = linear_attention(q, k, v)
    assert (linear_attention_recurrent(q, k, v) - par).abs().max() <= 1e-5
    assert (linear_attention_chunked(q, k, v, chunk=chunk) - par).abs().max() <= 1e-5


def test_parallel_form_is_the_definition():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    out = linear_attention(q, k, v)
    for i in range(6):
        w = torch.stack([feature_map(q[i]) @ feature_map(k[j]) for j in range(i + 1)])
        assert torch.allclose(out[i], (w[:, None] * v[: i + 1]).sum(0) / (w.sum() + 1e-6))
    bidir = linear_attention(q, k, v, causal=False)  # φ(Q) (φ(K)ᵀ V) / φ(Q) Σ φ(k)
    fk = feature_map(k)
    ref = (feature_map(q) @ (fk.T @ v)) / (feature_map(q) @ fk.sum(0) + 1e-6)[:, None]
    assert torch.allclose(bidir, ref)


def test_state_memory_is_constant():
    state = LinearAttentionState.zeros((2, 4), 16, 16)
    sizes = set()
    for _ in range(50):
        state.step(torch.randn(2, 4, 16), torch.randn(2, 4, 16), torch.randn(2, 4, 16))
        sizes.add(state.nbytes())
    assert sizes == {2 * 4 * (16 * 16 + 16) * 4}


def test_layer_is_causal_and_learns():
    torch.manual_seed(0)
    layer = LinearAttention(16, 2, chunk=4)
    x = torch.randn(2, 11, 16)
    y = x.clone()
    y[:, 7:] += 1.0
    assert torch.allclose(layer(x)[:, :7], layer(y)[:, :7], atol=1e-6)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    target = torch.randn(2, 11, 16)
    first = None
    for _ in range(30):
        loss = (layer(x) - target).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first


def test_bad_inputs():
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        linear_attention_chunked(
            torch.randn(1, 4, 2), torch.randn(1, 4, 2), torch.randn(1, 4, 2), chunk=0
        )
    with pytest.raises(ValueError, match="same last dim"):
        linear_attention(torch.randn(1, 4, 2), torch.randn(1, 4, 3), torch.randn(1, 4, 2))
    with pytest.raises(ValueError, match="embed_dim must be divisible by num_heads"):
        LinearAttention(10, 3)


def test_causal_forms_need_one_key_per_query():
    """The causal forms pair query i with key i: the recurrent and chunked forms dropped keys past
    the last query silently (too few failed with an index error), the parallel one aligned the
    mask top-left; now all three name q and k."""
    q, k, v = torch.randn(1, 4, 2), torch.randn(1, 6, 2), torch.randn(1, 6, 3)
    for form in (linear_attention, linear_attention_recurrent, linear_attention_chunked):
        with pytest.raises(ValueError, match=r"q and k must have the same size along dim -2"):
            form(q, k, v)


def test_state_steps_are_checked_against_the_state():
    state = LinearAttentionState.zeros((2,), 4, 3)
    with pytest.raises(ValueError, match=r"v_t must broadcast to \(\.\.\., Dv\)"):
        state.step(torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(TypeError, match="same dtype, got q_t torch.float64"):
        state.step(torch.randn(2, 4).double(), torch.randn(2, 4), torch.randn(2, 3))
    with pytest.raises(ValueError, match="z must have shape"):
        LinearAttentionState(torch.zeros(2, 4, 3), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="s contains NaN"):
        LinearAttentionState(torch.full((2, 4, 3), float("nan")), torch.zeros(2, 4))


def test_recurrent_broadcasts_leading_dims_as_the_parallel_form():
    q, k, v = torch.randn(1, 5, 4), torch.randn(3, 5, 4), torch.randn(3, 5, 2)
    par = linear_attention(q, k, v)
    assert par.shape == (3, 5, 2)
    assert torch.allclose(linear_attention_recurrent(q, k, v), par, atol=1e-5)
