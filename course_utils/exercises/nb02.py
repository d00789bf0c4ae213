"""Exercises of notebook 02 (additive attention).

* ``02.1`` — Bahdanau's additive scores:
  ``fn(query (B, Lq, Dq), keys (B, Lk, Dk), W_q (Dq, H), W_k (Dk, H), w_v (H,)) -> scores (B, Lq, Lk)``.
* ``02.2`` — softmax that ignores padded keys:
  ``fn(scores (B, Lq, Lk), key_padding_mask (B, Lk), True = padding) -> weights (B, Lq, Lk)``;
  a query whose keys are all padding gets zero weights, never NaN.

>>> from course_utils.exercises import check, solution_function
>>> check("02.2", solution_function("02.2")).passed
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import CheckResult, exercise, fail, ok
from .nb01 import _as_tensor, _diagnose, _max_err, _same

# ---------------------------------------------------------------------------------------------
# 02.1 additive scores
# ---------------------------------------------------------------------------------------------


def _solution_additive_scores(query: torch.Tensor, keys: torch.Tensor, W_q: torch.Tensor,
                              W_k: torch.Tensor, w_v: torch.Tensor) -> torch.Tensor:
    """score[b, i, j] = w_vᵀ tanh(W_q q_i + W_k k_j), every query against every key."""
    q_h = query @ W_q  # (B, Lq, H)
    k_h = keys @ W_k  # (B, Lk, H)
    features = torch.tanh(q_h[:, :, None, :] + k_h[:, None, :, :])  # (B, Lq, Lk, H)
    return features @ w_v  # (B, Lq, Lk)


@exercise(
    "02.1",
    title="Additive (Bahdanau) scores",
    hint="Project both sides into the hidden size H, add them with broadcasting "
    "(B, Lq, 1, H) + (B, 1, Lk, H), apply tanh, then reduce H with w_v.",
    solution=_solution_additive_scores,
)
def check_additive_scores(fn: Callable[..., Any]) -> CheckResult:
    g = torch.Generator().manual_seed(201)
    b, lq, lk, dq, dk, h = 2, 3, 5, 6, 10, 8
    query = torch.randn(b, lq, dq, generator=g)
    keys = torch.randn(b, lk, dk, generator=g)
    W_q = torch.randn(dq, h, generator=g)
    W_k = torch.randn(dk, h, generator=g)
    w_v = torch.randn(h, generator=g)
    scores = fn(query.clone(), keys.clone(), W_q.clone(), W_k.clone(), w_v.clone())
    r = _as_tensor(scores, "the scores")
    if isinstance(r, CheckResult):
        return r
    ref = _solution_additive_scores(query, keys, W_q, W_k, w_v)
    if scores.shape == (b, lk, lq):
        return fail("shape", f"your scores are (B, Lk, Lq) = {tuple(scores.shape)}; expected (B, Lq, Lk) = "
                    f"{(b, lq, lk)}: one row per query, one column per key")
    if scores.shape == (b, lq, lk, h):
        return fail("shape", f"your scores still have the hidden axis, shape {tuple(scores.shape)}: reduce it "
                    "with w_v (features @ w_v)")
    if scores.shape != ref.shape:
        return fail("shape", f"scores should have shape (B, Lq, Lk) = {tuple(ref.shape)}, got "
                    f"{tuple(scores.shape)}. Broadcast (B, Lq, 1, H) + (B, 1, Lk, H) so every query meets "
                    "every key")
    pre = (query @ W_q)[:, :, None, :] + (keys @ W_k)[:, None, :, :]  # (B, Lq, Lk, H)
    found = _diagnose(scores, [
        ("values", pre @ w_v,
         "your scores are linear in q and k: did you forget the tanh? Without it the score is "
         "w_vᵀW_q q + w_vᵀW_k k, and the query term cancels in the softmax"),
        ("values", torch.tanh(pre @ w_v),
         "the tanh goes inside, on the (…, H) hidden features, before w_v: w_vᵀ tanh(W_q q + W_k k)"),
        ("values", torch.softmax(torch.tanh(pre) @ w_v, dim=-1),
         "you returned softmax weights; this function returns the raw scores (the softmax comes next)"),
        ("values", torch.relu(pre) @ w_v,
         "you used ReLU; Bahdanau's score uses tanh"),
    ])
    if found is not None:
        return found
    if not _same(scores, ref):
        return fail("values", f"scores differ from w_vᵀ tanh(W_q q + W_k k) by up to {_max_err(scores, ref):.3g}")
    return ok("Correct! Those are Bahdanau's additive scores.")


# ---------------------------------------------------------------------------------------------
# 02.2 masked softmax over padded keys
# ---------------------------------------------------------------------------------------------


def _solution_masked_softmax(scores: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the keys that are not padding; a row with no real key gets zeros."""
    pad = key_padding_mask[:, None, :]  # (B, 1, Lk): broadcasts over the queries
    scores = scores.masked_fill(pad, float("-inf"))  # padding can never win
    all_padding = pad.all(dim=-1, keepdim=True)  # (B, 1, 1): nothing to attend to
    scores = scores.masked_fill(all_padding, 0.0)  # avoid softmax(-inf, ..., -inf) = NaN
    weights = torch.softmax(scores, dim=-1)
    return weights.masked_fill(all_padding, 0.0)  # (B, Lq, Lk)


