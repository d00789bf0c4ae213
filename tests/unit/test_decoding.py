"""course_utils.decoding on fixed logits (a bigram table), against exhaustive search and against
transformers' logits warpers; DecoderLM decoding through it with and without the KV cache."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import randn

from course_utils.decoding import (
    beam_search,
    filter_top_k,
    filter_top_p,
    gnmt_length_penalty,
    greedy,
    reorder_state,
    sample,
    sample_next,
)
from course_utils.efficient import DecoderLM
from course_utils.kv_cache import KVCache

V, EOS, PAD = 4, 3, 0
# logits of the next token given the last one (row = last token); token 3 is <eos>
TABLE = torch.tensor([
    [0.0, 0.0, 0.0, 0.0],
    [-9.0, 0.2, 1.5, 0.6],
    [-9.0, 1.4, -0.5, 0.9],
    [-9.0, 0.0, 0.0, 0.0],
])


def bigram(tokens: torch.Tensor, state):
    return TABLE[tokens[:, -1]], state


def counting(tokens, state):
    """A step that records how many tokens it saw (state: the list of prefix lengths)."""
    return TABLE[tokens[:, -1]], state + [tokens.size(1)]


def test_greedy_by_hand():
    out = greedy(bigram, torch.tensor([[1], [2]]), max_new_tokens=3)
    # from 1: argmax row 1 -> 2, row 2 -> 1, row 1 -> 2 ; from 2: 1, 2, 1
    assert out.tokens.tolist() == [[1, 2, 1, 2], [2, 1, 2, 1]]
    logp = F.log_softmax(TABLE, -1)
    expected = logp[1, 2] + logp[2, 1] + logp[1, 2]
    torch.testing.assert_close(out.scores[0], expected)


def test_greedy_eos_pads_and_stops_early():
    table = TABLE.clone()
    table[2, 3] = 5.0  # after token 2, <eos> wins
    def step(tokens, state):
        return table[tokens[:, -1]], state + [tokens.size(1)]
    out = greedy(step, torch.tensor([[1], [2]]), [], max_new_tokens=10, eos=EOS, pad=PAD)
    # row 0: 1 -> 2 -> eos ; row 1: 2 -> eos, then padding until row 0 ends
    assert out.tokens.tolist() == [[1, 2, 3], [2, 3, 0]]
    assert out.state == [1, 2]  # two steps, not ten
    assert greedy(step, torch.tensor([[2]]), [], 10, eos=EOS).tokens.tolist() == [[2, 3]]


def test_suppress_never_generates_those_ids():
    out = greedy(bigram, torch.tensor([[1]]), max_new_tokens=4, suppress=(2,))
    assert 2 not in out.tokens[0, 1:].tolist()


def test_step_sees_the_whole_prefix():
    out = greedy(counting, torch.tensor([[1, 2, 1]]), [], max_new_tokens=3)
    assert out.state == [3, 4, 5] and out.tokens.shape == (1, 6)
    assert greedy(counting, torch.tensor([[1]]), [], 0).tokens.tolist() == [[1]]  # nothing new


def all_continuations(start: int, n: int, alpha: float):
    """Exhaustive search: every sequence of up to n tokens (ending at <eos> or at n), scored
    with the GNMT penalty."""
    logp = F.log_softmax(TABLE, -1)
    best, best_seq = -math.inf, None
    for seq in itertools.product(range(V), repeat=n):
        if PAD in seq:
            continue
        if EOS in seq:
            seq = seq[: seq.index(EOS) + 1]
        prev, total = start, 0.0
        for t in seq:
            total += logp[prev, t].item()
            prev = t
        score = total / ((5 + len(seq)) / 6) ** alpha
        if score > best + 1e-9:
            best, best_seq = score, list(seq)
    return best, best_seq


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0, 2.0])
@pytest.mark.parametrize("start", [1, 2])
def test_beam_search_with_a_wide_beam_equals_exhaustive_search(alpha, start):
    n = 3
    out = beam_search(bigram, torch.tensor([[start]]), max_new_tokens=n, beam_width=V**n,
                      length_penalty=alpha, eos=EOS, pad=PAD, suppress=(PAD,))
    best, seq = all_continuations(start, n, alpha)
    got = [t for t in out.tokens[0, 1:].tolist() if t != PAD]
    assert got == seq
    torch.testing.assert_close(out.scores[0].item(), best, atol=1e-4, rtol=0)


def test_length_penalty_changes_the_choice():
    """Raw log-probability prefers the short output; GNMT's penalty at α=1 a longer one."""
    short = beam_search(bigram, torch.tensor([[1]]), None, 3, beam_width=16, length_penalty=0.0,
                        eos=EOS, pad=PAD, suppress=(PAD,))
    long = beam_search(bigram, torch.tensor([[1]]), None, 3, beam_width=16, length_penalty=1.0,
                       eos=EOS, pad=PAD, suppress=(PAD,))
    n_short = (short.tokens[0, 1:] != PAD).sum().item()
    n_long = (long.tokens[0, 1:] != PAD).sum().item()
    assert n_short < n_long
    torch.testing.assert_close(gnmt_length_penalty(torch.tensor([1, 7]), 1.0),
                               torch.tensor([1.0, 2.0]))


