"""Exercises of notebook 03 (self-attention and positions).

* ``03.1`` (extend) — a fourth kind of position: a learned bias on the scores that depends only
  on the offset j - i (as in T5, without its buckets),
  ``fn(q (B, T, d), k (B, T, d), v (B, T, dv), rel_bias (2T-1,)) -> (out (B, T, dv), weights (B, T, T))``.
* ``03.2`` (predict) — how many positions the slowest pair of RoPE needs for one full turn with
  head_dim 128 and base 500,000: a number, compared with the course's ``RotaryEmbedding``.
* ``03.3`` (debug) — a rotary embedding for decoding with a cache (positions ``offset..``) with
  three bugs: ``fn(x (..., T, D), offset) -> (..., T, D)``.

>>> from course_utils.exercises import check, solution_answer
>>> all(check(i, *solution_answer(i)).passed for i in ("03.1", "03.2", "03.3"))
True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch

from . import CheckResult, Mistake, exercise, fail, ok
from .nb01 import _as_number, _as_tensor, _close, _diagnose, _first_difference, _gap, _same

# ---------------------------------------------------------------------------------------------
# 03.1 extend: a relative-position bias
# ---------------------------------------------------------------------------------------------


def _solution_relative_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            rel_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ/√d + b[j - i]) v, with b stored as rel_bias[(j - i) + T - 1], offsets -(T-1)..T-1."""
    T = q.size(-2)
    pos = torch.arange(T, device=q.device)
    offset = pos[None, :] - pos[:, None]  # (T, T): entry (i, j) is j - i (negative: the past)
    bias = rel_bias[offset + T - 1]  # (T, T): the same number along every diagonal
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)) + bias  # (B, T, T)
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def _rel_variant(index: str = "j-i", where: str = "scores", scale: str = "scores"):
    def fn(q, k, v, rel_bias):
        T = q.size(-2)
        pos = torch.arange(T)
        idx = {"j-i": pos[None, :] - pos[:, None] + T - 1, "i-j": pos[:, None] - pos[None, :] + T - 1,
               "j": (pos[None, :] + T - 1).expand(T, T)}[index]
        bias = rel_bias[idx]
        raw = q @ k.transpose(-2, -1)
        d = math.sqrt(q.size(-1))
        if where == "weights":
            w = torch.softmax(raw / d, -1) + bias
        elif scale == "both":
            w = torch.softmax((raw + bias) / d, -1)
        elif scale == "none":
            w = torch.softmax(raw + bias, -1)
        else:
            w = torch.softmax(raw / d + bias, -1)
        return w @ v, w
    return fn


