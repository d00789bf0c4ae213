"""Exercises of notebook 04 (multi-head attention).

* ``04.1`` (predict) — how many MiB of ``(B, H, L, L)`` tensors autograd keeps for one
  multi-head self-attention layer in training (B = 2, E = 256, H = 8, L = 512, float32),
  measured with saved-tensor hooks.
* ``04.2`` (derive) — the forward FLOPs of multi-head self-attention,
  ``fn(B, L, E, H) -> FLOPs`` (matrix products, a multiply-add = 2 FLOPs), compared with
  ``torch.utils.flop_counter.FlopCounterMode``.
* ``04.3`` (debug) — per-head projection matrices read out of ``nn.MultiheadAttention``'s packed
  ``in_proj_weight``, with two bugs: ``fn(mha) -> (W_q, W_k, W_v)``, each ``(H, E, D)``.

>>> from course_utils.exercises import check, solution_answer
>>> all(check(i, *solution_answer(i)).passed for i in ("04.1", "04.2", "04.3"))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import CheckResult, Mistake, exercise, fail, ok
from .nb01 import _as_number, _as_tensor, _close, _first_difference, _gap, _same

__all__ = ["check_attention_memory", "check_mha_flops", "check_per_head_weights"]


class _PlainMultiHeadAttention(nn.Module):
    """The notebook's layer (section 3): four projections, split, softmax(q kᵀ/√D) v, merge."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.h = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(embed_dim, embed_dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, e = x.shape

        def split(y):
            return y.reshape(b, t, self.h, e // self.h).transpose(1, 2)  # (B, H, T, D)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(e // self.h), dim=-1)  # (B, H, T, T)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, t, e))


# --------------------------------------------------------------------------------------------
# 04.1 predict: the memory of the attention weights in training
# --------------------------------------------------------------------------------------------

_MB, _ME, _MH, _ML = 2, 256, 8, 512  # batch, width, heads, length


def _measure_attention_memory() -> tuple[float, int, float]:
    """(MiB in saved (.., L, L) tensors, how many there are, MiB of one (B, L, E) activation)."""
    torch.manual_seed(41)
    layer = _PlainMultiHeadAttention(_ME, _MH)
    x = torch.randn(_MB, _ML, _ME)
    square: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.dim() >= 2 and t.shape[-2:] == (_ML, _ML):
            storage = t.untyped_storage()
            square[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return sum(square.values()) / 2**20, len(square), x.numel() * 4 / 2**20


def _solution_attention_memory() -> float:
    """softmax's backward needs only its output, the (B, H, L, L) weights, which weights @ v keeps too."""
    B, H, L = 2, 8, 512
    bytes_per_float32 = 4
    return B * H * L * L * bytes_per_float32 / 2**20  # one (L, L) matrix per sequence and head: 16 MiB


@exercise(
    "04.1",
    title="Predict the memory autograd keeps for the attention weights",
    hint="Every sequence and every head has its own (L, L) matrix of weights. How many numbers is "
    "that, times 4 bytes? Then: does softmax's backward need the scores, the weights, or both?",
    solution=_solution_attention_memory,
    solution_args=lambda: (_solution_attention_memory(),),
    kind="predict",
    minutes=10,
    difficulty=1,
    mistakes=[
        Mistake("forgets the heads", (2.0,), "one (L, L) matrix per head"),
        Mistake("forgets the batch", (8.0,), "every sequence"),
        Mistake("one matrix per feature", (512.0,), "per head, not per feature"),
        Mistake("scores and weights both kept", (32.0,), "only its output"),
        Mistake("megabytes instead of MiB", (16.777216,), "megabytes"),
    ],
)
def check_attention_memory(prediction: Any) -> CheckResult:
    pred = _as_number(prediction, "your prediction (MiB)")
    measured, count, activation = _measure_attention_memory()
    said = (f"you predicted {pred:g} MiB; measured: autograd keeps {count} tensor(s) of shape "
            f"(B, H, L, L), {measured:.1f} MiB")
    if _close(pred, measured, 0.02):
        return ok(f"Correct! {said}. One activation (B, L, E) is {activation:g} MiB: the weights of ONE "
                  f"layer weigh as much as {measured / activation:.0f} of them, and they grow like L². "
                  "Notebook 08's tiled attention never stores them.")
    known = [
        (measured / _MH, "one (L, L) matrix per head: the H = 8 heads each have their own weights"),
        (measured / _MB, "every sequence of the batch (B = 2) has its own weights"),
        (measured * _ME / _MH, "the weights are per head, not per feature: (B, H, L, L), with H = 8, "
                               "not E = 256"),
        (measured * 2, "softmax's backward needs only its output (the weights); the scores before it "
                       "are freed"),
        (measured * 2**20 / 1e6, "that is megabytes (10⁶ bytes); a MiB is 2²⁰ bytes"),
    ]
    for value, message in known:
        if _close(pred, value, 0.01):
            return fail("values", f"{said}. {message}.")
    return fail("values", f"{said}; yours is {_gap(pred, measured)}. Count B·H·L·L numbers of 4 bytes.")


# --------------------------------------------------------------------------------------------
# 04.2 derive: the FLOPs of multi-head attention
# --------------------------------------------------------------------------------------------


def _solution_mha_flops(B: int, L: int, E: int, H: int) -> int:
    """Forward FLOPs of multi-head self-attention, matrix products only (a multiply-add = 2 FLOPs)."""
    projections = 4 * 2 * B * L * E * E  # q, k, v and the output projection: (B·L, E) @ (E, E) each
    D = E // H
    scores = H * 2 * B * L * L * D  # per head (L, D) @ (D, L); H·D = E, so H drops out
    weighted_sum = H * 2 * B * L * L * D  # per head (L, L) @ (L, D)
    return projections + scores + weighted_sum  # 8·B·L·E² + 4·B·L²·E, whatever H is


def _measure_flops(B: int, L: int, E: int, H: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    layer = _PlainMultiHeadAttention(E, H)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(torch.randn(B, L, E))
    return int(counter.get_total_flops())


_CONFIGS = [(2, 16, 32, 4), (1, 64, 48, 3), (3, 10, 64, 8)]


def _flops_variant(proj: int = 8, att: float = 4.0, heads: int = 0):
    def fn(B, L, E, H):
        return proj * B * L * E * E + att * B * L * L * E * H**heads
    return fn


@exercise(
    "04.2",
    title="Derive the FLOP count of multi-head self-attention",
    hint="Count each matrix product (m, k) @ (k, n) as 2·m·k·n FLOPs: four projections of (B·L, E) "
    "by (E, E); then, per head, the scores (L, D) @ (D, L) and the weighted sum (L, L) @ (L, D), "
    "for B sequences and H heads with D = E / H.",
    solution=_solution_mha_flops,
    kind="derive",
    minutes=15,
    difficulty=2,
    mistakes=[
        Mistake("forgets the output projection", (_flops_variant(proj=6),), "output projection"),
        Mistake("counts multiply-adds", (_flops_variant(proj=4, att=2.0),), "a multiply-add is 2 FLOPs"),
        Mistake("attention times H", (_flops_variant(heads=1),), "does not grow with the number of heads"),
        Mistake("attention for one head only", (_flops_variant(heads=-1),), "add up the H heads"),
        Mistake("forgets weights @ v", (_flops_variant(att=2.0),), "weights @ v"),
    ],
)
def check_mha_flops(fn: Callable[..., Any]) -> CheckResult:
    rows = []
    for cfg in _CONFIGS:
        got = fn(*cfg)
        if got is None or isinstance(got, bool) or not isinstance(got, (int, float, torch.Tensor)):
            return fail("type", f"fn{cfg} returned {type(got).__name__}; return a number of FLOPs")
        rows.append((cfg, float(got), _measure_flops(*cfg)))
    if all(_close(got, want, 1e-9) for _, got, want in rows):
        return ok("Correct! 8·B·L·E² for the projections plus 4·B·L²·E for the attention, equal to "
                  "FlopCounterMode on every configuration. The number of heads does not appear: "
                  "below L = 2E the projections cost more than the attention itself.")
    known = [
        (_flops_variant(proj=6), "2·B·L·E² FLOPs are missing: the output projection W^O is a fourth "
                                 "(E, E) matrix product"),
        (_flops_variant(proj=4, att=2.0), "you counted multiply-adds: a multiply-add is 2 FLOPs "
                                          "(FlopCounterMode counts 2·m·k·n for an (m, k) @ (k, n))"),
        (_flops_variant(heads=1), "your attention term is H times too large: each head's dot products "
                                  "are D = E/H long, so the H heads together cost as much as one head "
                                  "of width E. The cost does not grow with the number of heads"),
        (_flops_variant(heads=-1), "your attention term is H times too small: add up the H heads (each "
                                   "costs 4·B·L²·D)"),
        (_flops_variant(att=2.0), "half of the attention is missing: besides the scores q kᵀ there is "
                                  "the weighted sum weights @ v, the same size"),
    ]
    for variant, message in known:
        if all(_close(got, float(variant(*cfg)), 1e-9) for cfg, got, _ in rows):
            return fail("values", message)
    cfg, got, want = next((c, g, w) for c, g, w in rows if not _close(g, w, 1e-9))
    b, length, e, h = cfg
    more_heads = float(fn(b, length, e, 2 * h)) if e % (2 * h) == 0 else got
    if not _close(more_heads, got, 1e-9):
        return fail("values", f"at (B, L, E, H) = {cfg} you say {got:,.0f} FLOPs, FlopCounterMode "
                    f"measures {want:,.0f}; and your count changes with H (at H = {2 * h}: "
                    f"{more_heads:,.0f}), the measured one does not")
    return fail("values", f"at (B, L, E, H) = {cfg} you say {got:,.0f} FLOPs, FlopCounterMode measures "
                f"{want:,.0f} ({_gap(got, want)}). Count the projections and the two attention products "
                "separately")


# --------------------------------------------------------------------------------------------
# 04.3 debug: per-head matrices out of nn.MultiheadAttention's packed weights
# --------------------------------------------------------------------------------------------


def _solution_per_head_weights(mha: nn.MultiheadAttention) -> tuple[torch.Tensor, ...]:
    """(W_q, W_k, W_v), each (H, E, D): x @ W_q[h] are head h's queries (nn.Linear computes x Wᵀ)."""
    E, H = mha.embed_dim, mha.num_heads
    D = E // H
    w_q, w_k, w_v = mha.in_proj_weight.detach().chunk(3, dim=0)  # rows: [q; k; v], each (E, E)
    # in each (E, E), output feature = row; head h owns rows h·D .. (h+1)·D - 1
    return tuple(w.reshape(H, D, E).transpose(1, 2) for w in (w_q, w_k, w_v))  # (H, E, D)


def _heads_variant(chunk_dim: int = 0, layout: str = "right", order: str = "qkv"):
    def fn(mha):
        E, H = mha.embed_dim, mha.num_heads
        D = E // H
        parts = dict(zip("qkv", mha.in_proj_weight.detach().chunk(3, dim=chunk_dim), strict=False))
        shaped = {
            "right": lambda w: w.reshape(H, D, E).transpose(1, 2),
            "no transpose": lambda w: w.reshape(H, E, D),
            "strided": lambda w: w.reshape(D, H, E).permute(1, 2, 0),
            "untransposed": lambda w: w.reshape(H, D, E),
        }[layout]
        return tuple(shaped(parts[c]) for c in order)
    return fn


@exercise(
    "04.3",
    title="Per-head matrices out of nn.MultiheadAttention's packed in_proj_weight",
    hint="Which axis of in_proj_weight (3E, E) stacks W_q, W_k and W_v? nn.Linear stores a weight as "
    "(out_features, in_features): which axis of each (E, E) block belongs to the heads? Section 2 "
    "shows what a reshape without a transpose does.",
    solution=_solution_per_head_weights,
    kind="debug",
    minutes=15,
    difficulty=2,
    mistakes=[
        Mistake("the broken code, unchanged", (_heads_variant(chunk_dim=1, layout="no transpose"),),
                "both bugs are still there"),
        Mistake("missing transpose", (_heads_variant(layout="no transpose"),), "a missing transpose"),
        Mistake("chunked along the columns", (_heads_variant(chunk_dim=1),), "chunk(3, dim=1)"),
        Mistake("strided heads", (_heads_variant(layout="strided"),), "strided"),
        Mistake("q and k swapped", (_heads_variant(order="kqv"),), "[q; k; v]"),
        Mistake("(H, D, E), not transposed", (_heads_variant(layout="untransposed"),), "(H, D, E)"),
    ],
)
def check_per_head_weights(fn: Callable[..., Any]) -> CheckResult:
    torch.manual_seed(43)
    e, h = 12, 3  # E divisible by 3, so chunk(3, dim=1) does not crash either
    d = e // h
    mha = nn.MultiheadAttention(e, h, bias=False, batch_first=True)
    with torch.no_grad():
        got = fn(mha)
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return fail("type", f"return a tuple (W_q, W_k, W_v), got {type(got).__name__}")
    for name, w in zip(("W_q", "W_k", "W_v"), got, strict=False):
        r = _as_tensor(w, name)
        if isinstance(r, CheckResult):
            return r
    got = tuple(w.detach() for w in got)
    want = _solution_per_head_weights(mha)
    if all(w.shape == (h, d, e) for w in got) and d != e:
        if all(_same(g, w.transpose(1, 2)) for g, w in zip(got, want, strict=False)):
            return fail("shape", f"you returned (H, D, E) = {(h, d, e)}: that is each head's block as "
                        "nn.Linear stores it; x @ W needs (E, D), the transpose")
    if any(w.shape != (h, e, d) for w in got):
        return fail("shape", f"each matrix is (H, E, D) = {(h, e, d)}; got {[tuple(w.shape) for w in got]}")
    if all(_same(g, w) for g, w in zip(got, want, strict=False)):
        x = torch.randn(2, 5, e)
        with torch.no_grad():
            _, torch_w = mha(x, x, x, average_attn_weights=False)  # (B, H, T, T)
            q, k = x[:, None] @ got[0], x[:, None] @ got[1]  # (B, H, T, D)
            mine = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), -1)
        if not torch.allclose(mine, torch_w, atol=1e-6):
            return fail("values", "your matrices are the expected slices, but the per-head weights "
                        "they give differ from nn.MultiheadAttention's")
        return ok("Correct! With your matrices, softmax((x W_q[h])(x W_k[h])ᵀ/√D) equals "
                  "nn.MultiheadAttention's per-head weights for every head.")
    known = [
        (_heads_variant(chunk_dim=1, layout="no transpose"),
         "both bugs are still there: the per-head attention your matrices give differs from "
         "nn.MultiheadAttention's in every head"),
        (_heads_variant(layout="no transpose"),
         "a missing transpose: w.reshape(H, E, D) has the right shape and the wrong content (the bug "
         "of section 2, in the weights). Head h is rows h·D..(h+1)·D-1 of w: reshape to (H, D, E), "
         "then transpose the last two axes"),
        (_heads_variant(chunk_dim=1),
         "you split in_proj_weight with chunk(3, dim=1), along its columns (the input features); "
         "W_q, W_k and W_v are stacked along the rows, dim 0"),
        (_heads_variant(layout="strided"),
         "your heads are strided (head h = output features h, h+H, h+2H, ...); heads are contiguous "
         "slices of D features"),
        (_heads_variant(order="kqv"),
         "W_q and W_k are swapped: in_proj_weight stacks [q; k; v] in that order"),
    ]
    for variant, message in known:
        if all(_same(g, w) for g, w in zip(got, variant(mha), strict=False)):
            return fail("values", message)
    name, g, w = next((n, g, w) for n, g, w in zip(("W_q", "W_k", "W_v"), got, want, strict=False) if not _same(g, w))
    return fail("values", f"{name} differs {_first_difference(g, w, 'head, in, out')}")
