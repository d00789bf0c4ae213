"""Exercises of notebook 01 (attention as a soft lookup).

* ``01.1`` (predict) — the variance of a scaled score ``q·k/√d`` when the entries of ``q`` and
  ``k`` have variance ``σ² = 4`` (not 1): a number, compared with a measurement.
* ``01.2`` (derive) — the derivative of an attention output with respect to the softmax
  temperature: ``fn(scores (B, n), values (B, n, dv), T) -> dO/dT (B, dv)``, without autograd.
* ``01.3`` (debug) — a "stable" softmax that still returns NaN: fix it,
  ``fn(scores (..., n)) -> weights (..., n)``, without calling a library softmax.

Each checker compares the answer with the truth and, when they differ, with the answers that
typical slips give, so that the message names the slip; otherwise it says where the first
difference is. This module also holds the helpers the checkers of notebooks 01-06 share.

>>> from course_utils.exercises import check, solution_answer
>>> all(check(i, *solution_answer(i)).passed for i in ("01.1", "01.2", "01.3"))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from . import CheckResult, Mistake, exercise, fail, ok

# ---------------------------------------------------------------------------------------------
# helpers shared by the checkers of notebooks 01-06
# ---------------------------------------------------------------------------------------------


def _as_tensor(x: Any, name: str) -> torch.Tensor | CheckResult:
    if not isinstance(x, torch.Tensor):
        return fail("type", f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _same(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    """Same shape and (nearly) the same values; NaN matches NaN."""
    return a.shape == b.shape and bool(
        torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4, equal_nan=True))


def _diagnose(
    got: torch.Tensor,
    mistakes: Sequence[tuple[str, torch.Tensor, str]],
    atol: float = 1e-5,
) -> CheckResult | None:
    """The first typical mistake whose result equals ``got``, as a failed ``CheckResult``."""
    for kind, wrong, message in mistakes:
        if _same(got, wrong, atol):
            return fail(kind, message)
    return None


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def _first_difference(got: torch.Tensor, want: torch.Tensor, axes: str = "", atol: float = 1e-5) -> str:
    """Where ``got`` first differs from ``want`` (same shape), e.g. "at (b=0, i=2, j=1): got 0.31,
    expected 0.12"."""
    bad = ~torch.isclose(got.double(), want.double(), atol=atol, rtol=1e-4, equal_nan=True)
    if not bad.any():
        return "nowhere"
    index = [int(i) for i in bad.nonzero()[0]]
    names = axes.split(",") if axes else []
    where = ", ".join(f"{n.strip()}={i}" if n.strip() else str(i)
                      for n, i in zip(names + [""] * len(index), index, strict=False))
    return (f"at ({where}): got {float(got[tuple(index)]):.4g}, expected {float(want[tuple(index)]):.4g} "
            f"({int(bad.sum())} of {bad.numel()} entries differ)")


def _as_number(x: Any, what: str) -> float:
    """A learner's predicted number; ``None`` (the notebook's placeholder) reads as not attempted."""
    if x is None or x is Ellipsis:
        raise NotImplementedError
    if isinstance(x, bool):
        raise TypeError(f"{what} must be a number, got a bool")
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise TypeError(f"{what} must be one number, got a tensor of shape {tuple(x.shape)}")
        x = x.item()
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        raise TypeError(f"{what} must be a finite number, got {x!r}")
    return float(x)


def _close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * abs(b)


def _gap(pred: float, truth: float) -> str:
    """How far off a prediction is, in words."""
    if truth != 0 and pred != 0 and (pred / truth > 0):
        factor = pred / truth
        return f"{factor:.3g} times the truth" if factor > 1 else f"{1 / factor:.3g} times too small"
    return f"off by {pred - truth:+.3g}"


class _OpRecorder(TorchFunctionMode):
    """Records the torch functions a learner's code calls and the largest tensor it creates."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.names.append(getattr(func, "__name__", str(func)))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


_SOFTMAXES = {"softmax", "log_softmax", "special_softmax", "_softmax", "special_log_softmax"}


def _run_without_autograd(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a derive exercise's function with autograd switched off (the formula is the point)."""
    try:
        with torch.inference_mode():
            return fn(*args)
    except RuntimeError as exc:
        if "grad" in str(exc) or "inference" in str(exc).lower():
            raise RuntimeError(
                f"{exc}. Autograd is switched off in this check: derive the derivative by hand "
                "and compute it from the formula") from None
        raise


# ---------------------------------------------------------------------------------------------
# 01.1 predict: the variance of a scaled score when the entries do not have variance 1
# ---------------------------------------------------------------------------------------------

_D_VAR, _SIGMA2 = 64, 4.0