@exercise(
    "03.1",
    title="A relative-position bias: a fourth kind of position",
    hint="Build the (T, T) matrix of offsets j - i with two aranges, shift it by T - 1 so it can index "
    "rel_bias, and add rel_bias[offsets] to the scaled scores before the softmax.",
    solution=_solution_relative_bias,
    kind="extend",
    minutes=20,
    difficulty=2,
    mistakes=[
        Mistake("indexed by i - j", (_rel_variant(index="i-j"),), "indexed by i - j"),
        Mistake("an absolute bias, by the key's position only", (_rel_variant(index="j"),),
                "depends only on the key's position"),
        Mistake("bias added after the softmax", (_rel_variant(where="weights"),), "after the softmax"),
        Mistake("bias divided by √d with the scores", (_rel_variant(scale="both"),), "divided the bias by √d"),
        Mistake("forgets the 1/√d", (_rel_variant(scale="none"),), "forgot to scale"),
    ],
)
def check_relative_bias(fn: Callable[..., Any]) -> CheckResult:
    g = torch.Generator().manual_seed(301)
    b, t, d, dv = 2, 5, 16, 3  # √d = 4: scaling mistakes show
    q, k, v = (torch.randn(b, t, n, generator=g) for n in (d, d, dv))
    rel_bias = 2 * torch.randn(2 * t - 1, generator=g)
    answer = fn(q.clone(), k.clone(), v.clone(), rel_bias.clone())
    if not isinstance(answer, tuple) or len(answer) != 2:
        return fail("type", f"return a pair (out, weights), got {type(answer).__name__}")
    out, weights = answer
    for name, x in (("out", out), ("weights", weights)):
        r = _as_tensor(x, name)
        if isinstance(r, CheckResult):
            return r
    want_out, want_w = _solution_relative_bias(q, k, v, rel_bias)
    if weights.shape != want_w.shape:
        return fail("shape", f"weights are (B, T, T) = {tuple(want_w.shape)}; got {tuple(weights.shape)}")
    if not _same(weights, want_w):
        found = _diagnose(weights, [
            ("values", _rel_variant(index="i-j")(q, k, v, rel_bias)[1],
             "your bias is indexed by i - j: rel_bias[T - 1 + o] must be the bias of a key o positions "
             "AFTER the query (o = j - i), so the past has o < 0. Yours mirrors it: the bias meant for "
             "the previous token lands on the next one"),
            ("values", _rel_variant(index="j")(q, k, v, rel_bias)[1],
             "your bias depends only on the key's position j: that is an absolute position bias. A "
             "relative one depends on the offset j - i, the same along every diagonal"),
            ("values", _rel_variant(where="weights")(q, k, v, rel_bias)[1],
             "you added the bias after the softmax, so the weights no longer sum to 1: add it to the "
             "scores, before the softmax"),
            ("values", _rel_variant(scale="both")(q, k, v, rel_bias)[1],
             "you divided the bias by √d together with the scores: scale q·k, then add the bias "
             "(so the bias means the same whatever the head size)"),
            ("values", _rel_variant(scale="none")(q, k, v, rel_bias)[1],
             "you forgot to scale q·k by 1/√d before adding the bias"),
        ])
        if found is not None:
            return found
        return fail("values", f"the weights differ from softmax(q kᵀ/√d + b[j - i]) "
                    f"{_first_difference(weights, want_w, 'b, query i, key j')}")
    if out.shape != want_out.shape or not _same(out, want_out):
        return fail("values", "the weights are right but out is not weights @ v")
    # use it: no positions in the tokens, only a bias that favours offset -1
    tokens = torch.randint(0, 8, (1, 12), generator=g)
    one_hot = torch.nn.functional.one_hot(tokens, 8).float()  # (1, T, 8)
    zeros = torch.zeros(1, 12, 4)
    copy_bias = torch.zeros(23)
    copy_bias[12 - 1 - 1] = 20.0  # offset j - i = -1: the previous token
    copied, _ = fn(zeros, zeros, one_hot, copy_bias)
    right = (copied[0, 1:].argmax(-1) == tokens[0, :-1]).float().mean().item()
    return ok("Correct! With zero queries and keys and a bias of 20 at offset -1 only, your layer "
              f"copies the previous token at {right:.0%} of the positions: the task of section 6, "
              "solved without adding any position to the tokens, and for any sequence length up to "
              "the table's.")


# ---------------------------------------------------------------------------------------------
# 03.2 predict: how long does RoPE's slowest pair take to turn once?
# ---------------------------------------------------------------------------------------------

_HEAD_DIM, _BASE = 128, 500_000.0


def _measured_turn() -> float:
    """Positions until the slowest pair of the course's RotaryEmbedding has turned by 2π."""
    from course_utils.positional import RotaryEmbedding

    rope = RotaryEmbedding(_HEAD_DIM, base=_BASE)
    theta = rope.inv_freq[-1].double()  # radians per position of the last pair
    positions = torch.arange(0, 5_000_000, 100, dtype=torch.float64)
    angle = positions * theta
    first = int(torch.nonzero(angle >= 2 * math.pi)[0])  # the first sampled position past a turn
    lo = positions[first - 1].item()
    return lo + (2 * math.pi - lo * theta.item()) / theta.item()  # interpolate inside the last step


def _solution_rope_turn() -> float:
    """Pair i turns by θ_i = base^(-2i/D) per position; the slowest is the last, i = D/2 - 1."""
    D, base = 128, 500_000.0
    theta_slowest = base ** (-(D - 2) / D)  # 2i/D with i = D/2 - 1 is (D - 2)/D, not 1
    return 2 * math.pi / theta_slowest  # one full turn is 2π radians: about 2.56 million positions


