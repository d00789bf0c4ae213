"""Exercises of notebook 10 (translation).

* ``10.1`` (predict) — the BLEU of a "translation" that copies the English source, and its
  unigram precision: ``check("10.1", bleu, unigram_precision)`` (both 0–100). The checker
  measures both with sacrebleu on generated test sentences and explains the gap.
* ``10.2`` (debug) — a step of beam search handed over with bugs:
  ``fn(scores (B, K), logp (B·K, V), k) -> (new_scores (B, k), beam (B, k), token (B, k))``.
* ``10.3`` (derive) — BLEU's brevity penalty from its definition: ``fn(hyp_len, ref_len) -> float``.

>>> from course_utils.exercises import check, solution_answer
>>> all(check(i, *solution_answer(i)).passed for i in ("10.1", "10.2", "10.3"))
True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from . import CheckResult, Mistake, exercise, fail, ok
from .nb01 import _as_number, _first_difference

__all__ = ["check_beam_step", "check_brevity_penalty", "check_copy_source"]


# --------------------------------------------------------------------------------------------
# 10.1 predict: the BLEU of copying the source
# --------------------------------------------------------------------------------------------


@functools.cache
def _copy_source_scores() -> tuple[float, float, int]:
    """Measured: sacrebleu's BLEU and unigram precision of copying the source, on the 200 test
    sentences of a generated corpus (4,000 pairs, seed 0)."""
    import sacrebleu

    from course_utils.datasets.translation import make_corpus, split_corpus

    corpus = split_corpus(make_corpus(4_000, seed=0), n_valid=200, n_test=200)
    stats = sacrebleu.corpus_bleu([en for en, _ in corpus.test], [[fr for _, fr in corpus.test]])
    return stats.score, stats.precisions[0], len(corpus.test)


def _solution_copy_source() -> tuple[float, float]:
    # English and French share almost no tokens: the full stop ending every sentence, the comma,
    # and a few words spelt alike (orange, table). A sentence of about 20 tokens shares about
    # one, so the unigram precision is about 1/20 = 5 %. BLEU is the geometric mean of the 1- to
    # 4-gram precisions: no four consecutive English tokens occur in the French, the 4-gram
    # precision is (nearly) zero, and so is BLEU, whatever the unigram precision.
    import sacrebleu

    from course_utils.datasets.translation import make_corpus, split_corpus

    corpus = split_corpus(make_corpus(4_000, seed=0), n_valid=200, n_test=200)
    copies = [en for en, _ in corpus.test]  # the "translation" is the source itself
    stats = sacrebleu.corpus_bleu(copies, [[fr for _, fr in corpus.test]])
    return stats.score, stats.precisions[0]


@exercise(
    "10.1",
    title="Predict: the BLEU of a system that copies the source",
    hint="Which tokens does an English sentence share with its French translation? BLEU multiplies "
    "the 1-, 2-, 3- and 4-gram precisions (a geometric mean): what if one of them is about zero?",
    solution=_solution_copy_source,
    solution_args=lambda: _solution_copy_source(),
    kind="predict",
    minutes=5,
    difficulty=1,
    mistakes=[
        Mistake("the unigram precision given as BLEU", (5.6, 5.6), "the unigram precision, not BLEU"),
        Mistake("nothing matches, not even the full stop", (0.0, 0.0), "full stop"),
        Mistake("many shared words", (0.0, 35.0), "share far fewer tokens"),
        Mistake("BLEU well above zero", (15.0, 6.0), "four consecutive tokens"),
    ],
)
def check_copy_source(bleu: Any, unigram_precision: Any) -> CheckResult:
    pred_bleu = _as_number(bleu, "your predicted BLEU")
    pred_p1 = _as_number(unigram_precision, "your predicted unigram precision")
    measured, p1, n = _copy_source_scores()
    said = (f"You predicted BLEU {pred_bleu:.3g} and a unigram precision of {pred_p1:.3g} %; measured "
            f"with sacrebleu on {n} generated test sentences: BLEU {measured:.2f}, unigram precision "
            f"{p1:.1f} %")
    bleu_ok, p1_ok = abs(pred_bleu - measured) <= 1.0, abs(pred_p1 - p1) <= max(3.0, 0.5 * p1)
    if bleu_ok and p1_ok:
        return ok(f"Correct! {said}. About one token in {100 / p1:.0f} is shared (mostly the full stop), "
                  "but no four consecutive ones are, so the 4-gram precision is about zero and takes "
                  "the geometric mean with it: BLEU rewards fluent word *sequences* of the target "
                  "language, which copying cannot give.")
    if pred_bleu > 2.0 and abs(pred_bleu - pred_p1) < 1.5:
        return fail("values", f"{said}. You gave the unigram precision, not BLEU: BLEU is the geometric "
                    "mean of the 1- to 4-gram precisions (times the brevity penalty), and copying "
                    "matches almost no 4-gram.")
    if pred_p1 < 1.0:
        return fail("values", f"{said}. Something does match: every sentence ends with a full stop in "
                    "both languages, and a few words are spelt alike (orange, table).")
    if pred_p1 > 2 * p1 + 3.0:
        return fail("values", f"{said}. English and French share far fewer tokens than that: the "
                    "articles, verbs and most nouns differ, only the full stop and a few words match.")
    if pred_bleu > 5.0:
        return fail("values", f"{said}. A BLEU above a few points needs matching 4-grams, four "
                    "consecutive tokens in both languages, and copying English almost never produces "
                    "one: the geometric mean is dragged to about zero.")
    what = "BLEU" if not bleu_ok else "the unigram precision"
    return fail("values", f"{said}: {what} is off. Count the tokens a sentence shares with its "
                "translation, then ask what a near-zero 4-gram precision does to a geometric mean.")


# --------------------------------------------------------------------------------------------
# 10.2 debug: one step of beam search
# --------------------------------------------------------------------------------------------


def _solution_beam_step(scores: torch.Tensor, logp: torch.Tensor, k: int):
    """Extend every beam by every word, keep the k best (beam, word) pairs of each sentence."""
    b, kk = scores.shape
    v = logp.size(-1)
    cand = (scores.reshape(b * kk, 1) + logp).reshape(b, kk * v)  # (B, K·V): score so far + next word
    new_scores, flat = cand.topk(k, dim=-1)  # (B, k): the best over all beams of the sentence
    return new_scores, flat // v, flat % v  # flat = beam·V + word


def _handed_over(scores: torch.Tensor, logp: torch.Tensor, k: int):
    """The notebook's cell, as handed over (two bugs)."""
    b, n_beams = scores.shape
    vocab = logp.size(-1)
    candidates = logp.reshape(b, n_beams * vocab)  # (B, K·V)
    new_scores, flat = candidates.topk(k, dim=-1)  # (B, k)
    return new_scores, flat % n_beams, flat // n_beams


