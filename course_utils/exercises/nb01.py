"""Exercises of notebook 01 (attention as a soft lookup).

* ``01.1`` — scaled dot-product attention: ``fn(q, k, v) -> (out, weights)``.
* ``01.2`` — Nadaraya–Watson regression with a Gaussian kernel:
  ``fn(x_query, x_train, y_train, sigma) -> y_pred``.

Each checker runs the learner's function on fixed random inputs, compares with the answer and,
when they differ, with the typical mistakes (forgot to scale, softmax over the wrong axis, ...),
so that the message says *which* mistake it is.

>>> from course_utils.exercises import check, solution_function
>>> check("01.1", solution_function("01.1")).passed
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import CheckResult, exercise, fail, ok

# ---------------------------------------------------------------------------------------------
# helpers shared by the checkers of notebooks 01-03
# ---------------------------------------------------------------------------------------------


def _as_tensor(x: Any, name: str) -> torch.Tensor | CheckResult:
    if not isinstance(x, torch.Tensor):
        return fail("type", f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _same(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    """Same shape and (nearly) the same values."""
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4))


def _diagnose(
    got: torch.Tensor,
    mistakes: Sequence[tuple[str, torch.Tensor, str]],
) -> CheckResult | None:
    """The first typical mistake whose result equals ``got``, as a failed ``CheckResult``."""
    for kind, wrong, message in mistakes:
        if _same(got, wrong):
            return fail(kind, message)
    return None


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


# ---------------------------------------------------------------------------------------------
# 01.1 scaled dot-product attention
# ---------------------------------------------------------------------------------------------


def _solution_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """softmax(q kᵀ / √d) v for q (B, Lq, d), k (B, Lk, d), v (B, Lk, dv)."""
    d = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, Lq, Lk)
    weights = torch.softmax(scores, dim=-1)  # each query's row sums to 1
    out = weights @ v  # (B, Lq, dv)
    return out, weights


@exercise(
    "01.1",
    title="Scaled dot-product attention",
    hint="scores = q @ k.transpose(-2, -1) / sqrt(d) is (B, Lq, Lk); softmax over the last axis "
    "(the keys), then multiply by v.",
    solution=_solution_attention,
)
def check_attention(fn: Callable[..., Any]) -> CheckResult:
    g = torch.Generator().manual_seed(101)
    b, lq, lk, d, dv = 2, 3, 5, 16, 4  # Lq != Lk and √d != d, so every mistake shows
    q = torch.randn(b, lq, d, generator=g)
    k = torch.randn(b, lk, d, generator=g)
    v = torch.randn(b, lk, dv, generator=g)
    answer = fn(q.clone(), k.clone(), v.clone())
    if not isinstance(answer, tuple) or len(answer) != 2:
        return fail("type", f"return a tuple (out, weights), got {type(answer).__name__}")
    out, weights = answer
    for name, t in (("out", out), ("weights", weights)):
        r = _as_tensor(t, name)
        if isinstance(r, CheckResult):
            return r
    ref_out, ref_w = _solution_attention(q, k, v)
    if weights.shape == (b, lk, lq):
        return fail("shape", f"weights have shape (B, Lk, Lq) = {tuple(weights.shape)}; expected (B, Lq, Lk) "
                    f"= {(b, lq, lk)}: one row per query. Did you compute k qᵀ instead of q kᵀ?")
    if weights.shape != ref_w.shape:
        return fail("shape", f"weights should have shape (B, Lq, Lk) = {tuple(ref_w.shape)}, "
                    f"got {tuple(weights.shape)}")
    raw = q @ k.transpose(-2, -1)
    found = _diagnose(weights, [
        ("values", torch.softmax(raw, -1),
         f"your weights are softmax(q kᵀ): you forgot to scale the scores by 1/√d = 1/{math.sqrt(d):g}"),
        ("values", torch.softmax(raw / d, -1),
         f"you divided the scores by d = {d}; divide by √d = {math.sqrt(d):g}"),
        ("values", torch.softmax(raw * math.sqrt(d), -1),
         "you multiplied the scores by √d; divide by it"),
        ("values", torch.softmax(raw / math.sqrt(d), -2),
         "softmax over the wrong axis: your columns sum to 1, but each query's row (over the keys, "
         "dim=-1) must"),
        ("values", raw / math.sqrt(d),
         "your weights are the raw scaled scores: you forgot the softmax"),
    ])
    if found is not None:
        return found
    if not _same(weights, ref_w):
        sums = weights.sum(-1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
            return fail("values", "each row of weights must sum to 1 (a distribution over the keys); "
                        f"yours sum to {sums.flatten()[:3].tolist()} ...")
        return fail("values", f"weights differ from softmax(q kᵀ/√d) by up to {_max_err(weights, ref_w):.3g}")
    if out.shape != ref_out.shape:
        return fail("shape", f"out should have shape (B, Lq, dv) = {tuple(ref_out.shape)}, got {tuple(out.shape)}")
    if not _same(out, ref_out):
        return fail("values", "your weights are right but out is not weights @ v "
                    f"(max error {_max_err(out, ref_out):.3g})")
    return ok("Correct! Your attention matches softmax(q kᵀ/√d) v.")


# ---------------------------------------------------------------------------------------------
# 01.2 Nadaraya–Watson regression
# ---------------------------------------------------------------------------------------------


def _solution_nadaraya_watson(x_query: torch.Tensor, x_train: torch.Tensor, y_train: torch.Tensor,
                              sigma: float) -> torch.Tensor:
    """Gaussian-kernel Nadaraya–Watson: attention with score -(x - x_i)² / (2σ²)."""
    diff = x_query[:, None] - x_train[None, :]  # (n_query, n_train)
    scores = -diff**2 / (2 * sigma**2)
    weights = torch.softmax(scores, dim=1)  # each query's weights over the training points
    return weights @ y_train  # (n_query,)


@exercise(
    "01.2",
    title="Nadaraya–Watson kernel regression",
    hint="scores[i, j] = -(x_query[i] - x_train[j])**2 / (2 * sigma**2); softmax over j (dim=1); "
    "the prediction is weights @ y_train.",
    solution=_solution_nadaraya_watson,
)
def check_nadaraya_watson(fn: Callable[..., Any]) -> CheckResult:
    g = torch.Generator().manual_seed(102)
    n, m, sigma = 7, 11, 0.7
    x_train = torch.rand(m, generator=g) * 5
    y_train = torch.sin(x_train) + 0.1 * torch.randn(m, generator=g)
    x_query = torch.linspace(0.2, 4.8, n)
    pred = fn(x_query.clone(), x_train.clone(), y_train.clone(), sigma)
    r = _as_tensor(pred, "the prediction")
    if isinstance(r, CheckResult):
        return r
    ref = _solution_nadaraya_watson(x_query, x_train, y_train, sigma)
    if pred.shape == (n, m):
        return fail("shape", f"you returned a (n_query, n_train) = {(n, m)} matrix: that is the attention "
                    "matrix; the prediction is weights @ y_train, one number per query")
    if pred.shape != ref.shape:
        return fail("shape", f"the prediction should have shape (n_query,) = {tuple(ref.shape)}, "
                    f"got {tuple(pred.shape)}")
    diff = x_query[:, None] - x_train[None, :]
    sq = diff**2

    def nw(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return torch.softmax(scores, dim=dim) @ y_train

    found = _diagnose(pred, [
        ("values", nw(sq / (2 * sigma**2)),
         "you forgot the minus sign: your weights grow with the distance, so each query attends to the "
         "training points *farthest* from it"),
        ("values", nw(-sq / (2 * sigma**2), dim=0),
         "softmax over the wrong axis: normalise each query's weights over the training points (dim=1)"),
        ("values", nw(-diff.abs() / (2 * sigma**2)),
         "you used |x - x_i|; the Gaussian kernel uses the squared distance (x - x_i)²"),
        ("values", nw(-sq / (2 * sigma)),
         "the bandwidth is off: divide the squared distance by 2σ² (you divided by 2σ)"),
        ("values", nw(-sq / sigma**2),
         "the bandwidth is off by a factor 2: divide the squared distance by 2σ², not σ²"),
        ("values", nw(-sq),
         "you ignored sigma: divide the squared distance by 2σ²"),
        ("values", torch.exp(-sq / (2 * sigma**2)) @ y_train,
         "your weights do not sum to 1: normalise exp(score) by its sum over the training points "
         "(that is what the softmax does)"),
    ])
    if found is not None:
        return found
    if not _same(pred, ref):
        return fail("values", f"predictions differ from the Nadaraya–Watson estimate by up to {_max_err(pred, ref):.3g}")
    return ok("Correct! That is Nadaraya–Watson regression, i.e. attention with a Gaussian score.")