def test_beam_width_one_is_greedy_and_batches_are_independent():
    prompts = torch.tensor([[1], [2]])
    g = greedy(bigram, prompts, None, 4, eos=EOS, pad=PAD)
    b = beam_search(bigram, prompts, None, 4, beam_width=1, eos=EOS, pad=PAD)
    assert torch.equal(g.tokens, b.tokens)
    both = beam_search(bigram, prompts, None, 3, beam_width=3, eos=EOS, pad=PAD)
    for i in range(2):
        one = beam_search(bigram, prompts[i : i + 1], None, 3, beam_width=3, eos=EOS, pad=PAD)
        assert torch.equal(one.tokens[0], both.tokens[i, : one.tokens.size(1)])


# ---------------------------------------------------------------------------------------------
# Sampling: the filters against transformers' warpers
# ---------------------------------------------------------------------------------------------


def test_filters_equal_transformers_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = randn(6, 50) * 3
    ids = torch.zeros(6, 1, dtype=torch.long)
    for k in (1, 5, 50, 80):
        ref = TopKLogitsWarper(top_k=k)(ids, logits.clone())
        assert torch.equal(filter_top_k(logits, k), ref), k
    for p in (0.05, 0.3, 0.9, 0.999):
        ref = TopPLogitsWarper(top_p=p)(ids, logits.clone())
        assert torch.equal(filter_top_p(logits, p).isinf(), ref.isinf()), p


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.1, 0.4, 0.2, 0.3])
    kept = ~filter_top_p(probs.log(), 0.65).isinf()
    assert kept.tolist() == [False, True, False, True]  # 0.4 + 0.3 >= 0.65
    kept = ~filter_top_p(probs.log(), 0.7).isinf()  # exactly reached by the same two
    assert kept.tolist() == [False, True, False, True]


def test_sampling_draws_from_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).expand(20_000, 5)
    g = torch.Generator().manual_seed(0)
    draws = sample_next(logits, temperature=0.7, top_k=3, generator=g)
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    expected = torch.softmax(torch.tensor([2.0, 1.0, 0.5]) / 0.7, -1)
    torch.testing.assert_close(freq[:3], expected, atol=0.015, rtol=0)
    assert freq[3:].sum() == 0


