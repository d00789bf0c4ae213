"""Property tests of the cached and grouped paths, against references over random cases.

A silent wrong answer fails here, not only a crash: every case is compared with PyTorch
(``F.scaled_dot_product_attention``, with ``enable_gqa`` or repeated heads), with the same
module run on the whole sequence, with transformers' logits warpers, or with an exhaustive
search. Every test is derandomized, no example database, no deadline.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from course_utils.attention import (
    GroupedQueryAttention,
    MultiHeadAttention,
    causal_mask,
    grouped_query_attention,
    repeat_kv,
)
from course_utils.decoding import beam_search, filter_top_k, filter_top_p, greedy
from course_utils.efficient import tiled_attention
from course_utils.kv_cache import KVCache
from course_utils.positional import RotaryEmbedding, alibi_bias
from course_utils.transformer import TransformerDecoder, TransformerDecoderLayer

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _rand(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _chunks(draw, total: int) -> list[int]:
    """A random schedule of chunk sizes summing to ``total`` (a prompt, then steps)."""
    sizes = []
    while sum(sizes) < total:
        sizes.append(draw(st.integers(1, total - sum(sizes))))
    return sizes


@SETTINGS
@given(st.data())
def test_grouped_query_attention_equals_torch(data):
    b, hkv, g, lq, lk, d = (data.draw(st.integers(1, 3)) for _ in range(6))
    h, seed = hkv * g, data.draw(st.integers(0, 2**16))
    q, k, v = _rand(b, h, lq, d, seed=seed), _rand(b, hkv, lk, d, seed=seed + 1), \
        _rand(b, hkv, lk, d + 1, seed=seed + 2)
    mask_kind = data.draw(st.sampled_from(["none", "bool", "float", "alibi"]))
    mask = None
    if mask_kind == "bool":  # per head and query, with some rows left with one key at least
        mask = _rand(b, h, lq, lk, seed=seed + 3) > 0
        mask[..., 0] = True
    elif mask_kind == "float":
        mask = _rand(1, h, 1, lk, seed=seed + 3)
    elif mask_kind == "alibi":
        mask = alibi_bias(h, lq, lk)[None]
    pad = None
    if data.draw(st.booleans()):
        pad = torch.zeros(b, lk, dtype=torch.bool)
        pad[:, lk - data.draw(st.integers(0, lk - 1)):] = True  # never every key
    ours = grouped_query_attention(q, k, v, key_padding_mask=pad, attn_mask=mask)
    ref_mask = mask
    if pad is not None:
        keep = (~pad)[:, None, None, :]
        ref_mask = keep if mask is None else (mask & keep if mask.dtype == torch.bool
                                              else mask.masked_fill(~keep, -math.inf))
    ref = F.scaled_dot_product_attention(q, repeat_kv(k, g), repeat_kv(v, g), attn_mask=ref_mask)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    if ref_mask is None or ref_mask.dtype == torch.bool:  # PyTorch's own grouped path too
        torch.testing.assert_close(ours, F.scaled_dot_product_attention(
            q, k, v, attn_mask=ref_mask, enable_gqa=True), atol=1e-5, rtol=1e-5)


@SETTINGS
@given(st.data())
def test_tiled_attention_equals_torch(data):
    lead = tuple(data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    lq, lk, d = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40)), data.draw(
        st.integers(1, 16))
    causal = data.draw(st.booleans()) and lq <= lk
    seed = data.draw(st.integers(0, 2**16))
    q, k, v = _rand(*lead, lq, d, seed=seed), _rand(*lead, lk, d, seed=seed + 1), \
        _rand(*lead, lk, d, seed=seed + 2)
    bq, bk = data.draw(st.integers(1, 50)), data.draw(st.integers(1, 50))
    grad = data.draw(st.booleans())  # the autograd path and the in-place path
    for t in (q, k, v):
        t.requires_grad_(grad)
    ours = tiled_attention(q, k, v, causal=causal, block_q=bq, block_k=bk)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@SETTINGS
@given(st.data())
def test_cached_attention_equals_the_whole_sequence(data):
    """MHA and GQA (with RoPE, an explicit head_dim, SDPA or not) decoding with a KV cache in a
    random schedule of chunks give the rows of the same module run on the whole sequence."""
    t, b = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 2))
    kind = data.draw(st.sampled_from(["mha", "mha_sdpa", "gqa"]))
    use_rope = data.draw(st.booleans())
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    if kind == "gqa":
        hkv, head_dim = data.draw(st.sampled_from([1, 2, 4])), data.draw(st.sampled_from([2, 4, 6]))
        attn = GroupedQueryAttention(8, 4, hkv, head_dim=head_dim,
                                     rope=RotaryEmbedding(head_dim) if use_rope else None)
        heads = hkv
    else:
        head_dim, heads = 2, 4
        attn = MultiHeadAttention(8, 4, use_sdpa=kind == "mha_sdpa",
                                  rope=RotaryEmbedding(2) if use_rope else None)
    attn.eval()
    x = torch.randn(b, t, 8)
    full = attn(x, is_causal=True)
    full = full[0] if isinstance(full, tuple) else full
    cache, outs, start = KVCache(1, b, heads, head_dim, t), [], 0
    for n in _chunks(data.draw, t):
        out = attn(x[:, start : start + n], is_causal=True, cache=cache)
        outs.append(out[0] if isinstance(out, tuple) else out)
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length(0) == t


@SETTINGS
@given(st.data())
def test_decoder_step_equals_forward(data):
    t, s = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 5))
    norm_first = data.draw(st.booleans())
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    dec = TransformerDecoder(TransformerDecoderLayer(8, 2, 16, dropout=0.0, norm_first=norm_first),
                             2).eval()
    tgt, memory = torch.randn(2, t, 8), torch.randn(2, s, 8)
    pad = torch.zeros(2, s, dtype=torch.bool)
    pad[1, s - data.draw(st.integers(0, s - 1)):] = True
    full = dec(tgt, memory, tgt_is_causal=True, memory_key_padding_mask=pad)
    cache, memory_kv, outs, start = dec.new_cache(2, t), dec.project_memory(memory), [], 0
    for n in _chunks(data.draw, t):
        outs.append(dec.step(tgt[:, start : start + n], cache, memory_kv, pad))
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


@SETTINGS
@given(st.data())
def test_kv_cache_equals_concatenation(data):
    b, h, d, max_len = 2, 2, 3, 12
    cache = KVCache(2, b, h, d, max_len)
    ref = {0: [], 1: []}
    for i in range(data.draw(st.integers(1, 6))):
        layer, n = data.draw(st.integers(0, 1)), data.draw(st.integers(1, 3))
        if cache.length(layer) + n > max_len:
            break
        k, v = _rand(b, h, n, d, seed=i), _rand(b, h, n, d, seed=100 + i)
        got_k, got_v = cache.update(layer, k, v)
        ref[layer].append((k, v))
        torch.testing.assert_close(got_k, torch.cat([p[0] for p in ref[layer]], 2), rtol=0, atol=0)
        torch.testing.assert_close(got_v, torch.cat([p[1] for p in ref[layer]], 2), rtol=0, atol=0)


def test_causal_mask_offset_equals_torch_on_the_bottom_rows():
    for n, lq in itertools.product(range(5), range(1, 5)):
        q, k, v = _rand(1, lq, 4, seed=n), _rand(1, n + lq, 4, seed=9), _rand(1, n + lq, 2, seed=8)
        full_q = torch.cat([_rand(1, n, 4, seed=7), q], 1)  # queries at positions 0..n+lq-1
        ref = F.scaled_dot_product_attention(full_q, k, v, is_causal=True)[:, n:]
        ours = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(lq, n + lq, offset=n))
        torch.testing.assert_close(ours, ref)


# ---------------------------------------------------------------------------------------------
# Decoding on random tables
# ---------------------------------------------------------------------------------------------


def _bigram(table):
    return lambda tokens, state: (table[tokens[:, -1]], state)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 2**16), st.sampled_from([0.0, 0.6, 1.0]))
def test_beam_search_with_a_full_beam_is_exhaustive_search(seed, alpha):
    v, n, eos = 3, 3, 2
    table = _rand(v, v, seed=seed) * 2
    logp = F.log_softmax(table, -1)
    best, best_seq = -math.inf, None
    for seq in itertools.product(range(v), repeat=n):
        seq = seq[: seq.index(eos) + 1] if eos in seq else seq
        score = sum(logp[a, b].item() for a, b in zip((0,) + seq[:-1], seq, strict=True))
        score /= ((5 + len(seq)) / 6) ** alpha
        if score > best + 1e-6:
            best, best_seq = score, list(seq)
    out = beam_search(_bigram(table), torch.tensor([[0]]), None, n, beam_width=v**n,
                      length_penalty=alpha, eos=eos)
    got = out.tokens[0, 1:].tolist()
    got = got[: got.index(eos) + 1] if eos in got else got
    assert got == best_seq
    torch.testing.assert_close(out.scores[0].item(), best, atol=1e-4, rtol=0)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 2**16))
def test_greedy_equals_the_argmax_loop(seed):
    table = _rand(6, 6, seed=seed)
    tokens = torch.tensor([[0], [3]])
    ref = tokens
    for _ in range(5):
        ref = torch.cat([ref, table[ref[:, -1]].argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy(_bigram(table), tokens, None, 5).tokens, ref)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 2**16), st.integers(1, 40), st.floats(0.01, 0.99))
def test_filters_equal_transformers(seed, k, p):
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = _rand(4, 30, seed=seed) * 3
    ids = torch.zeros(4, 1, dtype=torch.long)
    assert torch.equal(filter_top_k(logits, k), TopKLogitsWarper(top_k=k)(ids, logits.clone()))
    ref = TopPLogitsWarper(top_p=p)(ids, logits.clone()).isinf()
    ours = filter_top_p(logits, p).isinf()
    # a token exactly on the boundary may fall either way by rounding; there are none by chance
    assert torch.equal(ours, ref)
