"""FlexAttention variants equal the course's attention with the equivalent explicit mask."""

from __future__ import annotations

import pytest
import torch

from course_utils.attention import causal_mask, scaled_dot_product_attention
from course_utils.inference.flex import (
    alibi_score_mod,
    block_mask,
    block_stats,
    causal_mod,
    document_mask,
    document_mod,
    flex,
    prefix_lm_mask,
    prefix_lm_mod,
    sliding_window_mod,
    tile_map,
)
from course_utils.inference.sliding_window import window_mask
from course_utils.positional import alibi_bias, alibi_slopes

B, H, N, D = 2, 4, 200, 16  # N not a multiple of the 128-token blocks: ragged last tile


def qkv(seed=0, n=N, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, n, D, generator=g, dtype=dtype) for _ in range(3))


def doc_ids(n=N, seed=0):
    """(B, n) document numbers: rows of ragged documents packed end to end."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(B):
        cuts = torch.randint(1, n, (4,), generator=g).unique()
        rows.append(torch.bucketize(torch.arange(n), cuts, right=True))
    return torch.stack(rows)


def variants():
    """(name, score_mod, block mask, explicit reference mask) for every case of the notebook."""
    docs, prefix = doc_ids(), torch.tensor([37, 150])
    slopes = alibi_slopes(H)
    return [
        ("causal", None, block_mask(causal_mod, N, N), causal_mask(N)),
        ("sliding window", None, block_mask(sliding_window_mod(48), N, N), window_mask(N, N, 48)),
        (
            "alibi causal",
            alibi_score_mod(slopes),
            block_mask(causal_mod, N, N),
            alibi_bias(H, N).masked_fill(~causal_mask(N), float("-inf")),
        ),
        ("alibi bidirectional", alibi_score_mod(slopes), None, alibi_bias(H, N)),
        ("documents", None, block_mask(document_mod(docs), N, N, batch=B), document_mask(docs)),
        (
            "documents bidirectional",
            None,
            block_mask(document_mod(docs, causal=False), N, N, batch=B),
            document_mask(docs, causal=False),
        ),
        (
            "prefix-LM",
            None,
            block_mask(prefix_lm_mod(prefix), N, N, batch=B),
            prefix_lm_mask(N, prefix),
        ),
        ("prefix-LM int", None, block_mask(prefix_lm_mod(60), N, N), prefix_lm_mask(N, 60)),
    ]


@pytest.mark.parametrize("case", range(len(variants())), ids=[v[0] for v in variants()])
def test_flex_equals_reference_with_explicit_mask(case):
    name, score_mod, bmask, mask = variants()[case]
    q, k, v = qkv(case)
    out = flex(q, k, v, score_mod=score_mod, block_mask=bmask, compiled=False)
    ref = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert (out - ref).abs().max() <= 1e-5, name


@pytest.mark.slow
def test_compiled_flex_equals_reference_for_every_variant():
    """The fused kernel of torch.compile (C++ on a CPU), not only PyTorch's eager fallback."""
    for case, (name, score_mod, bmask, mask) in enumerate(variants()):
        q, k, v = qkv(case)
        out = flex(q, k, v, score_mod=score_mod, block_mask=bmask, compiled=True)
        ref = scaled_dot_product_attention(q, k, v, attn_mask=mask)
        assert (out - ref).abs().max() <= 1e-5, name


def test_explicit_masks_match_their_definitions():
    n, w = 9, 3
    i, j = torch.arange(n)[:, None], torch.arange(n)
    assert torch.equal(window_mask(n, n, w), (j <= i) & (i - j < w))
    assert torch.equal(prefix_lm_mask(n, 4), (j <= i) | (j < 4))
    docs = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2]])
    assert torch.equal(document_mask(docs)[0, 0], (docs[0, :, None] == docs[0]) & (j <= i))
    assert torch.equal(prefix_lm_mask(n, torch.tensor([2, 5]))[1, 0], prefix_lm_mask(n, 5))


def test_mods_agree_with_masks_elementwise():
    """Each mask_mod evaluated on the whole index grid is its explicit mask."""
    n = 23
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    docs = doc_ids(n)
    assert torch.equal(sliding_window_mod(5)(0, 0, i, j), window_mask(n, n, 5))
    assert torch.equal(prefix_lm_mod(7)(0, 0, i, j), prefix_lm_mask(n, 7))
    for b in range(B):
        assert torch.equal(document_mod(docs)(torch.tensor(b), 0, i, j), document_mask(docs)[b, 0])


def test_fully_masked_query_gives_zeros_not_nan():
    q, k, v = qkv(n=20)
    bm = block_mask(lambda b, h, qi, ki: (qi >= 5) & (ki <= qi), 20, 20, block_size=8)
    out = flex(q, k, v, block_mask=bm, compiled=False)
    assert torch.isfinite(out).all() and out[:, :, :5].abs().max() == 0


def test_sliding_window_skips_the_blocks_it_should():
    """W = 256 at N = 4096 with 128-token tiles: each query tile needs its own and the two before
    (32 + 31 + 30 of 32 · 32 tiles are computed); the count equals BlockMask.sparsity and a
    count of the tiles of the dense mask that hold any allowed pair."""
    n, w, bs = 4096, 256, 128
    bm = block_mask(sliding_window_mod(w), n, n)
    stats = block_stats(bm)
    assert stats["tiles"] == 32 * 32 and stats["partial"] + stats["full"] == 32 + 31 + 30
    assert stats["skipped_fraction"] == pytest.approx(bm.sparsity() / 100, abs=1e-9)
    dense = window_mask(n, n, w).view(n // bs, bs, n // bs, bs).any(3).any(1)  # (32, 32) touched
    assert stats["partial"] + stats["full"] == int(dense.sum())
    full = window_mask(n, n, w).view(n // bs, bs, n // bs, bs).all(3).all(1)
    assert stats["full"] == int(full.sum())
    tiles = tile_map(bm)  # the same picture, tile by tile
    assert torch.equal(tiles == 2, full) and torch.equal(tiles > 0, dense)


def test_block_stats_counts_batch_rows_and_heads():
    docs = doc_ids(256)
    stats = block_stats(block_mask(document_mod(docs), 256, 256, batch=B, heads=3))
    assert stats["tiles"] == B * 3 * 2 * 2


def test_float64_and_a_custom_scale():
    q, k, v = qkv(dtype=torch.float64)
    out = flex(q, k, v, block_mask=block_mask(causal_mod, N, N), scale=0.3, compiled=False)
    ref = scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(N), scale=0.3)
    assert (out - ref).abs().max() <= 1e-12


def test_bad_inputs_name_the_argument():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="window must be a positive int"):
        sliding_window_mod(0)
    with pytest.raises(TypeError, match="doc_ids must be an integer tensor"):
        document_mod(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="prefix_len must be a non-negative int"):
        prefix_lm_mod(-1)
    with pytest.raises(ValueError, match="block_mask was built for"):
        flex(q, k, v, block_mask=block_mask(causal_mod, 64, 64), compiled=False)
    with pytest.raises(TypeError, match="block_mask must be a BlockMask"):
        flex(q, k, v, block_mask=causal_mask(N), compiled=False)
    with pytest.raises(TypeError, match="mask_mod must be a function"):
        block_mask("causal", N, N)
    with pytest.raises(ValueError, match="q must have 4 dims"):
        flex(q[0], k[0], v[0], compiled=False)
