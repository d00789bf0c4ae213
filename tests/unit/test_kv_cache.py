"""course_utils.kv_cache: the cache interface, the contiguous cache, and other caches through the
same cached attention path (a concatenating cache and a rolling window built on the interface)."""

from __future__ import annotations

import pytest
import torch
from conftest import randn

from course_utils.attention import GroupedQueryAttention, MultiHeadAttention
from course_utils.kv_cache import KVCache, KVCacheBase


def test_update_appends_and_returns_everything_so_far():
    cache = KVCache(num_layers=2, batch=2, num_heads=3, head_dim=4, max_len=6)
    k1, v1 = randn(2, 3, 4, 4), randn(2, 3, 4, 4, seed=1)
    k2, v2 = randn(2, 3, 1, 4, seed=2), randn(2, 3, 1, 4, seed=3)
    cache.update(0, k1, v1)
    k, v = cache.update(0, k2, v2)
    assert torch.equal(k, torch.cat([k1, k2], 2)) and torch.equal(v, torch.cat([v1, v2], 2))
    assert (cache.length(0), cache.length(1)) == (5, 0)
    assert k.data_ptr() == cache.keys[0].data_ptr()  # a view of the buffer, not a copy
    cache.reset()
    assert cache.length(0) == 0 and cache.update(0, k2, v2)[0].shape == (2, 3, 1, 4)
    assert cache.nbytes() == 2 * 2 * (2 * 3 * 6 * 4) * 4


def test_old_import_path_is_the_same_class():
    from course_utils.efficient import KVCache as Old

    assert Old is KVCache


BAD_UPDATES = [
    # (layer, k_new, v_new, exception, message)
    (-1, randn(1, 2, 1, 4), randn(1, 2, 1, 4), ValueError, r"layer must be an int in \[0, 1\], got -1"),
    (2, randn(1, 2, 1, 4), randn(1, 2, 1, 4), ValueError, r"layer must be an int in \[0, 1\], got 2"),
    (1.0, randn(1, 2, 1, 4), randn(1, 2, 1, 4), TypeError, r"layer must be an int, got float 1.0"),
    (0, randn(1, 2, 1, 4, dtype=torch.float64), randn(1, 2, 1, 4), TypeError,
     r"same dtype, got k_new torch.float64, cache torch.float32"),
    (0, randn(1, 2, 1, 4), randn(1, 2, 1, 4).half(), TypeError,
     r"same dtype, got v_new torch.float16, cache torch.float32"),
    (0, randn(1, 3, 1, 4), randn(1, 3, 1, 4), ValueError,
     r"k_new must have shape \(B, Hkv, T, D\) = \(1, 2, 'T', 4\) \(the cache holds B=1 "
     r"sequences of Hkv=2 heads of D=4 dims\), got \(1, 3, 1, 4\)"),
    (0, randn(1, 2, 4), randn(1, 2, 4), ValueError, r"k_new must have 4 dims"),
    (0, randn(1, 2, 1, 4), randn(1, 2, 2, 4), ValueError, r"the same number of tokens"),
    (0, torch.ones(1, 2, 1, 4, dtype=torch.long), randn(1, 2, 1, 4), TypeError,
     r"k_new must be a floating-point tensor"),
    (0, torch.empty(1, 2, 1, 4, device="meta"), torch.empty(1, 2, 1, 4, device="meta"), ValueError,
     r"same device, got k_new on meta, cache on cpu"),
    (0, [[1.0]], randn(1, 2, 1, 4), TypeError, r"k_new must be a torch.Tensor, got list"),
]


@pytest.mark.parametrize("layer,k_new,v_new,exc,msg", BAD_UPDATES)
def test_update_rejects_bad_input_and_writes_nothing(layer, k_new, v_new, exc, msg):
    cache = KVCache(num_layers=2, batch=1, num_heads=2, head_dim=4, max_len=3)
    before = cache.keys[0].clone()
    with pytest.raises(exc, match=msg):
        cache.update(layer, k_new, v_new)
    assert cache.length(0) == 0
    torch.testing.assert_close(cache.keys[0], before, rtol=0, atol=0, equal_nan=True)


