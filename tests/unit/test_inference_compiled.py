"""The compiled tiled attention equals PyTorch's SDPA (eager tile updates here; the compiled
kernel in the slow test)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_utils.inference.compiled import (
    compile_seconds,
    compiled_tiled_attention,
    inductor_cache_hits,
    tile_update,
)


@pytest.mark.parametrize(
    "causal,lq,lk,bq,bk",
    [
        (False, 100, 100, 32, 24),
        (True, 100, 100, 32, 24),
        (False, 64, 64, 64, 64),
        (True, 64, 64, 64, 64),
        (False, 30, 70, 16, 50),
        (True, 37, 37, 8, 5),
    ],
)
def test_eager_tiles_equal_sdpa(causal, lq, lk, bq, bk):
    g = torch.Generator().manual_seed(lq + lk)
    q = torch.randn(2, 3, lq, 16, generator=g)
    k, v = torch.randn(2, 3, lk, 16, generator=g), torch.randn(2, 3, lk, 8, generator=g)
    out = compiled_tiled_attention(q, k, v, causal=causal, block_q=bq, block_k=bk, compiled=False)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert (out - ref).abs().max() <= 1e-5


def test_half_precision_accumulates_in_float32():
    q, k, v = torch.randn(3, 1, 2, 64, 16).unbind(0)
    out = compiled_tiled_attention(
        q.bfloat16(), k.bfloat16(), v.bfloat16(), block_q=16, block_k=16, compiled=False
    )
    ref = F.scaled_dot_product_attention(q, k, v)
    assert out.dtype == torch.bfloat16 and (out.float() - ref).abs().max() < 2e-2


@pytest.mark.slow
def test_compiled_tiles_equal_sdpa():
    q, k, v = torch.randn(3, 1, 4, 256, 32).unbind(0)
    before = inductor_cache_hits()
    seconds = compile_seconds(compiled_tiled_attention, q, k, v, block_q=64, block_k=128)
    after = inductor_cache_hits()
    assert seconds > 0 and after["hits"] + after["misses"] > before["hits"] + before["misses"]
    for causal in (False, True):
        with torch.no_grad():
            out = compiled_tiled_attention(q, k, v, causal=causal, block_q=64, block_k=128)
        assert (out - F.scaled_dot_product_attention(q, k, v, is_causal=causal)).abs().max() <= 1e-5


def test_tile_update_is_one_online_softmax_step():
    """Two tiles through tile_update give the softmax of the whole row."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(1, 3, 10, generator=g)  # scores in log2 units, as tile_update expects
    v = torch.randn(1, 10, 4, generator=g)
    eye = torch.eye(3)[None]  # q = identity rows so that q @ kᵀ = s
    m, total, acc = torch.full((1, 3, 1), float("-inf")), torch.zeros(1, 3, 1), torch.zeros(1, 3, 4)
    for j0, j1 in ((0, 6), (6, 10)):
        m, total, acc = tile_update(eye, s[:, :, j0:j1], v[:, j0:j1], m, total, acc)
    ref = torch.softmax(s * torch.log(torch.tensor(2.0)), -1) @ v
    assert torch.allclose(acc / total, ref, atol=1e-6)


def test_bad_inputs():
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="block_q must be a positive int"):
        compiled_tiled_attention(q, q, q, block_q=0, compiled=False)
    with pytest.raises(TypeError, match="causal must be True or False"):
        compiled_tiled_attention(q, q, q, causal="yes", compiled=False)
    m, total, acc = torch.full((1, 3, 1), -torch.inf), torch.zeros(1, 3, 1), torch.zeros(1, 3, 4)
    q_blk, k_t, v = torch.randn(1, 3, 2), torch.randn(1, 2, 5), torch.randn(1, 5, 4)
    with pytest.raises(ValueError, match=r"l must have shape \(BH, bq, 1\) = \(1, 3, 1\)"):
        tile_update(q_blk, k_t, v, m, torch.zeros(1, 3, 2), acc)  # broadcast silently before
    with pytest.raises(ValueError, match=r"v_blk must have shape \(BH, bk, Dv\) = \(1, 5, 'Dv'\)"):
        tile_update(q_blk, k_t, v[:, :4], m, total, acc)
    with pytest.raises(TypeError, match="future must be a bool tensor"):
        tile_update(q_blk, k_t, v, m, total, acc, torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"k must have shape \(\.\.\., Lk, D\) with the leading"):
        compiled_tiled_attention(q, q[:, :1], q[:, :1], compiled=False)
