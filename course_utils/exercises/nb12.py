"""Exercises of notebook 12 (image captioning with visual attention).

* ``12.1`` (derive) — the doubly stochastic penalty from its formula, with a padding mask:
  ``fn(alphas (B, T, N), mask (B, T)) -> scalar``.
* ``12.2`` (predict) — the penalty of a *perfectly grounded* decoder on a sparse scene: a
  12-word caption (``<eos>`` included) whose every word looks at exactly one of the scene's 3
  objects, 4 words each, on the 4×4 grid. The checker measures it with
  :func:`~course_utils.captioning.doubly_stochastic_penalty`.
* ``12.3`` (extend) — a second attention hop for the Show-Attend-Tell decoder:
  ``fn(hop1, hop2, h (B, D), feats (B, N, D)) -> (z, alpha1, alpha2)``, where the second hop is
  asked with the query refined by what the first one read (Yang et al.'s stacked attention).

>>> from course_utils.exercises import check, solution_answer
>>> all(check(i, *solution_answer(i)).passed for i in ("12.1", "12.2", "12.3"))
True
"""

from __future__ import annotations

from typing import Any

import torch

from course_utils.attention import AdditiveAttention
from course_utils.captioning import doubly_stochastic_penalty

from . import CheckResult, Mistake, exercise, fail, ok
from .nb01 import _as_number, _close, _first_difference, _gap, _same

__all__ = ["check_penalty", "check_penalty_prediction", "check_two_hops"]


# --------------------------------------------------------------------------------------------
# 12.1 derive: the doubly stochastic penalty
# --------------------------------------------------------------------------------------------