def _measured_scaled_variance(n_pairs: int = 40_000) -> float:
    g = torch.Generator().manual_seed(111)
    sigma = math.sqrt(_SIGMA2)
    q = sigma * torch.randn(n_pairs, _D_VAR, generator=g, dtype=torch.float64)
    k = sigma * torch.randn(n_pairs, _D_VAR, generator=g, dtype=torch.float64)
    return float(((q * k).sum(-1) / math.sqrt(_D_VAR)).var())


def _solution_scaled_variance() -> float:
    """Var(q·k/√d) with q_i, k_i independent, mean 0, variance σ² = 4, d = 64."""
    sigma2, d = 4.0, 64
    var_one_product = sigma2 * sigma2  # Var(q_i k_i) = E[q_i²] E[k_i²] = σ²·σ² (means are 0)
    var_dot = d * var_one_product  # d independent products: their variances add up
    return var_dot / d  # dividing by √d divides the variance by d: σ⁴ = 16, whatever d is


@exercise(
    "01.1",
    title="Predict Var(q·k/√d) when the entries have variance σ² = 4",
    hint="Start from one product q_i k_i: with independent, zero-mean factors its variance is "
    "E[q_i²]·E[k_i²]. Then add up d of them, then divide by √d (which divides a variance by d).",
    solution=_solution_scaled_variance,
    solution_args=lambda: (_solution_scaled_variance(),),
    kind="predict",
    minutes=10,
    difficulty=1,
    mistakes=[
        Mistake("trusts the scaling to give 1", (1.0,), "only when the entries have variance 1"),
        Mistake("counts σ² once", (4.0,), "each product q_i k_i has variance σ²·σ²"),
        Mistake("forgets the 1/√d", (1024.0,), "Var(q·k) before the scaling"),
        Mistake("d·σ²", (256.0,), "d·σ²"),
        Mistake("the standard deviation", (2.0,), "a standard deviation"),
    ],
)
def check_scaled_variance(prediction: Any) -> CheckResult:
    pred = _as_number(prediction, "your prediction")
    measured = _measured_scaled_variance()
    truth = _SIGMA2**2
    said = f"you predicted {pred:g}; measured over 40,000 random pairs: {measured:.2f}"
    if _close(pred, truth, 0.03):
        return ok(f"Correct! {said}, exact σ⁴ = {truth:g}. The 1/√d removes the growth with d, "
                  "not the scale of the entries: scores stay in a good range only if q and k "
                  "have unit-scale entries, which is one job of the LayerNorm before attention.")
    known = [
        (1.0, "1 holds only when the entries have variance 1: the 1/√d undoes the growth with d, "
              "not the scale σ² of the entries"),
        (_SIGMA2, "that is σ² once: each product q_i k_i has variance σ²·σ² = 16 (both factors "
                  "carry σ²), and the d products add up before the 1/√d takes a factor d away"),
        (_D_VAR * truth, "that is Var(q·k) before the scaling (d·σ⁴): dividing by √d divides the "
                         "variance by d"),
        (_D_VAR * _SIGMA2, "that is d·σ²: each product q_i k_i has variance σ²·σ², and the 1/√d "
                           "divides the variance by d"),
        (math.sqrt(_SIGMA2), "that is σ, a standard deviation: the question asks for the variance "
                             "of the scaled score"),
    ]
    for value, message in known:
        if _close(pred, value, 0.01):
            return fail("values", f"{said}. {message}.")
    return fail("values", f"{said} (exact {truth:g}); yours is {_gap(pred, truth)}. Work it out for "
                "one product q_i k_i first, then for the sum of d of them, then for the division by √d.")


# ---------------------------------------------------------------------------------------------
# 01.2 derive: d(attention output)/d(temperature)
# ---------------------------------------------------------------------------------------------


def _solution_temperature_grad(scores: torch.Tensor, values: torch.Tensor, T: float) -> torch.Tensor:
    """dO/dT for O = Σ_i softmax(s/T)_i v_i: scores (B, n), values (B, n, dv) -> (B, dv).

    With α = softmax(s/T): ∂α_i/∂T = -α_i (s_i - s̄) / T², where s̄ = Σ_j α_j s_j, so
    dO/dT = -(1/T²) Σ_i α_i (s_i - s̄) v_i: minus the α-weighted covariance of scores and values.
    """
    alpha = torch.softmax(scores / T, dim=-1)  # (B, n)
    s_bar = (alpha * scores).sum(-1, keepdim=True)  # (B, 1): the α-weighted mean score
    centred = alpha * (scores - s_bar)  # (B, n)
    return -(centred[:, :, None] * values).sum(1) / T**2  # (B, dv)


def _temp_variant(sign: float = -1.0, power: int = 2, centre: bool = True):
    def fn(scores, values, T):
        alpha = torch.softmax(scores / T, dim=-1)
        s = scores - (alpha * scores).sum(-1, keepdim=True) if centre else scores
        return sign * ((alpha * s)[:, :, None] * values).sum(1) / T**power
    return fn