def test_sample_is_repeatable_and_temperature_zero_is_greedy():
    prompts = torch.tensor([[1], [2]])
    a = sample(bigram, prompts, None, 6, generator=torch.Generator().manual_seed(3))
    b = sample(bigram, prompts, None, 6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(sample(bigram, prompts, None, 6, temperature=0.0).tokens,
                       greedy(bigram, prompts, None, 6).tokens)


def test_reorder_state_handles_nested_states_and_caches():
    cache = KVCache(1, batch=3, num_heads=1, head_dim=1, max_len=2)
    cache.update(0, torch.arange(3.0).view(3, 1, 1, 1), torch.zeros(3, 1, 1, 1))
    state = (torch.arange(3), [{"h": torch.arange(3.0)[:, None]}], None, cache)
    out = reorder_state(state, torch.tensor([2, 2, 0]))
    assert out[0].tolist() == [2, 2, 0] and out[1][0]["h"][:, 0].tolist() == [2.0, 2.0, 0.0]
    assert out[2] is None and cache.keys[0][:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0]


BAD = [
    (dict(tokens=torch.tensor([[1.0]])), TypeError, r"tokens must be an integer tensor"),
    (dict(tokens=torch.tensor([[-1]])), ValueError, r"tokens must hold token ids >= 0, got values "
                                                    r"from -1 to -1"),
    (dict(tokens=torch.tensor([1, 2])), ValueError, r"tokens must have shape \(B, t\)"),
    (dict(max_new_tokens=-1), ValueError, r"max_new_tokens must be a non-negative int, got -1"),
    (dict(eos=4), ValueError, r"eos must be an int in \[0, 3\], got 4"),
    (dict(suppress=(7,)), ValueError, r"suppress\[\] must be an int in \[0, 3\], got 7"),
    (dict(step=lambda t, s: (TABLE[t], s)), ValueError,
     r"logits returned by step must have shape \(B, V\) with B = \d, got \(\d, 1, 4\)"),
    (dict(step=lambda t, s: (t, s)), TypeError, r"float logits \(B, V\), got Tensor torch.int64"),
]


@pytest.mark.parametrize("override,exc,msg", BAD)
def test_bad_input_names_the_argument(override, exc, msg):
    kwargs = dict(step=bigram, tokens=torch.tensor([[1]]), max_new_tokens=2) | override
    for fn in (greedy, sample, beam_search):
        with pytest.raises(exc, match=msg):
            fn(**kwargs)


def test_bad_sampling_and_beam_arguments():
    logits = randn(2, 5)
    with pytest.raises(ValueError, match=r"temperature must be a real number in \[0.0, inf\)"):
        sample_next(logits, temperature=-1.0)
    with pytest.raises(ValueError, match=r"p must be a real number in \(0.0, 1.0\], got 0.0"):
        filter_top_p(logits, 0.0)
    with pytest.raises(ValueError, match=r"k must be a positive int, got 0"):
        filter_top_k(logits, 0)
    with pytest.raises(ValueError, match=r"beam_width must be a positive int, got 0"):
        beam_search(bigram, torch.tensor([[1]]), None, 2, beam_width=0)
    with pytest.raises(ValueError, match=r"length_penalty must be a real number"):
        beam_search(bigram, torch.tensor([[1]]), None, 2, length_penalty=math.nan)


# ---------------------------------------------------------------------------------------------
# DecoderLM decodes through decoding.py, with the same tokens as the loop it replaced
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return DecoderLM(vocab=30, d_model=32, nhead=4, num_layers=2, max_len=40).eval()


def test_decoder_lm_generate_equals_the_plain_greedy_loop(lm):
    memory, start = randn(3, 6, 32), torch.tensor([[1, 4], [2, 2], [0, 7]])
    tokens = start
    with torch.no_grad():
        for _ in range(15):  # the loop DecoderLM.generate used before decoding.py existed
            tokens = torch.cat([tokens, lm(tokens, memory)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(lm.generate(memory, start, 15, use_cache=False), tokens)
    assert torch.equal(lm.generate(memory, start, 15, use_cache=True), tokens)


def test_beam_search_with_the_kv_cache_equals_recompute(lm):
    """Beam search reorders the cache (KVCache.reorder); the result equals re-running the
    whole prefix every step."""
    memory, start = randn(2, 5, 32), torch.tensor([[1], [3]])
    k = 3
    mem_k = memory.repeat_interleave(k, 0)

    def recompute(tokens, state):
        return lm(tokens, mem_k)[:, -1], state

    def cached(tokens, state):
        cache, cross = state
        return lm.step(tokens[:, cache.length(0):], cache, cross)[:, -1], state

    with torch.no_grad():
        ref = beam_search(recompute, start, None, 8, beam_width=k, eos=5)
        got = beam_search(cached, start, lm.new_cache(2 * k, 9, mem_k), 8, beam_width=k, eos=5,
                          reorder=lambda s, i: (reorder_state(s[0], i), s[1]))
    assert torch.equal(got.tokens, ref.tokens)
    torch.testing.assert_close(got.scores, ref.scores, atol=1e-4, rtol=0)