def _solution_penalty(alphas: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # alphas (B, T, N): one attention map per word; mask (B, T): True for real words
    alphas = alphas * mask[..., None].to(alphas.dtype)  # padding steps give no attention
    per_cell = alphas.sum(dim=1)  # (B, N): total attention each cell received over the caption
    return ((1.0 - per_cell) ** 2).sum(dim=1).mean()  # sum over cells, mean over the batch


def _penalty_unmasked(alphas, mask):
    return ((1.0 - alphas.sum(1)) ** 2).sum(1).mean()


def _penalty_batch_sum(alphas, mask):
    return ((1.0 - (alphas * mask[..., None]).sum(1)) ** 2).sum(1).sum()


def _penalty_wrong_axis(alphas, mask):
    return ((1.0 - (alphas * mask[..., None]).sum(2)) ** 2).sum(1).mean()


def _penalty_no_square(alphas, mask):
    return (1.0 - (alphas * mask[..., None]).sum(1)).abs().sum(1).mean()


def _penalty_cell_mean(alphas, mask):
    return ((1.0 - (alphas * mask[..., None]).sum(1)) ** 2).mean(1).mean()


@exercise(
    "12.1",
    title="Derive: the doubly stochastic penalty, with padding",
    hint="Zero the maps of padding steps, sum over time (dim 1) to get each cell's total "
    "attention, then sum (1 - total)² over the cells and average over the batch.",
    solution=_solution_penalty,
    kind="derive",
    minutes=10,
    difficulty=1,
    mistakes=[
        Mistake("counts the padding steps", (_penalty_unmasked,), "counts the padding steps"),
        Mistake("sums over the batch", (_penalty_batch_sum,), "summed over the batch"),
        Mistake("sums over the cells first", (_penalty_wrong_axis,), "sum over time (dim 1)"),
        Mistake("forgets the square", (_penalty_no_square,), "square"),
        Mistake("averages over the cells", (_penalty_cell_mean,), "sum it over the cells"),
    ],
)
def check_penalty(fn) -> CheckResult:
    gen = torch.Generator().manual_seed(10)
    alphas = torch.softmax(torch.randn(3, 6, 16, generator=gen), dim=-1)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    got = fn(alphas, mask)
    expected = _solution_penalty(alphas, mask)
    if not isinstance(got, torch.Tensor):
        return fail("type", f"return a tensor, got {type(got).__name__}")
    if got.shape != ():
        return fail("shape", f"return a scalar (shape ()), got shape {tuple(got.shape)}: "
                             "did you forget to sum over the cells or average over the batch?")
    known = [
        (_penalty_unmasked, "masking", "your penalty counts the padding steps: multiply the maps by "
                                       "the mask first"),
        (_penalty_batch_sum, "values", "you summed over the batch: average it instead"),
        (_penalty_wrong_axis, "values", "you summed over the cells (dim 2) first: each cell's total "
                                        "comes from a sum over time (dim 1)"),
        (_penalty_no_square, "values", "you took |1 - total| instead of its square: the penalty "
                                       "squares each cell's gap"),
        (_penalty_cell_mean, "values", "you averaged over the cells: sum it over the cells (the "
                                       "formula is a sum over i), then average over the batch"),
    ]
    for wrong, kind, message in known:
        if _same(got, wrong(alphas, mask)):
            return fail(kind, message)
    if not _same(got, expected):
        return fail("values", f"expected {expected.item():.4f}, got {got.item():.4f}")
    return ok("Correct: every cell is pushed towards a total attention of 1 over the caption.")


# --------------------------------------------------------------------------------------------
# 12.2 predict: the penalty of a perfectly grounded decoder
# --------------------------------------------------------------------------------------------

_WORDS, _OBJECTS, _CELLS = 12, 3, 16


def _grounded_maps() -> torch.Tensor:
    """``(1, T, N)``: word t looks only at object t mod 3, which sits in cell 5 * (t mod 3)."""
    maps = torch.zeros(1, _WORDS, _CELLS)
    for t in range(_WORDS):
        maps[0, t, 5 * (t % _OBJECTS)] = 1.0
    return maps


def _solution_penalty_prediction() -> float:
    words_per_object = _WORDS / _OBJECTS  # 4 words' worth of attention on each object cell
    empty = (_CELLS - _OBJECTS) * (1 - 0) ** 2  # 13 cells nobody looks at: (1 - 0)² each
    objects = _OBJECTS * (1 - words_per_object) ** 2  # 3 cells looked at 4 times: (1 - 4)² each
    return empty + objects  # 13 + 27 = 40


@exercise(
    "12.2",
    title="Predict: the penalty of a perfectly grounded decoder",
    hint="Sum over time first: how much attention does each of the 16 cells receive over the 12 "
    "words? Then add up (1 - total)² over all 16 cells, the empty ones included.",
    solution=_solution_penalty_prediction,
    solution_args=lambda: (_solution_penalty_prediction(),),
    kind="predict",
    minutes=5,
    difficulty=1,
    mistakes=[
        Mistake("only the empty cells", (13.0,), "only the empty cells"),
        Mistake("only the object cells", (27.0,), "only the object cells"),
        Mistake("a grounded decoder pays nothing", (0.0,), "not zero"),
        Mistake("the uniform map's penalty", (1.0,), "uniform"),
        Mistake("every word on one cell", (136.0,), "one cell"),
    ],
)
def check_penalty_prediction(prediction: Any) -> CheckResult:
    pred = _as_number(prediction, "your prediction (a penalty)")
    measured = float(doubly_stochastic_penalty(_grounded_maps()))
    said = f"You predicted {pred:.4g}; doubly_stochastic_penalty on such maps gives {measured:.4g}"
    if _close(pred, measured, 0.01):
        return ok(f"Correct! {said}: 13 empty cells pay 1 each, the 3 object cells (1 - 4)² = 9 each. "
                  "The decoder that looks exactly where it should pays the most for the empty cells "
                  "and for the objects it looks at often: on sparse scenes the penalty pulls attention "
                  "off the objects (section 8 measures what that does to the captions).")
    known = [
        (13.0, "you counted only the empty cells (1 each): the 3 object cells receive 4 words' "
               "attention each, and pay (1 - 4)² = 9"),
        (27.0, "you counted only the object cells: each of the 13 empty cells receives no attention "
               "and pays (1 - 0)² = 1"),
        (0.0, "the penalty is not zero for a grounded decoder: it asks every cell to receive exactly "
              "one word's worth of attention, and here 13 cells get none and 3 get four"),
        (1.0, "that is the penalty of a uniform map (every word spreads 1/16 on each cell: "
              "16 × (1 - 12/16)² = 1); here each word puts everything on one object"),
        (136.0, "that is 15 + (1 - 12)²: every word on one cell; here the words are spread over the "
                "3 objects, 4 each"),
    ]
    for value, message in known:
        if _close(pred, value, 0.01):
            return fail("values", f"{said}: {message}.")
    return fail("values", f"{said}; yours is {_gap(pred, measured)}. Sum each cell's attention over "
                "the 12 words, then add (1 - total)² over the 16 cells.")


# --------------------------------------------------------------------------------------------
# 12.3 extend: a second attention hop
# --------------------------------------------------------------------------------------------


def _solution_two_hops(hop1, hop2, h: torch.Tensor, feats: torch.Tensor):
    # hop1, hop2: AdditiveAttention(query_dim=D, key_dim=D, ...); h (B, D); feats (B, N, D)
    c1, alpha1 = hop1(h, feats)  # (B, D), (B, N): the first look, asked with the state
    u1 = h + c1  # the query, refined by what the first hop read (Yang et al., 2016)
    c2, alpha2 = hop2(u1, feats)  # the second look, asked with the refined query
    return c1 + c2, alpha1, alpha2  # z: everything the two hops read


def _hops_same_query(hop1, hop2, h, feats):
    c1, a1 = hop1(h, feats)
    c2, a2 = hop2(h, feats)
    return c1 + c2, a1, a2


def _hops_one_module(hop1, hop2, h, feats):
    c1, a1 = hop1(h, feats)
    c2, a2 = hop1(h + c1, feats)
    return c1 + c2, a1, a2


def _hops_last_only(hop1, hop2, h, feats):
    c1, a1 = hop1(h, feats)
    c2, a2 = hop2(h + c1, feats)
    return c2, a1, a2


def _hops_query_lost_h(hop1, hop2, h, feats):
    c1, a1 = hop1(h, feats)
    c2, a2 = hop2(c1, feats)
    return c1 + c2, a1, a2


def _hops_refined_query(hop1, hop2, h, feats):
    c1, a1 = hop1(h, feats)
    c2, a2 = hop2(h + c1, feats)
    return h + c1 + c2, a1, a2


@exercise(
    "12.3",
    title="Extend: a second attention hop for Show, Attend and Tell",
    hint="Hop 1 is the decoder's usual look: hop1(h, feats). Add what it read to the query, "
    "u1 = h + c1, and ask hop 2 with u1. The context z is what both hops read: c1 + c2.",
    solution=_solution_two_hops,
    kind="extend",
    minutes=15,
    difficulty=2,
    mistakes=[
        Mistake("second hop asked with h", (_hops_same_query,), "asked with h alone"),
        Mistake("the first hop's module twice", (_hops_one_module,), "first hop's module"),
        Mistake("z is only the second context", (_hops_last_only,), "c1 + c2"),
        Mistake("second query without h", (_hops_query_lost_h,), "lost the decoder state"),
        Mistake("returns the refined query", (_hops_refined_query,), "not the query"),
    ],
)
def check_two_hops(fn) -> CheckResult:
    torch.manual_seed(12)
    dim, cells = 16, 16
    hop1, hop2 = AdditiveAttention(dim, dim, 24), AdditiveAttention(dim, dim, 24)
    h, feats = torch.randn(4, dim), torch.randn(4, cells, dim)
    with torch.no_grad():
        got = fn(hop1, hop2, h, feats)
        want = _solution_two_hops(hop1, hop2, h, feats)
        if not isinstance(got, tuple) or len(got) != 3 or not all(isinstance(t, torch.Tensor) for t in got):
            return fail("type", "return a tuple (z, alpha1, alpha2) of three tensors")
        for name, g, w in zip(("z", "alpha1", "alpha2"), got, want, strict=True):
            if g.shape != w.shape:
                return fail("shape", f"{name} must have shape {tuple(w.shape)}, got {tuple(g.shape)}")
        known = [
            (_hops_same_query, "your second hop was asked with h alone, like the first: its map "
                               "can only repeat a look the first hop could have taken. Ask it with "
                               "u1 = h + c1, the query refined by what the first hop read"),
            (_hops_one_module, "you used the first hop's module for the second hop: each hop has "
                               "its own weights (hop2), so that it can learn a different look"),
            (_hops_last_only, "z is what the decoder reads from the image: both looks, c1 + c2, "
                              "not only the second one"),
            (_hops_query_lost_h, "your second query lost the decoder state: u1 = h + c1 (the state "
                                 "says which word comes next; c1 says what the first look found)"),
            (_hops_refined_query, "you returned the refined query h + c1 + c2: the decoder already "
                                  "has h; z is what the hops read, c1 + c2, not the query"),
        ]
        for wrong, message in known:
            if all(_same(g, w) for g, w in zip(got, wrong(hop1, hop2, h, feats), strict=True)):
                return fail("values", message)
        for name, g, w in zip(("z", "alpha1", "alpha2"), got, want, strict=True):
            if not _same(g, w):
                return fail("values", f"{name} differs {_first_difference(g, w, 'b, i')}")
    return ok("Correct: the second hop looks with a query that knows what (and, through the cells' "
              "position embeddings, where) the first hop found. Plug it into AttentionLSTMDecoder."
              "step in place of the one self.attention call to train a two-hop captioner.")
