"""Exercises of notebook 02 (additive attention).

* ``02.1`` (predict) — the size in MiB of the largest tensor that additive attention keeps for
  the backward pass at B = 32, Lq = Lk = 64, h = 64 (float32), measured with autograd's
  saved-tensor hooks.
* ``02.2`` (derive) — the gradient of the additive score with respect to the query,
  ``fn(query (dq,), keys (Lk, dk), W_q (h, dq), W_k (h, dk), w_v (h,)) -> (Lk, dq)``: row j is
  ∂a(q, k_j)/∂q. Without autograd.
* ``02.3`` (extend) — additive scores computed a chunk of keys at a time, so that the
  ``(B, Lq, Lk, h)`` tensor is never built:
  ``fn(q_h (B, Lq, h), k_h (B, Lk, h), w_v (h,), chunk) -> scores (B, Lq, Lk)``.

>>> from course_utils.exercises import check, solution_answer
>>> all(check(i, *solution_answer(i)).passed for i in ("02.1", "02.2", "02.3"))
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import CheckResult, Mistake, exercise, fail, ok
from .nb01 import (
    _as_number,
    _as_tensor,
    _close,
    _diagnose,
    _first_difference,
    _gap,
    _OpRecorder,
    _run_without_autograd,
    _same,
)

# ---------------------------------------------------------------------------------------------
# 02.1 predict: what additive attention keeps for the backward pass
# ---------------------------------------------------------------------------------------------

_B, _L, _H = 32, 64, 64  # batch, Lq = Lk, hidden size h = d_q = d_k


def _measure_saved() -> tuple[float, tuple[int, ...], float]:
    """(largest saved tensor in MiB, its shape, all saved tensors in MiB) for one forward pass."""
    from course_utils.attention import AdditiveAttention

    torch.manual_seed(21)
    layer = AdditiveAttention(_H, _H, _H)
    x = torch.randn(_B, _L, _H)
    storages: dict[int, tuple[int, tuple[int, ...]]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()  # views of one tensor share it: count it once
        storages[storage.data_ptr()] = (storage.nbytes(), tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, x)
    nbytes, shape = max(storages.values())
    return nbytes / 2**20, shape, sum(n for n, _ in storages.values()) / 2**20


def _solution_saved_mib() -> float:
    """The (B, Lq, Lk, h) tanh output: tanh's backward needs it (tanh' = 1 - tanh²), and so does
    the w_v projection (its weight gradient). The pre-activation sum is freed after the tanh."""
    B, Lq, Lk, h = 32, 64, 64, 64
    bytes_per_float32 = 4
    return B * Lq * Lk * h * bytes_per_float32 / 2**20  # MiB = 2**20 bytes: 32.0


@exercise(
    "02.1",
    title="Predict the largest tensor additive attention keeps for backward",
    hint="Which tensor has one entry per (batch, query, key, hidden unit)? Count its numbers, times "
    "4 bytes for float32, divided by 2**20 for MiB. Then ask: does tanh's backward need its input, "
    "its output, or both?",
    solution=_solution_saved_mib,
    solution_args=lambda: (_solution_saved_mib(),),
    kind="predict",
    minutes=10,
    difficulty=1,
    mistakes=[
        Mistake("the (B, Lq, Lk) scores", (0.5,), "the (B, Lq, Lk) scores"),
        Mistake("one byte per number", (8.0,), "4 bytes"),
        Mistake("pre-activation and tanh output both kept", (64.0,), "tanh's backward needs only its output"),
        Mistake("forgets the batch", (1.0,), "the batch"),
        Mistake("megabytes instead of MiB", (33.554432,), "megabytes"),
    ],
)
def check_saved_mib(prediction: Any) -> CheckResult:
    pred = _as_number(prediction, "your prediction (MiB)")
    largest, shape, total = _measure_saved()
    said = (f"you predicted {pred:g} MiB; measured: the largest tensor saved for backward is "
            f"{largest:.1f} MiB, shape {shape} = (B·Lq·Lk, h)")
    if _close(pred, largest, 0.02):
        return ok(f"Correct! {said}; everything saved adds up to {total:.1f} MiB. The 4-D tensor is "
                  "64 times the (B, Lq, Lk) scores: its size, not its FLOPs, is the price of "
                  "additive attention.")
    truth = largest
    known = [
        (truth / _H, "that is the (B, Lq, Lk) scores; the tensor behind them has one entry per hidden "
                     f"unit too: (B, Lq, Lk, h), {_H} times larger"),
        (truth / 4, "that counts one byte per number; a float32 takes 4 bytes"),
        (truth * 2, "that counts two 4-D tensors, the sum W_q q + W_k k and its tanh; tanh's backward "
                    "needs only its output (tanh' = 1 - tanh²), so the sum is freed"),
        (truth / _B, "you left out the batch: every one of the B = 32 sequences has its own 4-D block"),
        (truth * 2**20 / 1e6, "that is the size in megabytes (10⁶ bytes); a MiB is 2²⁰ = 1,048,576 bytes"),
    ]
    for value, message in known:
        if _close(pred, value, 0.01):
            return fail("values", f"{said}. {message}.")
    return fail("values", f"{said}; yours is {_gap(pred, truth)}. Which tensor has an entry per "
                "(batch, query, key, hidden unit), and how many bytes is a float32?")


# ---------------------------------------------------------------------------------------------
# 02.2 derive: the gradient of the additive score with respect to the query
# ---------------------------------------------------------------------------------------------


def _solution_score_grad(query: torch.Tensor, keys: torch.Tensor, W_q: torch.Tensor,
                         W_k: torch.Tensor, w_v: torch.Tensor) -> torch.Tensor:
    """Row j: ∂a_j/∂q with a_j = w_vᵀ tanh(z_j), z_j = W_q q + W_k k_j.

    Chain rule: ∂a_j/∂z_j = w_v ⊙ (1 - tanh²(z_j)), and ∂z_j/∂q = W_q, so ∂a_j/∂q = W_qᵀ (w_v ⊙ (1 - tanh²(z_j))).
    """
    z = query @ W_q.T + keys @ W_k.T  # (Lk, h): row j is z_j
    through_tanh = w_v * (1 - torch.tanh(z) ** 2)  # (Lk, h): ∂a_j/∂z_j, one row per key
    return through_tanh @ W_q  # (Lk, dq): row j is W_qᵀ (...), written as a row vector


def _grad_variant(kind: str):
    def fn(query, keys, W_q, W_k, w_v):
        z = query @ W_q.T + keys @ W_k.T
        factor = {
            "no tanh'": torch.ones_like(z),
            "1 - tanh": 1 - torch.tanh(z),
            "1 - z²": 1 - z**2,
            "tanh": torch.tanh(z),
            "sign": -(1 - torch.tanh(z) ** 2),
        }[kind]
        return (w_v * factor) @ W_q
    return fn


def _no_chain_through_W_q(query, keys, W_q, W_k, w_v):
    z = query @ W_q.T + keys @ W_k.T
    return w_v * (1 - torch.tanh(z) ** 2)  # (Lk, h): the gradient with respect to z, not q


@exercise(
    "02.2",
    title="Derive ∂score/∂query for additive attention",
    hint="Name the pre-activation z_j = W_q q + W_k k_j, so a_j = w_vᵀ tanh(z_j). Then "
    "∂a_j/∂z_j = w_v ⊙ tanh'(z_j) with tanh' = 1 - tanh², and ∂z_j/∂q = W_q. All keys at once: "
    "(w_v * (1 - tanh(Z)**2)) @ W_q with Z of shape (Lk, h).",
    solution=_solution_score_grad,
    kind="derive",
    minutes=20,
    difficulty=2,
    mistakes=[
        Mistake("forgets tanh'", (_grad_variant("no tanh'"),), "every row is the same"),
        Mistake("tanh' = 1 - tanh", (_grad_variant("1 - tanh"),), "1 - tanh(z)²"),
        Mistake("tanh' evaluated on the pre-activation", (_grad_variant("1 - z²"),), "1 - z²"),
        Mistake("tanh instead of its derivative", (_grad_variant("tanh"),), "tanh itself"),
        Mistake("sign flipped", (_grad_variant("sign"),), "sign"),
        Mistake("stops at ∂a/∂z", (_no_chain_through_W_q,), "with respect to z_j"),
    ],
)
def check_score_grad(fn: Callable[..., Any]) -> CheckResult:
    g = torch.Generator().manual_seed(202)
    lk, dq, dk, h = 4, 5, 7, 6  # all different, so a wrong orientation cannot pass
    query = torch.randn(dq, generator=g, dtype=torch.float64)
    keys = torch.randn(lk, dk, generator=g, dtype=torch.float64)
    W_q = torch.randn(h, dq, generator=g, dtype=torch.float64) / 2
    W_k = torch.randn(h, dk, generator=g, dtype=torch.float64) / 2
    w_v = torch.randn(h, generator=g, dtype=torch.float64)
    got = _run_without_autograd(fn, query.clone(), keys.clone(), W_q.clone(), W_k.clone(), w_v.clone())
    r = _as_tensor(got, "the gradient")
    if isinstance(r, CheckResult):
        return r
    q = query.clone().requires_grad_(True)
    scores = torch.tanh(q @ W_q.T + keys @ W_k.T) @ w_v  # (Lk,)
    want = torch.stack([torch.autograd.grad(scores[j], q, retain_graph=True)[0] for j in range(lk)])
    if got.shape == (lk, h):
        return fail("values", f"your result has shape (Lk, h) = {(lk, h)}: that is the gradient with "
                    "respect to z_j = W_q q + W_k k_j; one more step of the chain rule (∂z_j/∂q = W_q) "
                    "brings it back to the query's size dq")
    if got.shape != want.shape:
        return fail("shape", f"one row per key, one column per query dimension: (Lk, dq) = "
                    f"{tuple(want.shape)}; got {tuple(got.shape)}")
    if _same(got, want, 1e-9):
        return ok("Correct! Each key gets its own gradient because tanh' depends on z_j. Without the "
                  "tanh every row would be W_qᵀ w_v: changing q would shift every score by the same "
                  "amount, which the softmax ignores. That is the cancellation of section 1, seen "
                  "through the gradient.")
    args = (query, keys, W_q, W_k, w_v)
    found = _diagnose(got, [
        ("values", _grad_variant("no tanh'")(*args),
         "every row is the same, W_qᵀ w_v: you left out tanh'(z_j). Without it the query's effect "
         "would not depend on the key (and the softmax would cancel it)"),
        ("values", _grad_variant("1 - tanh")(*args),
         "the derivative of tanh is 1 - tanh(z)², not 1 - tanh(z)"),
        ("values", _grad_variant("1 - z²")(*args),
         "tanh' = 1 - tanh(z)², with the tanh: you wrote 1 - z² on the pre-activation"),
        ("values", _grad_variant("tanh")(*args),
         "you multiplied by tanh itself; the chain rule needs its derivative, 1 - tanh(z)²"),
        ("values", _grad_variant("sign")(*args),
         "the sign is flipped: ∂a_j/∂q = +W_qᵀ (w_v ⊙ (1 - tanh²(z_j)))"),
    ], atol=1e-9)
    if found is not None:
        return found
    return fail("values", f"the gradient differs from autograd's {_first_difference(got, want, 'key j, dim', 1e-9)}")


# ---------------------------------------------------------------------------------------------
# 02.3 extend: additive scores, one chunk of keys at a time
# ---------------------------------------------------------------------------------------------


def _solution_chunked_scores(q_h: torch.Tensor, k_h: torch.Tensor, w_v: torch.Tensor,
                             chunk: int) -> torch.Tensor:
    """scores[b, i, j] = w_vᵀ tanh(q_h[b, i] + k_h[b, j]), building at most (B, Lq, chunk, h) at once."""
    pieces = []
    for start in range(0, k_h.size(1), chunk):  # the last chunk may be shorter
        k_part = k_h[:, start:start + chunk]  # (B, c, h) with c <= chunk
        features = torch.tanh(q_h[:, :, None, :] + k_part[:, None, :, :])  # (B, Lq, c, h)
        pieces.append(features @ w_v)  # (B, Lq, c); the 4-D block is freed before the next one
    return torch.cat(pieces, dim=-1)  # the keys' axis: (B, Lq, Lk)


def _full_scores(q_h, k_h, w_v, chunk):
    return torch.tanh(q_h[:, :, None, :] + k_h[:, None, :, :]) @ w_v


def _drops_tail(q_h, k_h, w_v, chunk):
    pieces = [torch.tanh(q_h[:, :, None] + k_h[:, None, s:s + chunk]) @ w_v
              for s in range(0, k_h.size(1) - chunk + 1, chunk)]
    return torch.cat(pieces, dim=-1)


def _first_chunk_only(q_h, k_h, w_v, chunk):
    pieces = [torch.tanh(q_h[:, :, None] + k_h[:, None, s:chunk]) @ w_v
              for s in range(0, k_h.size(1), chunk)]
    return torch.cat(pieces, dim=-1)


def _tanh_outside(q_h, k_h, w_v, chunk):
    pieces = [torch.tanh((q_h[:, :, None] + k_h[:, None, s:s + chunk]) @ w_v)
              for s in range(0, k_h.size(1), chunk)]
    return torch.cat(pieces, dim=-1)


def _transposed_chunks(q_h, k_h, w_v, chunk):
    pieces = [(torch.tanh(q_h[:, :, None] + k_h[:, None, s:s + chunk]) @ w_v).transpose(1, 2)
              for s in range(0, k_h.size(1), chunk)]
    return torch.cat(pieces, dim=1)


@exercise(
    "02.3",
    title="Additive scores without the 4-D tensor: one chunk of keys at a time",
    hint="Loop over start = 0, chunk, 2·chunk, ... < Lk; take k_h[:, start:start + chunk] (the last "
    "slice is shorter when Lk is not a multiple of chunk), score it against all queries, and "
    "concatenate the pieces along the keys' axis (dim=-1).",
    solution=_solution_chunked_scores,
    kind="extend",
    minutes=20,
    difficulty=2,
    mistakes=[
        Mistake("not chunked at all", (_full_scores,), "built the whole (B, Lq, Lk, h) tensor"),
        Mistake("drops the last, shorter chunk", (_drops_tail,), "the last chunk"),
        Mistake("slices start:chunk instead of start:start + chunk", (_first_chunk_only,),
                "start:start + chunk"),
        Mistake("tanh after the reduction", (_tanh_outside,), "tanh goes inside"),
        Mistake("pieces transposed", (_transposed_chunks,), "(B, Lk, Lq)"),
    ],
)
def check_chunked_scores(fn: Callable[..., Any]) -> CheckResult:
    g = torch.Generator().manual_seed(203)
    b, lq, lk, h, chunk = 2, 3, 10, 16, 4  # Lk is not a multiple of chunk
    q_h = torch.randn(b, lq, h, generator=g)
    k_h = torch.randn(b, lk, h, generator=g)
    w_v = torch.randn(h, generator=g)
    with _OpRecorder() as rec:
        got = fn(q_h.clone(), k_h.clone(), w_v.clone(), chunk)
    r = _as_tensor(got, "the scores")
    if isinstance(r, CheckResult):
        return r
    want = _full_scores(q_h, k_h, w_v, chunk)
    if got.shape == (b, lq, lk - lk % chunk):
        return fail("values", f"you return {lk - lk % chunk} of the {lk} keys: the last chunk (keys "
                    f"{lk - lk % chunk}..{lk - 1}) is shorter than chunk = {chunk} and got dropped. "
                    "range(0, Lk, chunk) with k_h[:, start:start + chunk] keeps it")
    if got.shape == (b, lq, chunk) or (got.shape[:2] == (b, lq) and got.size(-1) < lk
                                       and _same(got, want[..., :got.size(-1)])):
        return fail("values", f"only the first chunk's keys are scored ({got.size(-1)} of {lk}): the "
                    "slice must be k_h[:, start:start + chunk]; k_h[:, start:chunk] is empty once "
                    "start >= chunk")
    if got.shape == (b, lk, lq):
        return fail("shape", f"your scores are (B, Lk, Lq) = {tuple(got.shape)}: one row per query, "
                    "one column per key, so concatenate the pieces along the last axis")
    if got.shape != want.shape:
        return fail("shape", f"scores are (B, Lq, Lk) = {tuple(want.shape)}; got {tuple(got.shape)}")
    found = _diagnose(got, [
        ("values", _tanh_outside(q_h, k_h, w_v, chunk),
         "the tanh goes inside: w_vᵀ tanh(q_h + k_h), not tanh(w_vᵀ (q_h + k_h))"),
        ("values", torch.tanh(q_h[:, :, None] + k_h[:, None]).sum(-1),
         "you summed over the hidden units without w_v: reduce them with w_v (features @ w_v)"),
    ])
    if found is not None:
        return found
    if not _same(got, want):
        return fail("values", f"scores differ from w_vᵀ tanh(q_h + k_h) {_first_difference(got, want, 'b, i, j')}")
    limit = b * lq * chunk * h
    if rec.largest >= b * lq * lk * h:
        return fail("memory", f"the values are right, but you built the whole (B, Lq, Lk, h) tensor: the "
                    f"largest tensor your code created has {rec.largest} numbers, and one chunk "
                    f"(B, Lq, chunk, h) has {limit}. Score chunk keys at a time")
    if rec.largest > limit:
        return fail("memory", f"the values are right, but your largest tensor has {rec.largest} numbers, "
                    f"more than one chunk of keys against all queries, (B, Lq, chunk, h) = {limit}")
    return ok(f"Correct! The largest tensor you built had {rec.largest} numbers instead of "
              f"{b * lq * lk * h}: memory now grows with chunk, not with Lk. Now time it against the full "
              "scores at L = 128 with `benchmark` (section 3): the FLOPs are the same, so any "
              "difference is memory traffic. Notebook 08 tiles dot-product attention the same way, "
              "where the softmax makes it harder.")
