"""Exercises of notebook 13 (visual question answering).

* ``13.1`` (predict) — the accuracy of the best model that reads only the question, on the
  relational questions. The checker measures the answer priors of freshly generated questions.
* ``13.2`` (derive) — the entropy of each hop's attention map, averaged over questions:
  ``fn(maps (B, hops, N)) -> (hops,)`` in nats, with ``0 · log 0 = 0``.
* ``13.3`` (debug) — a stacked-attention forward pass written out by hand, with three bugs:
  ``fn(model, images, tokens) -> logits`` equal to ``model(images, tokens)[0]``.
* ``13.4`` (extend) — the grounding score per question kind and hop:
  ``fn(maps (B, hops, N), focus (B, N), kinds (B,), n_kinds) -> (n_kinds, hops)``.

>>> from course_utils.exercises import check, solution_answer
>>> all(check(i, *solution_answer(i)).passed for i in ("13.1", "13.2", "13.3", "13.4"))
True
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from course_utils.datasets.questions import ANSWERS_BY_KIND, KINDS, make_questions
from course_utils.vqa import StackedAttentionVQA

from . import CheckResult, Mistake, exercise, fail, ok
from .nb01 import _as_number, _close, _first_difference, _gap, _same

__all__ = ["check_blind_accuracy", "check_hop_entropy", "check_fixed_stacked_attention",
           "check_grounding_by_kind"]


# --------------------------------------------------------------------------------------------
# 13.1 predict: what the question alone can give
# --------------------------------------------------------------------------------------------


def _measured_prior_accuracy(n: int = 2000, seed: int = 131) -> float:
    """The best blind guess, measured: for each kind of question, always give the answer that
    kind has most often in ``n`` fresh questions (the question's first words tell the kind)."""
    data = make_questions(n, seed=seed)
    correct = 0
    for k in range(len(KINDS)):
        answers = data.answers[data.kinds == k].tolist()
        correct += Counter(answers).most_common(1)[0][1]
    return correct / len(data)


def _solution_blind_accuracy() -> float:
    # the four kinds come in equal numbers, and each kind's answers are dealt out evenly:
    # the best a blind model can do is chance within each kind
    chance = [1 / len(ANSWERS_BY_KIND[kind]) for kind in KINDS]  # 1/2, 1/6, 1/4, 1/4
    return sum(chance) / len(KINDS)  # (1/2 + 1/6 + 1/4 + 1/4) / 4 = 7/24 ≈ 0.29


@exercise(
    "13.1",
    title="Predict: how far can the question alone go?",
    hint="The first words of a question tell its kind (exist, colour, shape, count), and the kinds "
    "come in equal numbers. Within a kind, the answers are balanced: what is the best guess worth?",
    solution=_solution_blind_accuracy,
    solution_args=lambda: (_solution_blind_accuracy(),),
    kind="predict",
    minutes=5,
    difficulty=1,
    mistakes=[
        Mistake("uniform over all 16 answers", (1 / 16,), "tell its kind"),
        Mistake("always 'yes'", (0.5,), "only a quarter"),
        Mistake("four answers for every kind", (0.25,), "colour questions have six"),
        Mistake("a blind model gets nothing", (0.0,), "not zero"),
    ],
)
def check_blind_accuracy(prediction: Any) -> CheckResult:
    pred = _as_number(prediction, "your prediction (an accuracy between 0 and 1)")
    measured = _measured_prior_accuracy()
    said = (f"You predicted {pred:.3f}; always giving each kind's most common answer scores "
            f"{measured:.3f} on 2,000 fresh questions")
    if _close(pred, measured, 0.03):
        return ok(f"Correct! {said}. Chance within each kind, (1/2 + 1/6 + 1/4 + 1/4) / 4 = 7/24: the "
                  "generator deals the answers out evenly, so the question's words say which kind of "
                  "answer to give, never which one. Compare with the blind model in the notebook.")
    known = [
        (1 / 16, "that is a guess among all 16 answers; but a question's first words tell its kind "
                 "(\"how many ...\" is answered with a number), so a blind model guesses within a kind"),
        (0.5, "'yes' is right half of the time, but only on exist questions: they are only a quarter "
              "of the questions"),
        (0.25, "that assumes four answers for every kind; exist questions have two, colour "
               "questions have six"),
        (0.0, "a blind model is not zero: it can still guess the kind of answer from the question"),
    ]
    for value, message in known:
        if _close(pred, value, 0.02):
            return fail("values", f"{said}: {message}.")
    return fail("values", f"{said}; yours is {_gap(pred, measured)}. Work out the chance of the best "
                "guess within each kind, then average over the four kinds (equal numbers of each).")


# --------------------------------------------------------------------------------------------
# 13.2 derive: how sharp is each hop?
# --------------------------------------------------------------------------------------------


def _solution_hop_entropy(maps: torch.Tensor) -> torch.Tensor:
    # maps (B, hops, N): each row a distribution over the N grid cells
    plogp = torch.where(maps > 0, maps * maps.log(), torch.zeros_like(maps))  # 0 · log 0 = 0
    return -plogp.sum(dim=-1).mean(dim=0)  # entropy per question and hop, averaged over questions


def _entropy_bits(maps):
    return _solution_hop_entropy(maps) / torch.log(torch.tensor(2.0))


def _entropy_nan(maps):
    return -(maps * maps.log()).sum(-1).mean(0)


def _entropy_no_minus(maps):
    return -_solution_hop_entropy(maps)


def _entropy_batch_sum(maps):
    return _solution_hop_entropy(maps) * maps.size(0)


def _entropy_over_hops(maps):
    plogp = torch.where(maps > 0, maps * maps.log(), torch.zeros_like(maps))
    return -plogp.sum(dim=1).mean(dim=0)  # sums over hops: a (N,) result


def _entropy_of_mean_map(maps):
    mean = maps.mean(0)  # (hops, N): the average map
    return -torch.where(mean > 0, mean * mean.log(), torch.zeros_like(mean)).sum(-1)


def _hop_maps() -> torch.Tensor:
    gen = torch.Generator().manual_seed(13)
    maps = torch.softmax(3 * torch.randn(6, 2, 16, generator=gen), dim=-1)
    maps[0, 0] = 0.0
    maps[0, 0, 5] = 1.0  # a one-hot map: entropy 0, and fifteen exact zeros
    maps[1, 1] = 0.0
    maps[1, 1, [2, 3]] = 0.5  # two cells: entropy log 2
    return maps


@exercise(
    "13.2",
    title="Derive: the entropy of each hop's attention",
    hint="H(α) = -Σ_i α_i log α_i per question and hop (natural log: nats), with 0 · log 0 = 0 "
    "(torch.where); then average over the questions (dim 0), one number per hop.",
    solution=_solution_hop_entropy,
    kind="derive",
    minutes=10,
    difficulty=2,
    mistakes=[
        Mistake("bits instead of nats", (_entropy_bits,), "log2"),
        Mistake("0 · log 0 gives NaN", (_entropy_nan,), "0 · log 0"),
        Mistake("forgets the minus sign", (_entropy_no_minus,), "minus sign"),
        Mistake("sums over the questions", (_entropy_batch_sum,), "average over the questions"),
        Mistake("sums over the hops", (_entropy_over_hops,), "over the cells"),
        Mistake("entropy of the average map", (_entropy_of_mean_map,), "average map"),
    ],
)
def check_hop_entropy(fn) -> CheckResult:
    maps = _hop_maps()
    got = fn(maps.clone())
    want = _solution_hop_entropy(maps)
    if not isinstance(got, torch.Tensor):
        return fail("type", f"return a tensor, got {type(got).__name__}")
    if got.shape == (16,) and _same(got, _entropy_over_hops(maps)):
        return fail("shape", "you summed over the hops (dim 1): the entropy of a map sums over the cells "
                             "(dim -1), one value per hop")
    if got.shape != want.shape:
        return fail("shape", f"return one entropy per hop, shape {tuple(want.shape)}; got {tuple(got.shape)}")
    if torch.isnan(got).any():
        return fail("values", "your entropy is NaN: 0 · log 0 is 0 by convention, but 0 * log(0) is "
                              "0 * -inf = NaN in floating point; use torch.where(maps > 0, ...)")
    known = [
        (_entropy_bits, "you used log2 (bits); measure the entropy in nats, with the natural log"),
        (_entropy_no_minus, "your entropies are negative: H = -Σ α log α, you forgot the minus sign"),
        (_entropy_batch_sum, "you summed over the questions: average over the questions (dim 0)"),
        (_entropy_of_mean_map, "you took the entropy of the average map: compute each question's "
                               "entropy first, then average (a sharp map on a different cell per "
                               "question averages to a flat map)"),
    ]
    for wrong, message in known:
        if _same(got, wrong(maps)):
            return fail("values", message)
    if not _same(got, want):
        return fail("values", f"entropies differ {_first_difference(got, want, 'hop')}")
    return ok("Correct: 0 for a one-hot map, log 16 ≈ 2.77 nats for a uniform one over the 16 cells. "
              "Apply it to the notebook's maps: which hop looks at one cell, and which spreads?")


# --------------------------------------------------------------------------------------------
# 13.3 debug: a stacked-attention forward pass with three bugs
# --------------------------------------------------------------------------------------------


def _solution_stacked_attention(model, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    feats = model.encoder(images)  # (B, N, D): one feature per grid cell
    u = model.question(tokens)  # (B, D)
    for hop in model.hops:
        scores = hop.w_v(torch.tanh(hop.W_k(feats) + hop.W_q(u)[:, None]))[..., 0]  # (B, N)
        alpha = torch.softmax(scores, dim=-1)  # over the cells (fix 1: not over the batch)
        context = (alpha[..., None] * feats).sum(dim=1)  # (B, D)
        u = u + context  # fix 2: the next hop is asked with the refined query
    return model.classify(u)  # fix 3: the answer is read from u, the query after every hop


def _san_variant(softmax_dim: int = -1, refine: bool = True, read: str = "u"):
    def forward(model, images, tokens):
        feats = model.encoder(images)
        q = u = model.question(tokens)
        context = None
        for hop in model.hops:
            scores = hop.w_v(torch.tanh(hop.W_k(feats) + hop.W_q(u if refine else q)[:, None]))[..., 0]
            alpha = torch.softmax(scores, dim=softmax_dim)
            context = (alpha[..., None] * feats).sum(dim=1)
            u = u + context
        return model.classify(u if read == "u" else context)

    return forward


@exercise(
    "13.3",
    title="Debug: a stacked-attention forward pass",
    hint="Print alpha.sum(-1): each map must sum to 1 over the cells. Then follow u: which query "
    "does the second hop see, and what does the classifier read?",
    solution=_solution_stacked_attention,
    kind="debug",
    minutes=15,
    difficulty=2,
    mistakes=[
        Mistake("softmax over the batch", (_san_variant(softmax_dim=0),), "over the batch"),
        Mistake("every hop asked with the question", (_san_variant(refine=False),), "refined query"),
        Mistake("classifier reads the last context", (_san_variant(read="context"),), "reads u"),
        Mistake("all three bugs", (_san_variant(0, False, "context"),), "three bugs"),
    ],
)
def check_fixed_stacked_attention(fn) -> CheckResult:
    torch.manual_seed(13)
    model = StackedAttentionVQA(vocab_size=40, num_answers=16, hops=2, dim=16, attn_dim=16).eval()
    images, tokens = torch.rand(4, 3, 32, 32), torch.randint(4, 40, (4, 7))
    with torch.no_grad():
        got = fn(model, images, tokens)
        want = model(images, tokens)[0]
        if not isinstance(got, torch.Tensor):
            return fail("type", f"return the logits, a tensor; got {type(got).__name__}")
        if got.shape != want.shape:
            return fail("shape", f"the logits must have shape {tuple(want.shape)}, got {tuple(got.shape)}")
        known = [
            (_san_variant(0, False, "context"), "all three bugs are still there: the softmax, the "
                                                "second hop's query, and what the classifier reads"),
            (_san_variant(softmax_dim=0), "the softmax runs over the batch (dim 0): each question's map "
                                          "must be a distribution over its cells (dim -1)"),
            (_san_variant(refine=False), "every hop is asked with the question q: the second hop must be "
                                         "asked with the refined query u = q + context of hop 1"),
            (_san_variant(read="context"), "the classifier reads the last hop's context: it reads u, the "
                                           "query refined by every hop (Yang et al.'s u_K)"),
        ]
        for wrong, message in known:
            if _same(got, wrong(model, images, tokens)):
                return fail("values", message)
        if not _same(got, want):
            return fail("values", f"logits differ from model(images, tokens) "
                                  f"{_first_difference(got, want, 'b, answer')}")
    return ok("Correct: your forward pass equals StackedAttentionVQA's.")


# --------------------------------------------------------------------------------------------
# 13.4 extend: grounding, kind by kind
# --------------------------------------------------------------------------------------------


def _solution_grounding_by_kind(maps: torch.Tensor, focus: torch.Tensor, kinds: torch.Tensor,
                                n_kinds: int) -> torch.Tensor:
    # maps (B, hops, N), focus (B, N) bool, kinds (B,) long
    mass = (maps * focus[:, None, :]).sum(dim=-1)  # (B, hops): attention on the referred cells
    refers = focus.any(dim=1)  # a count of zero refers to nothing: left out
    out = torch.full((n_kinds, maps.size(1)), float("nan"))
    for k in range(n_kinds):
        rows = refers & (kinds == k)
        if rows.any():
            out[k] = mass[rows].mean(dim=0)
    return out


def _by_kind(values, keep, kinds, n_kinds, reduce=torch.mean):
    """(n_kinds, hops): ``reduce`` over the kept questions of each kind; NaN for a kind with none."""
    out = torch.full((n_kinds, values.size(1)), float("nan"))
    for k in range(n_kinds):
        rows = keep & (kinds == k)
        if rows.any():
            out[k] = reduce(values[rows], dim=0)
    return out


def _gbk_keep_empty(maps, focus, kinds, n_kinds):
    mass = (maps * focus[:, None, :]).sum(dim=-1)
    return _by_kind(mass, torch.ones_like(kinds, dtype=torch.bool), kinds, n_kinds)


def _gbk_peak(maps, focus, kinds, n_kinds):
    hit = focus[:, None, :].expand_as(maps).gather(2, maps.argmax(-1, keepdim=True))[..., 0].float()
    return _by_kind(hit, focus.any(1), kinds, n_kinds)


def _gbk_zero_for_missing(maps, focus, kinds, n_kinds):
    return torch.nan_to_num(_solution_grounding_by_kind(maps, focus, kinds, n_kinds), nan=0.0)


def _gbk_hops_averaged(maps, focus, kinds, n_kinds):
    return _solution_grounding_by_kind(maps, focus, kinds, n_kinds).mean(dim=1)


def _gbk_sum(maps, focus, kinds, n_kinds):
    mass = (maps * focus[:, None, :]).sum(dim=-1)
    return _by_kind(mass, focus.any(1), kinds, n_kinds, reduce=torch.sum)


def _gbk_case():
    gen = torch.Generator().manual_seed(134)
    maps = torch.softmax(2 * torch.randn(12, 2, 16, generator=gen), dim=-1)  # (B, hops, N)
    focus = torch.rand(12, 16, generator=gen) < 0.2
    focus[[2, 7]] = False  # two counts of zero: nothing referred to
    focus[0, 3] = True
    kinds = torch.tensor([0, 1, 1, 0, 2, 2, 1, 0, 1, 2, 0, 0])  # kind 3 never occurs
    return maps, focus, kinds, 4


@exercise(
    "13.4",
    title="Extend: grounding, kind by kind",
    hint="Mass on the referred cells per question and hop: (maps * focus[:, None, :]).sum(-1). Leave "
    "out the questions whose focus is empty, then average over the questions of each kind; a kind "
    "with no question gets NaN (nothing measured is not zero).",
    solution=_solution_grounding_by_kind,
    kind="extend",
    minutes=10,
    difficulty=2,
    mistakes=[
        Mistake("keeps the questions that refer to nothing", (_gbk_keep_empty,), "refer to no object"),
        Mistake("peak instead of mass", (_gbk_peak,), "most attended cell"),
        Mistake("0 for a kind with no question", (_gbk_zero_for_missing,), "NaN"),
        Mistake("averages the hops", (_gbk_hops_averaged,), "one value per hop"),
        Mistake("sums over the questions", (_gbk_sum,), "average over the questions"),
    ],
)
def check_grounding_by_kind(fn) -> CheckResult:
    maps, focus, kinds, n_kinds = _gbk_case()
    got = fn(maps.clone(), focus.clone(), kinds.clone(), n_kinds)
    want = _solution_grounding_by_kind(maps, focus, kinds, n_kinds)
    if not isinstance(got, torch.Tensor):
        return fail("type", f"return a tensor of shape {tuple(want.shape)}, got {type(got).__name__}")
    if got.shape == (n_kinds,) and _same(got, _gbk_hops_averaged(maps, focus, kinds, n_kinds)):
        return fail("shape", "you averaged the hops: return one value per hop for each kind, shape "
                             f"{tuple(want.shape)} — the hops look at different objects")
    if got.shape != want.shape:
        return fail("shape", f"return (n_kinds, hops) = {tuple(want.shape)}, got {tuple(got.shape)}")
    known = [
        (_gbk_keep_empty, "you kept the questions that refer to no object (a count of zero): their "
                          "focus is empty, so their mass is 0 whatever the model does; leave them out"),
        (_gbk_peak, "you scored whether the most attended cell is a referred one (the peak): this "
                    "exercise asks for the attention mass on the referred cells"),
        (_gbk_zero_for_missing, "a kind with no question gets 0 in your answer: nothing was measured, "
                                "so it must be NaN, not a score of zero"),
        (_gbk_sum, "you summed the masses over the questions: average over the questions of each kind"),
    ]
    for wrong, message in known:
        if _same(got, wrong(maps, focus, kinds, n_kinds)):
            return fail("values", message)
    if not _same(got, want):
        return fail("values", f"scores differ {_first_difference(got, want, 'kind, hop')}")
    return ok("Correct. Apply it to the notebook's maps: which kinds does each hop ground, and "
              "where is the model that fails on shape and exist questions looking?")