@exercise(
    "02.2",
    title="Masking padded keys",
    hint="Fill the scores of padded keys (key_padding_mask True) with -inf before the softmax; "
    "key_padding_mask is (B, Lk), index it as [:, None, :] to broadcast over queries. A row "
    "where every key is padding must give zeros, not NaN.",
    solution=_solution_masked_softmax,
)
def check_masked_softmax(fn: Callable[..., Any]) -> CheckResult:
    g = torch.Generator().manual_seed(202)
    b, lq, lk = 3, 4, 6
    scores = torch.randn(b, lq, lk, generator=g) * 2
    lengths = torch.tensor([6, 4, 2])
    pad = torch.arange(lk)[None, :] >= lengths[:, None]  # (B, Lk), True = padding
    weights = fn(scores.clone(), pad.clone())
    r = _as_tensor(weights, "the weights")
    if isinstance(r, CheckResult):
        return r
    ref = _solution_masked_softmax(scores, pad)
    if weights.shape != ref.shape:
        return fail("shape", f"weights should have the shape of the scores (B, Lq, Lk) = {tuple(ref.shape)}, "
                    f"got {tuple(weights.shape)}")
    padded = pad[:, None, :].expand_as(weights)
    if torch.isnan(weights).any():
        if torch.equal(torch.isnan(weights), padded):
            return fail("values", "softmax over the wrong axis: each padded key's column became -inf/-inf = "
                        "NaN. Normalise over the keys (dim=-1)")
        inverted = torch.softmax(scores.masked_fill(~pad[:, None, :], float("-inf")), -1)
        if torch.equal(torch.isnan(weights), torch.isnan(inverted)) and _same(weights.nan_to_num(0.0),
                                                                             inverted.nan_to_num(0.0)):
            return fail("masking", "the mask is inverted: True in key_padding_mask means *padding* (ignore "
                        "it), but your weights land only on the padding (and a sequence without padding "
                        "gets NaN)")
        return fail("masking", "your weights contain NaN even though every query has at least one real key")
    found = _diagnose(weights, [
        ("masking", torch.softmax(scores, -1),
         "padding is ignored: padded keys still get weight. Set their scores to -inf before the softmax"),
        ("masking", torch.softmax(scores.masked_fill(~pad[:, None, :], float("-inf")), -1),
         "the mask is inverted: True in key_padding_mask means *padding* (ignore it), but your weights "
         "land only on the padding"),
        ("masking", torch.softmax(scores, -1).masked_fill(pad[:, None, :], 0.0),
         "you zeroed the padded weights after the softmax, so the rows no longer sum to 1. Mask the "
         "scores with -inf *before* the softmax"),
        ("masking", torch.softmax(scores, -2).masked_fill(pad[:, None, :], 0.0),
         "softmax over the wrong axis: normalise over the keys (dim=-1)"),
    ])
    if found is not None:
        return found
    if bool((weights[padded].abs() > 1e-6).any()):
        return fail("masking", "some padded keys still get weight; their weights must be exactly 0")
    if not _same(weights, ref):
        return fail("values", f"weights differ from the masked softmax by up to {_max_err(weights, ref):.3g}")
    # An empty sequence (every key is padding): the course's rule is zeros, never NaN.
    pad_all = pad.clone()
    pad_all[1] = True
    weights = fn(scores.clone(), pad_all.clone())
    r = _as_tensor(weights, "the weights")
    if isinstance(r, CheckResult):
        return r
    if torch.isnan(weights).any():
        return fail("masking", "a sequence whose keys are all padding gives NaN (softmax of all -inf is 0/0). "
                    "Give such rows zero weights: detect them with key_padding_mask.all(-1)")
    ref_all = _solution_masked_softmax(scores, pad_all)
    if not _same(weights, ref_all):
        return fail("masking", "a sequence whose keys are all padding must get all-zero weights, got "
                    f"{weights[1, 0].tolist()}")
    return ok("Correct! Padded keys get no weight, and an all-padding row gives zeros, not NaN.")