@exercise(
    "03.2",
    title="Predict how many positions RoPE's slowest pair needs to turn once (Llama 3's settings)",
    hint="Pair i turns by θ_i = base^(-2i/D) radians per position, i = 0 .. D/2 - 1. Which i is the "
    "slowest, what is its exponent, and how many radians make one turn?",
    solution=_solution_rope_turn,
    solution_args=lambda: (_solution_rope_turn(),),
    kind="predict",
    minutes=10,
    difficulty=1,
    mistakes=[
        Mistake("the last pair taken as i = D/2", (2 * math.pi * _BASE,), "i = 0 .. D/2 - 1"),
        Mistake("radians, not turns", (_BASE ** ((_HEAD_DIM - 2) / _HEAD_DIM),), "2π radians"),
        Mistake("exponent -i/D instead of -2i/D", (2 * math.pi * _BASE ** ((_HEAD_DIM - 2) / (2 * _HEAD_DIM)),),
                "-2i/D"),
        Mistake("the original base 10000", (2 * math.pi * 10000 ** ((_HEAD_DIM - 2) / _HEAD_DIM),),
                "base 500,000"),
        Mistake("the fastest pair", (2 * math.pi,), "fastest pair"),
    ],
)
def check_rope_turn(prediction: Any) -> CheckResult:
    pred = _as_number(prediction, "your prediction (positions)")
    measured = _measured_turn()
    said = (f"you predicted {pred:,.0f} positions; from the frequencies of the course's "
            f"RotaryEmbedding({_HEAD_DIM}, base={_BASE:,.0f}): {measured:,.0f}")
    if _close(pred, measured, 0.01):
        context = 128_000
        return ok(f"Correct! {said}. In a 128k-token context this pair turns by only "
                  f"{360 * context / measured:.0f}°: the slowest pairs barely move, so their part of "
                  "the score hardly depends on the offset anywhere in the context.")
    known = [
        (2 * math.pi * _BASE, f"that is 2π·base, the exponent for i = D/2; the pairs are i = 0 .. D/2 - 1, "
                              f"so the slowest has θ = base^(-(D-2)/D) = base^(-{_HEAD_DIM - 2}/{_HEAD_DIM})"),
        (_BASE ** ((_HEAD_DIM - 2) / _HEAD_DIM), "that is 1/θ, the positions per radian; a full turn is "
                                                  "2π radians"),
        (2 * math.pi * _BASE ** ((_HEAD_DIM - 2) / (2 * _HEAD_DIM)),
         "the exponent is -2i/D (pairs step the exponent by 2/D), not -i/D"),
        (2 * math.pi * 10000 ** ((_HEAD_DIM - 2) / _HEAD_DIM), "that uses base 10,000 (the original "
                                                                "RoPE); these settings use base 500,000"),
        (2 * math.pi, "that is the fastest pair (i = 0, θ = 1 radian per position); the question asks "
                      "for the slowest"),
    ]
    for value, message in known:
        if _close(pred, value, 0.01):
            return fail("values", f"{said}. {message}.")
    return fail("values", f"{said}; yours is {_gap(pred, measured)}. Write θ_i for the last pair, then "
                "count the positions it takes to cover 2π.")


# ---------------------------------------------------------------------------------------------
# 03.3 debug: a rotary embedding for decoding with a cache
# ---------------------------------------------------------------------------------------------


