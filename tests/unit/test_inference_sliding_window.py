"""The rolling KV cache: decoding under a window equals full attention with the window mask,
in O(W) memory."""

from __future__ import annotations

import pytest
import torch

from course_utils.attention import GroupedQueryAttention, MultiHeadAttention
from course_utils.inference.sliding_window import RollingKVCache, window_mask
from course_utils.kv_cache import KVCache
from course_utils.positional import RotaryEmbedding

E, HEADS, HD = 32, 4, 8


def layers(n_layers=2, seed=0):
    torch.manual_seed(seed)
    return [MultiHeadAttention(E, HEADS, rope=RotaryEmbedding(HD)).eval() for _ in range(n_layers)]


def full_forward(mods, x, window):
    mask = window_mask(x.size(1), x.size(1), window)
    for m in mods:
        x = x + m(x, attn_mask=mask)[0]
    return x


def decode(mods, x, cache, chunks):
    """Feed x in chunks of the given sizes through every layer with the cache."""
    outs, t = [], 0
    for size in chunks:
        h = x[:, t : t + size]
        for i, m in enumerate(mods):
            mask = cache.chunk_mask(i, size) if size > 1 else None
            h = h + m(h, cache=cache, layer=i, attn_mask=mask)[0]
        outs.append(h)
        t += size
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize(
    "window,chunks",
    [
        (5, [1] * 23),  # token by token
        (6, [9] + [1] * 14),  # a prompt longer than the window, then decoding
        (4, [3, 1, 1, 7, 2, 1, 1, 1, 6]),  # chunks of every size, some wider than the window
        (1, [1] * 6 + [4]),  # a window of one token: each attends to itself alone
        (30, [10, 1, 1, 11]),  # the window never fills
    ],
)
def test_rolling_cache_equals_full_attention_under_the_window_mask(window, chunks):
    mods = layers()
    x = torch.randn(3, sum(chunks), E)
    cache = RollingKVCache(len(mods), batch=3, num_heads=HEADS, head_dim=HD, window=window)
    out = decode(mods, x, cache, chunks)
    assert torch.allclose(out, full_forward(mods, x, window), atol=1e-5)
    assert cache.length(0) == cache.length(1) == sum(chunks)


def test_memory_is_o_of_w_and_the_full_cache_grows():
    mods, w, n = layers(1), 8, 64
    x = torch.randn(1, n, E)
    rolling = RollingKVCache(1, 1, HEADS, HD, window=w)
    sizes = []
    for t in range(n):
        mods[0](x[:, t : t + 1], cache=rolling)
        sizes.append(rolling.nbytes())
    assert set(sizes) == {2 * HEADS * w * HD * 4}  # keys and values, W slots, float32
    full = KVCache(1, 1, HEADS, HD, max_len=n)
    assert full.nbytes() == sizes[0] * n // w


def test_grouped_query_attention_with_a_rolling_cache():
    torch.manual_seed(1)
    gqa = GroupedQueryAttention(E, HEADS, num_kv_heads=2, rope=RotaryEmbedding(HD)).eval()
    x = torch.randn(2, 17, E)
    ref = gqa(x, attn_mask=window_mask(17, 17, 5))
    cache = RollingKVCache(1, 2, num_heads=2, head_dim=HD, window=5)
    out = torch.cat([gqa(x[:, t : t + 1], cache=cache) for t in range(17)], dim=1)
    assert torch.allclose(out, ref, atol=1e-5)


def test_window_mask_bottom_right_and_brute_force():
    for lq, lk, w in [(1, 7, 3), (4, 9, 2), (6, 6, 6), (5, 12, 20)]:
        i = torch.arange(lk - lq, lk)[:, None]
        j = torch.arange(lk)
        assert torch.equal(window_mask(lq, lk, w), (j <= i) & (i - j < w))


def test_one_token_update_returns_a_view_of_the_buffer():
    cache = RollingKVCache(1, 1, 1, 2, window=3)
    for t in range(5):
        k, _ = cache.update(0, torch.full((1, 1, 1, 2), float(t)), torch.zeros(1, 1, 1, 2))
    assert k.data_ptr() == cache.keys[0].data_ptr()
    assert sorted(k[0, 0, :, 0].tolist()) == [2.0, 3.0, 4.0]  # the last three tokens, slot order


def test_reorder_and_reset():
    cache = RollingKVCache(1, 2, 1, 1, window=2)
    cache.update(0, torch.tensor([1.0, 2.0]).view(2, 1, 1, 1), torch.zeros(2, 1, 1, 1))
    cache.reorder(torch.tensor([1, 1]))
    assert cache.keys[0][:, 0, 0, 0].tolist() == [2.0, 2.0]
    cache.reset()
    assert cache.length(0) == 0


def test_bad_inputs_name_the_argument():
    cache = RollingKVCache(1, 1, 2, 4, window=3)
    with pytest.raises(ValueError, match="window must be a positive int"):
        RollingKVCache(1, 1, 2, 4, window=0)
    with pytest.raises(TypeError, match="same dtype"):
        cache.update(0, torch.zeros(1, 2, 1, 4, dtype=torch.float64), torch.zeros(1, 2, 1, 4))
    with pytest.raises(ValueError, match="layer must be"):
        cache.update(1, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    with pytest.raises(ValueError, match="k_new must have shape"):
        cache.update(0, torch.zeros(1, 3, 1, 4), torch.zeros(1, 3, 1, 4))
    with pytest.raises(ValueError, match="lq <= lk"):
        window_mask(5, 3, 2)