@exercise(
    "01.2",
    title="Derive dO/dT, the gradient of attention with respect to the temperature",
    hint="Write α_i = exp(s_i/T) / Σ_j exp(s_j/T) and differentiate: ∂(s_i/T)/∂T = -s_i/T², and "
    "the denominator gives the mean term. You should find ∂α_i/∂T = -α_i (s_i - s̄)/T² with "
    "s̄ = Σ_j α_j s_j; then dO/dT = Σ_i (∂α_i/∂T) v_i.",
    solution=_solution_temperature_grad,
    kind="derive",
    minutes=20,
    difficulty=2,
    mistakes=[
        Mistake("sign flipped", (_temp_variant(sign=1.0),), "the sign is flipped"),
        Mistake("no 1/T² (derivative with respect to 1/T, sign kept)", (_temp_variant(power=0),),
                "the factor 1/T² is missing"),
        Mistake("derivative with respect to β = 1/T", (_temp_variant(sign=1.0, power=0),),
                "with respect to β = 1/T"),
        Mistake("1/T instead of 1/T²", (_temp_variant(power=1),), "1/T instead of 1/T²"),
        Mistake("forgets the mean score (the denominator's derivative)", (_temp_variant(centre=False),),
                "the denominator also depends on T"),
    ],
)
def check_temperature_grad(fn: Callable[..., Any]) -> CheckResult:
    g = torch.Generator().manual_seed(112)
    b, n, dv, T = 3, 6, 4, 0.7  # T != 1, so 1/T, 1/T² and 1 all differ
    scores = 2 * torch.randn(b, n, generator=g, dtype=torch.float64)
    values = torch.randn(b, n, dv, generator=g, dtype=torch.float64)
    got = _run_without_autograd(fn, scores.clone(), values.clone(), T)
    r = _as_tensor(got, "dO/dT")
    if isinstance(r, CheckResult):
        return r
    # the truth, by autograd (here, not in the learner's code)
    t = torch.tensor(T, dtype=torch.float64, requires_grad=True)
    out = torch.softmax(scores / t, -1)[:, None, :] @ values  # (B, 1, dv)
    want = torch.stack([torch.stack([torch.autograd.grad(out[i, 0, j], t, retain_graph=True)[0]
                                     for j in range(dv)]) for i in range(b)])  # (B, dv)
    if got.shape != want.shape:
        return fail("shape", f"dO/dT has one entry per sequence and value dimension, (B, dv) = "
                    f"{tuple(want.shape)}; got {tuple(got.shape)}")
    if _same(got, want, 1e-8):
        return ok("Correct! dO/dT = -(1/T²)·Cov_α(s, v): raising the temperature moves the output "
                  "away from the values of high-scoring keys, and the effect fades like 1/T².")
    found = _diagnose(got, [
        ("values", _temp_variant(sign=1.0)(scores, values, T),
         "the sign is flipped: a higher temperature flattens the weights, moving the output AWAY "
         "from the high-scoring keys' values, so dO/dT = -(1/T²) Σ α_i (s_i - s̄) v_i"),
        ("values", _temp_variant(power=0)(scores, values, T),
         "the factor 1/T² is missing: d(s_i/T)/dT = -s_i/T²"),
        ("values", _temp_variant(sign=1.0, power=0)(scores, values, T),
         "this is the derivative with respect to β = 1/T; multiply by dβ/dT = -1/T²"),
        ("values", _temp_variant(power=1)(scores, values, T),
         "1/T instead of 1/T²: d(s_i/T)/dT = -s_i/T²"),
        ("values", _temp_variant(centre=False)(scores, values, T),
         "the mean score s̄ = Σ α_j s_j is missing: the denominator also depends on T, and its "
         "derivative subtracts s̄ from every s_i"),
    ], atol=1e-8)
    if found is not None:
        return found
    return fail("values", "dO/dT differs from autograd's derivative "
                f"{_first_difference(got, want, 'b, v', 1e-8)}")


# ---------------------------------------------------------------------------------------------
# 01.3 debug: a "stable" softmax that still gives NaN
# ---------------------------------------------------------------------------------------------