def _solution_rope_offset(x: torch.Tensor, offset: int = 0, base: float = 10000.0) -> torch.Tensor:
    """x (..., T, D): rotate pair (i, i + D/2) of the token at position offset + t by (offset + t)·θ_i."""
    T, D = x.shape[-2:]
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)  # (D/2,) θ_i SHRINKS with i
    positions = offset + torch.arange(T, dtype=torch.float32)  # the new tokens sit after the cache
    angle = positions[:, None] * theta  # (T, D/2)
    cos, sin = angle.cos(), angle.sin()
    first, second = x[..., : D // 2], x[..., D // 2 :]  # pair i is (i, i + D/2): "rotate half"
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


def _rope_variant(neg: bool = True, use_offset: bool = True, layout: str = "half", sign: float = 1.0,
                  shift: int = 0):
    def fn(x, offset=0, base=10000.0):
        T, D = x.shape[-2:]
        e = torch.arange(0, D, 2, dtype=torch.float32) / D
        theta = base ** (-e if neg else e)
        pos = (offset if use_offset else 0) + shift + torch.arange(T, dtype=torch.float32)
        angle = sign * pos[:, None] * theta
        cos, sin = angle.cos(), angle.sin()
        if layout == "half":
            a, b = x[..., : D // 2], x[..., D // 2 :]
        else:
            a, b = x[..., 0::2], x[..., 1::2]
        ra, rb = a * cos - b * sin, a * sin + b * cos
        if layout == "interleaved":
            return torch.stack([ra, rb], dim=-1).flatten(-2)
        return torch.cat([ra, rb], dim=-1)
    return fn


_BUGS = {
    "neg": "θ_i = base^(+2i/D) grows with i (the minus sign is missing), so the pairs spin faster and "
           "faster instead of slower and slower",
    "offset": "the positions start at 0 instead of offset: the new tokens are rotated as if they "
              "were the first of the sequence, so their scores against the cached keys use wrong offsets",
    "layout": "the pairs are read as (2i, 2i+1) (x[..., 0::2], x[..., 1::2]) but written back as halves: "
              "the course's RoPE pairs dim i with dim i + D/2 (x[..., :D/2], x[..., D/2:])",
}


@exercise(
    "03.3",
    title="Debug a rotary embedding for decoding with a cache (three bugs)",
    hint="Check each line against section 5: the frequencies θ_i, the positions the new tokens really "
    "have, and which two dims form a pair. Test single changes against "
    "RotaryEmbedding(D).rotate(x, offset).",
    solution=_solution_rope_offset,
    kind="debug",
    minutes=15,
    difficulty=2,
    mistakes=[
        Mistake("the broken code, unchanged", (_rope_variant(neg=False, use_offset=False, layout="mixed"),),
                "all three bugs are still there"),
        Mistake("only the minus sign fixed", (_rope_variant(use_offset=False, layout="mixed"),),
                "two bugs left"),
        Mistake("only the layout left", (_rope_variant(layout="mixed"),), "written back as halves"),
        Mistake("only the offset left", (_rope_variant(use_offset=False),), "start at 0 instead of offset"),
        Mistake("only the sign left", (_rope_variant(neg=False),), "minus sign is missing"),
        Mistake("interleaved layout throughout", (_rope_variant(layout="interleaved"),), "interleaved"),
        Mistake("rotates the wrong way", (_rope_variant(sign=-1.0),), "the wrong way"),
        Mistake("positions from offset + 1", (_rope_variant(shift=1),), "offset + 1"),
    ],
)
def check_rope_offset(fn: Callable[..., Any]) -> CheckResult:
    from course_utils.positional import RotaryEmbedding

    g = torch.Generator().manual_seed(303)
    x = torch.randn(2, 3, 5, 8, generator=g)  # (B, H, T, D): 5 new tokens after a cache of 7
    offset = 7
    got = fn(x.clone(), offset)
    r = _as_tensor(got, "the rotated tensor")
    if isinstance(r, CheckResult):
        return r
    want = RotaryEmbedding(8).rotate(x, offset)
    if got.shape != want.shape:
        return fail("shape", f"RoPE keeps the shape of x, {tuple(want.shape)}; got {tuple(got.shape)}")
    if _same(got, want):
        return ok("Correct! Equal to the course's RotaryEmbedding(8).rotate(x, offset=7): the new "
                  "tokens are rotated for the positions they really have.")
    for remaining in itertools.chain.from_iterable(itertools.combinations(_BUGS, n) for n in (1, 2, 3)):
        variant = _rope_variant(neg="neg" not in remaining, use_offset="offset" not in remaining,
                                layout="mixed" if "layout" in remaining else "half")
        if _same(got, variant(x, offset)):
            if len(remaining) == 3:
                return fail("values", "all three bugs are still there")
            count = "two bugs left: " if len(remaining) == 2 else "one bug left: "
            return fail("values", count + "; ".join(_BUGS[b] for b in remaining))
    found = _diagnose(got, [
        ("values", _rope_variant(layout="interleaved")(x, offset),
         "this is the interleaved layout (pairs (2i, 2i+1) read and written in place, as in GPT-J): a "
         "valid rotary embedding, but not the course's (and Llama's) rotate-half layout; weights "
         "trained with one give wrong scores with the other"),
        ("values", _rope_variant(sign=-1.0)(x, offset),
         "you rotate the wrong way (by -mθ): (a cos + b sin, -a sin + b cos) is R(-mθ). The course "
         "uses (a cos - b sin, a sin + b cos)"),
        ("values", _rope_variant(shift=1)(x, offset),
         "off by one: your positions start at offset + 1; the first new token sits at position offset "
         "(the cache holds positions 0 .. offset - 1)"),
    ])
    if found is not None:
        return found
    return fail("values", f"the rotated tensor differs from RotaryEmbedding(8).rotate(x, 7) "
                f"{_first_difference(got, want, 'b, h, t, dim')}")