def test_full_cache_and_bad_constructor():
    cache = KVCache(1, batch=1, num_heads=1, head_dim=2, max_len=2)
    cache.update(0, randn(1, 1, 2, 2), randn(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"KV cache full: 2 \+ 1 new positions > max_len=2"):
        cache.update(0, randn(1, 1, 1, 2), randn(1, 1, 1, 2))
    for bad in (0, -1, 2.0, None):
        with pytest.raises(ValueError, match=r"max_len must be a positive int"):
            KVCache(1, 1, 1, 2, max_len=bad)


def test_reorder_keeps_rows_for_beam_search():
    cache = KVCache(2, batch=3, num_heads=1, head_dim=2, max_len=4)
    k, v = randn(3, 1, 2, 2), randn(3, 1, 2, 2, seed=1)
    for layer in (0, 1):
        cache.update(layer, k, v)
    index = torch.tensor([2, 0, 0])
    cache.reorder(index)
    for layer in (0, 1):
        assert torch.equal(cache.keys[layer][:, :, :2], k[index])
        assert torch.equal(cache.values[layer][:, :, :2], v[index])
    with pytest.raises(ValueError, match=r"index must have shape \(3,\): a row each, got \(2,\)"):
        cache.reorder(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"index must hold row numbers in \[0, 3\), got values "
                                         r"from 0 to 3"):
        cache.reorder(torch.tensor([0, 1, 3]))
    with pytest.raises(TypeError, match=r"index must be an integer tensor"):
        cache.reorder(torch.tensor([0.0, 1.0, 2.0]))


# ---------------------------------------------------------------------------------------------
# The interface is enough for other caches: the attention code needs nothing else
# ---------------------------------------------------------------------------------------------


class ConcatCache(KVCacheBase):
    """The simplest possible cache: torch.cat at every step (what KVCache avoids)."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.reset()

    def reset(self) -> None:
        self.k = [None] * self.num_layers
        self.v = [None] * self.num_layers

    def length(self, layer: int = 0) -> int:
        return 0 if self.k[layer] is None else self.k[layer].size(2)

    def update(self, layer, k_new, v_new):
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k_new, v_new
        else:
            self.check_update(layer, k_new, v_new, self.k[layer])
            self.k[layer] = torch.cat([self.k[layer], k_new], 2)
            self.v[layer] = torch.cat([self.v[layer], v_new], 2)
        return self.k[layer], self.v[layer]


class RollingCache(ConcatCache):
    """Keeps the last ``window`` keys only; ``length`` still counts every token written."""

    def __init__(self, num_layers: int, window: int) -> None:
        self.window, self.seen = window, [0] * num_layers
        super().__init__(num_layers)

    def length(self, layer: int = 0) -> int:
        return self.seen[layer]

    def update(self, layer, k_new, v_new):
        self.seen[layer] += k_new.size(2)
        k, v = super().update(layer, k_new, v_new)
        self.k[layer], self.v[layer] = k[:, :, -self.window :], v[:, :, -self.window :]
        return self.k[layer], self.v[layer]


def test_cache_interface_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        KVCacheBase()
    with pytest.raises(NotImplementedError, match="ConcatCache does not support reorder"):
        ConcatCache(1).reorder(torch.tensor([0]))


@pytest.mark.parametrize("cls", ["mha", "gqa"])
def test_another_cache_gives_the_same_outputs(cls):
    torch.manual_seed(0)
    attn = (MultiHeadAttention(16, 4) if cls == "mha" else GroupedQueryAttention(16, 4, 2)).eval()
    x = randn(2, 7, 16)
    full = attn(x, is_causal=True)
    full = full[0] if cls == "mha" else full
    cache = ConcatCache(1)
    steps = [attn(x[:, :3], is_causal=True, cache=cache)]
    steps += [attn(x[:, t : t + 1], is_causal=True, cache=cache) for t in range(3, 7)]
    out = torch.cat([s[0] if cls == "mha" else s for s in steps], 1)
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)


def test_rolling_cache_equals_sliding_window_attention():
    """A cache that returns fewer keys than it has seen: the causal mask comes from the keys
    returned, RoPE positions from ``length`` — decoding one token at a time equals full
    attention under a sliding-window mask."""
    from course_utils.positional import RotaryEmbedding

    torch.manual_seed(0)
    window, t = 3, 8
    attn = GroupedQueryAttention(16, 4, 2, rope=RotaryEmbedding(4)).eval()
    x = randn(1, t, 16)
    i, j = torch.arange(t)[:, None], torch.arange(t)
    band = (j <= i) & (j > i - window)  # query i sees keys i-window+1 .. i
    full = attn(x, attn_mask=band)
    cache = RollingCache(1, window)
    steps = [attn(x[:, i : i + 1], cache=cache) for i in range(t)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.k[0].size(2) == window and cache.length(0) == t
    assert band.sum(1).tolist() == [1, 2, 3, 3, 3, 3, 3, 3]
