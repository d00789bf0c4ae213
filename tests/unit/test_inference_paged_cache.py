"""The paged KV cache equals the contiguous KVCache over a random schedule of arrivals,
ragged prompts, decoding steps and completions; its waste is only the last block's tail."""

from __future__ import annotations

import random

import pytest
import torch

from course_utils.attention import scaled_dot_product_attention
from course_utils.inference.paged_cache import PagedKVCache, contiguous_waste_fraction
from course_utils.kv_cache import KVCache

LAYERS, HEADS, D = 2, 3, 8


def attend(q, k, v, pad=None):
    mask = None if pad is None else (~pad)[:, None, None, :]  # (B, 1, 1, L), True = may attend
    return scaled_dot_product_attention(q, k, v, attn_mask=mask)


def run_schedule(seed, block_size, num_blocks=64, steps=60):
    """A toy server: sequences arrive with ragged prompts (prefilled one at a time), the running
    ones decode one token per step as a batch, and each finishes after its own number of tokens.
    Every attention output through the paged cache must equal the one through a contiguous
    KVCache of that sequence alone."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    paged = PagedKVCache(LAYERS, HEADS, D, num_blocks=num_blocks, block_size=block_size)
    contiguous: dict[int, KVCache] = {}
    remaining: dict[int, int] = {}
    next_id, checked, peak_blocks = 0, 0, 0

    def rand(b, t):
        return torch.randn(b, HEADS, t, D, generator=gen)

    for _ in range(steps):
        if rng.random() < 0.35 or not remaining:  # arrivals
            for _ in range(rng.randint(1, 3)):
                sid, prompt = next_id, rng.randint(1, 3 * block_size)
                next_id += 1
                paged.add(sid)
                contiguous[sid] = KVCache(LAYERS, 1, HEADS, D, max_len=prompt + 40)
                remaining[sid] = rng.randint(1, 30)
                paged.set_batch([sid])
                for layer in range(LAYERS):
                    q, k, v = rand(1, prompt), rand(1, prompt), rand(1, prompt)
                    mine = attend(q, *paged.update(layer, k, v))
                    ref = attend(q, *contiguous[sid].update(layer, k, v))
                    assert torch.allclose(mine, ref, atol=1e-6)
                    checked += 1
        batch = sorted(remaining)
        rng.shuffle(batch)  # any row order
        paged.set_batch(batch)
        for layer in range(LAYERS):
            q, k, v = rand(len(batch), 1), rand(len(batch), 1), rand(len(batch), 1)
            mine = attend(q, *paged.update(layer, k, v), pad=paged.key_padding_mask(layer))
            for row, sid in enumerate(batch):
                ref = attend(
                    q[row : row + 1],
                    *contiguous[sid].update(layer, k[row : row + 1], v[row : row + 1]),
                )
                assert torch.allclose(mine[row : row + 1], ref, atol=1e-6)
                checked += 1
        peak_blocks = max(peak_blocks, num_blocks - paged.free_blocks())
        for sid in batch:  # completions: the blocks go back to the pool
            remaining[sid] -= 1
            if remaining[sid] == 0:
                n = contiguous[sid].length(0)
                for layer in range(LAYERS):  # the stored keys and values are the same numbers
                    paged.set_batch([sid])
                    pk, pv = paged.gather(layer)
                    assert torch.equal(pk, contiguous[sid].keys[layer][:, :, :n])
                    assert torch.equal(pv, contiguous[sid].values[layer][:, :, :n])
                stats = paged.memory_stats()
                paged.remove(sid)
                del remaining[sid], contiguous[sid]
                assert stats["held_slots"] - stats["used_slots"] < block_size * stats["sequences"]
    return checked, next_id, peak_blocks


@pytest.mark.parametrize("seed,block_size", [(0, 4), (1, 16), (2, 1), (3, 7)])
def test_paged_equals_contiguous_over_a_random_schedule(seed, block_size):
    checked, sequences, peak = run_schedule(seed, block_size, num_blocks=4096 // block_size)
    assert checked > 100 and sequences > 10 and peak > 0


def test_blocks_are_reused_after_completion():
    cache = PagedKVCache(1, 1, 2, num_blocks=3, block_size=2)
    cache.add("a")
    cache.set_batch(["a"])
    cache.update(0, torch.ones(1, 1, 6, 2), torch.ones(1, 1, 6, 2))  # all three blocks
    assert cache.free_blocks() == 0
    cache.add("b")
    cache.set_batch(["b"])
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        cache.update(0, torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2))
    cache.remove("a")
    k, _ = cache.update(0, torch.full((1, 1, 1, 2), 5.0), torch.ones(1, 1, 1, 2))
    assert k.tolist() == [[[[5.0, 5.0]]]] and cache.free_blocks() == 2


def test_crop_rolls_back_and_frees_blocks():
    cache = PagedKVCache(2, 1, 1, num_blocks=6, block_size=2)
    cache.add("s")
    cache.set_batch(["s"])
    for layer in range(2):
        cache.update(layer, torch.arange(7.0).view(1, 1, 7, 1), torch.zeros(1, 1, 7, 1))
    cache.crop("s", 3)
    assert cache.lengths(1) == [3] and cache.block_table("s") == [0, 1] and cache.free_blocks() == 4
    k, _ = cache.update(0, torch.full((1, 1, 1, 1), 9.0), torch.zeros(1, 1, 1, 1))
    assert k.flatten().tolist() == [0.0, 1.0, 2.0, 9.0]


def test_waste_is_the_tail_of_the_last_block():
    cache = PagedKVCache(1, 1, 1, num_blocks=100, block_size=16)
    lengths = [1, 16, 17, 40]
    for i, n in enumerate(lengths):
        cache.add(i)
        cache.set_batch([i])
        cache.update(0, torch.zeros(1, 1, n, 1), torch.zeros(1, 1, n, 1))
    stats = cache.memory_stats()
    assert stats["held_slots"] == 16 * (1 + 1 + 2 + 3) and stats["used_slots"] == sum(lengths)
    assert stats["waste_fraction"] == pytest.approx(1 - 74 / 112)
    assert contiguous_waste_fraction(lengths, 64) == pytest.approx(1 - 74 / 256)


def test_padding_mask_marks_the_shorter_rows():
    cache = PagedKVCache(1, 1, 1, num_blocks=10, block_size=2)
    for sid, n in (("x", 3), ("y", 1)):
        cache.add(sid)
        cache.set_batch([sid])
        cache.update(0, torch.zeros(1, 1, n, 1), torch.zeros(1, 1, n, 1))
    cache.set_batch(["y", "x"])
    cache.update(0, torch.zeros(2, 1, 1, 1), torch.zeros(2, 1, 1, 1))
    assert cache.key_padding_mask().tolist() == [[False, False, True, True], [False] * 4]
    with pytest.raises(ValueError, match="different lengths"):
        cache.length(0)


def test_bad_inputs_are_named():
    cache = PagedKVCache(1, 2, 4, num_blocks=4)
    with pytest.raises(RuntimeError, match="set_batch"):
        cache.update(0, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    cache.add(1)
    cache.add(2)
    with pytest.raises(ValueError, match="already in the cache"):
        cache.add(1)
    with pytest.raises(KeyError, match="seq_id 3: no such sequence"):
        cache.set_batch([3])
    with pytest.raises(ValueError, match="must not repeat"):
        cache.set_batch([1, 1])
    cache.set_batch([1])
    cache.update(0, torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))
    cache.set_batch([1, 2])
    with pytest.raises(ValueError, match="rows of one length"):
        cache.update(0, torch.zeros(2, 2, 2, 4), torch.zeros(2, 2, 2, 4))
    with pytest.raises(ValueError, match=r"k_new must have shape"):
        cache.update(0, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    with pytest.raises(TypeError, match="same dtype"):
        cache.update(0, torch.zeros(2, 2, 1, 4, dtype=torch.float64), torch.zeros(2, 2, 1, 4))
    with pytest.raises(ValueError, match="lengths must be a non-empty list"):
        contiguous_waste_fraction([10, 200], max_len=100)
    with pytest.raises(ValueError, match="device must be a device such as"):
        PagedKVCache(1, 2, 4, num_blocks=4, device="gpu")
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype"):
        PagedKVCache(1, 2, 4, num_blocks=4, dtype=torch.int64)
