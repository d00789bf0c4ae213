"""Exercises of notebook 10 (translation).

* ``10.1`` — BLEU's brevity penalty: ``fn(hyp_len: int, ref_len: int) -> float``.
* ``10.2`` — one step of beam search:
  ``fn(scores (B, K), logp (B·K, V), k) -> (new_scores (B, k), beam (B, k), token (B, k))``.

>>> from course_utils.exercises import check, solution_function
>>> check("10.1", solution_function("10.1")).passed, check("10.2", solution_function("10.2")).passed
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from . import CheckResult, exercise, fail, ok

# ---------------------------------------------------------------------------------------------
# 10.1 brevity penalty
# ---------------------------------------------------------------------------------------------


def _solution_brevity_penalty(hyp_len: int, ref_len: int) -> float:
    """BP = 1 if the output is longer than the reference, else exp(1 - r / c)."""
    if hyp_len == 0:
        return 0.0
    if hyp_len > ref_len:
        return 1.0
    return math.exp(1.0 - ref_len / hyp_len)


@exercise(
    "10.1",
    title="BLEU's brevity penalty",
    hint="Precision alone rewards short outputs. BP = 1 when c > r, else exp(1 - r/c) "
    "(c: hypothesis length, r: reference length); an empty output gets 0.",
    solution=_solution_brevity_penalty,
)
def check_brevity_penalty(fn: Callable[..., Any]) -> CheckResult:
    cases = [(10, 10), (12, 10), (8, 10), (5, 20), (1, 3), (0, 5)]
    for c, r in cases:
        got = fn(c, r)
        want = _solution_brevity_penalty(c, r)
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            return fail("type", f"fn({c}, {r}) returned {type(got).__name__}; expected a float")
        if abs(got - want) > 1e-9:
            if c > 0 and abs(got - math.exp(1 - c / r)) < 1e-9 and c != r:
                return fail("values", f"fn({c}, {r}) = {got:.4f}: the ratio is upside down, "
                            f"expected exp(1 - r/c) = {want:.4f}")
            if c > r:
                return fail("values", f"fn({c}, {r}) = {got:.4f}: a hypothesis LONGER than the "
                            "reference is not penalised by BP (precision already does); expected 1")
            return fail("values", f"fn({c}, {r}) = {got:.4f}, expected {want:.4f}")
    return ok("Correct! sacrebleu multiplies the geometric mean of the n-gram precisions by this.")


# ---------------------------------------------------------------------------------------------
# 10.2 one beam-search step
# ---------------------------------------------------------------------------------------------


def _solution_beam_step(scores: torch.Tensor, logp: torch.Tensor, k: int):
    """Extend every beam by every word, keep the k best (beam, word) pairs per sentence."""
    b, kk = scores.shape
    v = logp.size(-1)
    cand = (scores.reshape(b * kk, 1) + logp).reshape(b, kk * v)  # (B, K·V)
    new_scores, flat = cand.topk(k, dim=-1)  # (B, k)
    return new_scores, flat // v, flat % v


@exercise(
    "10.2",
    title="One step of beam search",
    hint="Add each beam's score to its row of log-probabilities, view the result as (B, K·V), "
    "take topk over the last dim, then split the flat index into beam = i // V and word = i % V.",
    solution=_solution_beam_step,
)
def check_beam_step(fn: Callable[..., Any]) -> CheckResult:
    g = torch.Generator().manual_seed(802)
    b, kk, v, k = 2, 3, 7, 3
    scores = -torch.rand(b, kk, generator=g) * 3
    logp = torch.randn(b * kk, v, generator=g).log_softmax(-1)
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
    if torch.allclose(new_scores, logp.reshape(b, kk * v).topk(k, dim=-1).values):
        return fail("values", "your scores ignore the beams' scores so far: add scores[b, j] to "
                    "every log-probability of beam j before choosing")
    if not torch.allclose(new_scores, want_s, atol=1e-6):
        return fail("values", f"new_scores {new_scores.tolist()} differ from the expected {want_s.tolist()}: "
                    "choose the top k over all K·V candidates of a sentence, not per beam")
    if not (torch.equal(beam.long(), want_b) and torch.equal(token.long(), want_t)):
        return fail("values", "the scores are right but beam/token are not: with a flat index i into "
                    "(K·V), beam = i // V and token = i % V")
    return ok("Correct! That is the heart of course_utils.seq2seq.beam_search.")