def _bug_ignores_scores(scores, logp, k):
    b, kk = scores.shape
    v = logp.size(-1)
    new_scores, flat = logp.reshape(b, kk * v).topk(k, dim=-1)
    return new_scores, flat // v, flat % v


def _bug_split_by_k(scores, logp, k):
    b, kk = scores.shape
    cand = (scores.reshape(b * kk, 1) + logp).reshape(b, -1)
    new_scores, flat = cand.topk(k, dim=-1)
    return new_scores, flat % kk, flat // kk


def _bug_swapped(scores, logp, k):
    b, kk = scores.shape
    v = logp.size(-1)
    new_scores, flat = (scores.reshape(b * kk, 1) + logp).reshape(b, kk * v).topk(k, dim=-1)
    return new_scores, flat % v, flat // v


def _bug_per_beam(scores, logp, k):
    b, kk = scores.shape
    v = logp.size(-1)
    cand = scores[..., None] + logp.reshape(b, kk, v)  # (B, K, V)
    best, word = cand.topk(1, dim=-1)  # each beam's best word: (B, K, 1)
    beam = torch.arange(kk).expand(b, kk)
    return best[..., 0][:, :k], beam[:, :k], word[..., 0][:, :k]


def _bug_across_sentences(scores, logp, k):
    b, kk = scores.shape
    v = logp.size(-1)
    cand = (scores.reshape(b * kk, 1) + logp).reshape(1, b * kk * v)
    new_scores, flat = cand.topk(b * k, dim=-1)
    flat = flat.reshape(b, k)
    return new_scores.reshape(b, k), (flat // v) % kk, flat % v


def _beam_inputs() -> tuple[torch.Tensor, torch.Tensor, int]:
    g = torch.Generator().manual_seed(802)
    b, kk, v, k = 2, 3, 7, 3
    scores = -torch.rand(b, kk, generator=g) * 3
    scores[1] = scores[1] - 8.0  # the second sentence's hypotheses are much less likely
    logp = torch.randn(b * kk, v, generator=g).log_softmax(-1)
    return scores, logp, k


@exercise(
    "10.2",
    title="Debug: one step of beam search",
    hint="What is the log-probability of a whole hypothesis, prefix and next word? The K·V "
    "candidates of a sentence are laid out beam after beam, V words each: which beam and which word "
    "does a flat index i stand for?",
    solution=_solution_beam_step,
    kind="debug",
    minutes=15,
    difficulty=2,
    mistakes=[
        Mistake("the broken code, unchanged", (_handed_over,), "as handed over"),
        Mistake("ignores the beams' scores", (_bug_ignores_scores,), "ignore the beams' scores"),
        Mistake("splits the flat index by K", (_bug_split_by_k,), "divided by K"),
        Mistake("beam and word swapped", (_bug_swapped,), "swapped"),
        Mistake("the best word of each beam", (_bug_per_beam,), "within each beam"),
        Mistake("top-k across the whole batch", (_bug_across_sentences,), "across sentences"),
    ],
)
def check_beam_step(fn: Callable[..., Any]) -> CheckResult:
    scores, logp, k = _beam_inputs()
    b, kk = scores.shape
    v = logp.size(-1)
    out = fn(scores.clone(), logp.clone(), k)
    if not isinstance(out, tuple) or len(out) != 3:
        return fail("type", "return a tuple (new_scores, beam, token)")
    new_scores, beam, token = out
    want_s, want_b, want_t = _solution_beam_step(scores, logp, k)
    for name, got, want in (("new_scores", new_scores, want_s), ("beam", beam, want_b),
                            ("token", token, want_t)):
        if not isinstance(got, torch.Tensor):
            return fail("type", f"{name} must be a tensor, got {type(got).__name__}")
        if tuple(got.shape) != tuple(want.shape):
            return fail("shape", f"{name} has shape {tuple(got.shape)}, expected (B, k) = {tuple(want.shape)}")
    handed = _handed_over(scores, logp, k)
    if all(torch.equal(x.long() if i else x, y.long() if i else y)
           for i, (x, y) in enumerate(zip((new_scores, beam, token), handed, strict=True))):
        return fail("values", "the code as handed over: the second sentence's hypotheses are all about "
                    "8 nats less likely than the first's, yet the scores it keeps for them are as high; "
                    "and on the first sentence the (beam, token) pairs it returns point at other "
                    "candidates than the scores it returns. Two things to find.")
    if torch.allclose(new_scores, logp.reshape(b, kk * v).topk(k, dim=-1).values):
        return fail("values", "your scores ignore the beams' scores so far: a hypothesis is scored by "
                    "log p(prefix) + log p(word | prefix), so add scores[b, j] to every log-probability "
                    "of beam j before choosing")
    if torch.allclose(new_scores, _bug_across_sentences(scores, logp, k)[0]) and not torch.allclose(
            new_scores, want_s):
        return fail("values", "you chose the top k across sentences: each sentence keeps its own k "
                    "hypotheses, so take the top k of each row of the (B, K·V) candidates")
    if not torch.allclose(new_scores, want_s, atol=1e-6):
        if torch.allclose(new_scores, _bug_per_beam(scores, logp, k)[0]):
            return fail("values", "you kept the best word within each beam: two of the k best "
                        "extensions may come from the same beam, so choose among all K·V candidates")
        return fail("values", f"new_scores differ from the expected ones {_first_difference(new_scores, want_s, 'b, j')}: "
                    "choose the top k over all K·V candidates of a sentence")
    beam, token = beam.long(), token.long()
    if torch.equal(beam, want_t) and torch.equal(token, want_b):
        return fail("values", "beam and token are swapped: with a flat index i into (K·V), "
                    "beam = i // V and token = i % V")
    flat = want_b * v + want_t
    if torch.equal(beam, flat % kk) or torch.equal(token, flat // kk):
        return fail("values", "the flat index was divided by K, the number of beams: the candidates "
                    "are laid out beam after beam, V words each, so beam = i // V and token = i % V")
    if not torch.equal(beam, want_b):
        return fail("values", f"the scores are right but beam is not {_first_difference(beam, want_b, 'b, j')}")
    if not torch.equal(token, want_t):
        return fail("values", f"the scores are right but token is not {_first_difference(token, want_t, 'b, j')}")
    return ok("Correct! That is one step of course_utils.decoding.beam_search (which also freezes "
              "finished hypotheses and reorders the decoder's state with `beam`).")


# --------------------------------------------------------------------------------------------
# 10.3 derive: BLEU's brevity penalty
# --------------------------------------------------------------------------------------------


def _solution_brevity_penalty(hyp_len: int, ref_len: int) -> float:
    """BP = 1 if the output is longer than the reference, else exp(1 - r / c); 0 for no output."""
    if hyp_len == 0:
        return 0.0
    if hyp_len > ref_len:
        return 1.0
    return math.exp(1.0 - ref_len / hyp_len)


def _bp_upside_down(c, r):
    return 0.0 if c == 0 else 1.0 if c > r else math.exp(1.0 - c / r)


def _bp_always(c, r):
    return 0.0 if c == 0 else math.exp(1.0 - r / c)


def _bp_no_empty(c, r):
    return 1.0 if c > r else math.exp(1.0 - r / max(c, 1e-9)) if c else 1.0


def _bp_linear(c, r):
    return 1.0 if c > r else c / r


def _bp_sign(c, r):
    return 0.0 if c == 0 else 1.0 if c > r else math.exp(r / c - 1.0)


@exercise(
    "10.3",
    title="Derive: BLEU's brevity penalty",
    hint="Precision alone rewards short outputs. BP = 1 when c > r, else exp(1 - r/c) (c: hypothesis "
    "length, r: reference length); an empty output gets 0.",
    solution=_solution_brevity_penalty,
    kind="derive",
    minutes=10,
    difficulty=1,
    mistakes=[
        Mistake("the ratio upside down", (_bp_upside_down,), "upside down"),
        Mistake("penalises long outputs too", (_bp_always,), "LONGER than the reference"),
        Mistake("an empty output gets 1", (_bp_no_empty,), "empty output"),
        Mistake("a linear penalty", (_bp_linear,), "exponential"),
        Mistake("the sign of the exponent", (_bp_sign,), "never exceeds 1"),
    ],
)
def check_brevity_penalty(fn: Callable[..., Any]) -> CheckResult:
    cases = [(10, 10), (12, 10), (8, 10), (5, 20), (1, 3), (0, 5)]
    got = {}
    for c, r in cases:
        value = fn(c, r)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return fail("type", f"fn({c}, {r}) returned {type(value).__name__}; expected a float")
        got[c, r] = float(value)
    if got[0, 5] != 0.0:
        return fail("values", f"fn(0, 5) = {got[0, 5]:.4g}: an empty output has no n-gram at all and "
                    "must get BP = 0 (and no division by zero)")
    short = [(c, r) for c, r in cases if 0 < c <= r]
    if all(abs(got[c, r] - math.exp(1 - c / r)) < 1e-9 for c, r in short):
        return fail("values", f"fn(8, 10) = {got[8, 10]:.4f}: the ratio is upside down, expected "
                    f"exp(1 - r/c) = {_solution_brevity_penalty(8, 10):.4f}")
    if any(got[c, r] > 1.0 + 1e-12 for c, r in short):
        return fail("values", "your penalty exceeds 1 for a short output: BP never exceeds 1 — it "
                    "only punishes; check the sign of the exponent, 1 - r/c ≤ 0 when c ≤ r")
    for (c, r), value in got.items():
        want = _solution_brevity_penalty(c, r)
        if abs(value - want) <= 1e-9:
            continue
        if c > r:
            return fail("values", f"fn({c}, {r}) = {value:.4f}: a hypothesis LONGER than the reference "
                        "is not penalised by BP (the n-gram precisions already punish extra words); "
                        "expected 1")
        if abs(value - c / r) < 1e-9:
            return fail("values", f"fn({c}, {r}) = {value:.4f} = c/r: BLEU's penalty is exponential, "
                        f"exp(1 - r/c) = {want:.4f}, much harsher for very short outputs")
        return fail("values", f"the first difference is fn({c}, {r}) = {value:.4f}, expected {want:.4f}")
    return ok("Correct! sacrebleu multiplies the geometric mean of the n-gram precisions by this, "
              "computed on the lengths of the whole corpus, not of each sentence.")