def _solution_stable_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis that never overflows: shift each ROW by its own maximum."""
    row_max = scores.amax(dim=-1, keepdim=True)  # (..., 1): one maximum per row, kept for broadcasting
    e = torch.exp(scores - row_max)  # each row's largest entry becomes exp(0) = 1
    return e / e.sum(dim=-1, keepdim=True)  # the denominator is >= 1: no 0/0


def _broken_global_max(s):
    e = torch.exp(s - s.max())
    return e / e.sum(dim=-1, keepdim=True)


def _no_shift(s):
    e = torch.exp(s)
    return e / e.sum(dim=-1, keepdim=True)


def _shift_by_min(s):
    e = torch.exp(s - s.amin(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def _max_without_keepdim(s):
    e = torch.exp(s - s.amax(dim=-1))
    return e / e.sum(dim=-1, keepdim=True)


def _max_over_columns(s):
    e = torch.exp(s - s.amax(dim=0, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def _sum_over_everything(s):
    e = torch.exp(s - s.amax(dim=-1, keepdim=True))
    return e / e.sum()


_ROWS = torch.tensor([[1000.0, 999.0, 998.0, 900.0],  # large scores: exp overflows
                      [0.0, -1.0, -2.0, -3.0],  # ordinary scores
                      [-1000.0, -1001.0, -999.0, -1000.0],  # very negative: exp underflows
                      [3.0, 1.0, 0.5, 2.0]])  # square, so a wrong broadcast does not crash


@exercise(
    "01.3",
    title="Debug a 'stable' softmax that still returns NaN",
    hint="softmax(s) = softmax(s - c) holds when c is the same along one row. Print the number the "
    "code subtracts from each row, then what exp() gives for each row's entries.",
    solution=_solution_stable_softmax,
    kind="debug",
    minutes=10,
    difficulty=1,
    mistakes=[
        Mistake("the broken code, unchanged", (_broken_global_max,), "still NaN in rows 1 to 3"),
        Mistake("no shift at all", (_no_shift,), "exp(1000) = inf"),
        Mistake("shift by the minimum", (_shift_by_min,), "subtracted the row's minimum"),
        Mistake("max without keepdim", (_max_without_keepdim,), "keepdim=True"),
        Mistake("max over the wrong axis", (_max_over_columns,), "maximum of each column"),
        Mistake("normalised over the whole tensor", (_sum_over_everything,), "rows do not sum to 1"),
        Mistake("calls the library softmax", (lambda s: torch.softmax(s, -1),), "library softmax"),
    ],
)
def check_stable_softmax(fn: Callable[..., Any]) -> CheckResult:
    scores = _ROWS.clone()
    with _OpRecorder() as rec:
        got = fn(scores.clone())
    r = _as_tensor(got, "the weights")
    if isinstance(r, CheckResult):
        return r
    if _SOFTMAXES & set(rec.names):
        return fail("approach", "you called a library softmax (torch.softmax, F.softmax, "
                    "Tensor.softmax, ...): the point is to write it with exp and a sum, and see why "
                    "the shift makes it safe")
    want = torch.softmax(scores, dim=-1)
    if got.shape != want.shape:
        return fail("shape", f"the weights must have the shape of the scores, {tuple(want.shape)}; "
                    f"got {tuple(got.shape)}")
    if _same(got, want, 1e-6):
        return ok("Correct! Shifting each row by its own maximum makes the largest exponent exp(0) = 1 "
                  "(no overflow) and the denominator at least 1 (no 0/0), and changes nothing else.")
    found = _diagnose(got, [
        ("values", _broken_global_max(scores),
         "still NaN in rows 1 to 3, although row 1 is an ordinary [0, -1, -2, -3]: look at the number "
         "subtracted from that row, and at what exp() then gives"),
        ("values", _no_shift(scores),
         "overflow: exp(1000) = inf in float32 (its largest number is about 3.4e38 = e^88.7), and "
         "inf/inf = NaN; the very negative row underflows to 0/0. Shift each row by its maximum"),
        ("values", _shift_by_min(scores),
         "you subtracted the row's minimum: row 0 then has exp(1000 - 900) = exp(100) = inf. The "
         "maximum is the shift that makes every exponent <= 0"),
        ("values", _max_without_keepdim(scores),
         "the shapes broadcast silently: scores.amax(dim=-1) has shape (4,), which lines up with the "
         "COLUMNS, so row i subtracts the maximum of row j from its entry j. Use keepdim=True "
         "(shape (4, 1))"),
        ("values", _max_over_columns(scores),
         "you subtracted the maximum of each column (dim=0); the shift must be constant along a "
         "row, so take the maximum over the last axis"),
        ("values", _sum_over_everything(scores),
         "your rows do not sum to 1: you divided by the sum over the whole tensor; sum over the last "
         "axis with keepdim=True"),
    ], atol=1e-6)
    if found is not None:
        return found
    if torch.isnan(got).any():
        rows = sorted({int(i) for i in torch.isnan(got).nonzero()[:, 0]})
        return fail("values", f"NaN in rows {rows}: some exp overflowed (inf/inf) or a whole row "
                    "underflowed (0/0). Check the shift of those rows")
    return fail("values", f"the weights differ from the softmax {_first_difference(got, want, 'row, col', 1e-6)}")
