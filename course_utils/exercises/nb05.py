"""Exercises of notebook 05 (cross-attention): a key-padding mask, masked cross-attention.

The checkers recognise the typical mistakes: a mask with the wrong meaning (True = real token
instead of True = padding), a mask off by one, a mask of shape (L, B), NaN in a fully padded
row, the padding applied to the queries instead of the keys.

>>> from course_utils.exercises import check
>>> check("05.1", _solution_padding_mask)
✅ Correct! True marks padding, as key_padding_mask in nn.MultiheadAttention.
"""

from __future__ import annotations

import math

import torch

from course_utils.exercises import CheckResult, exercise, fail, ok

__all__ = ["check_masked_cross_attention", "check_padding_mask"]


# --------------------------------------------------------------------------------------------
# 05.1 key_padding_mask from lengths
# --------------------------------------------------------------------------------------------


def _solution_padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool, True where the position is padding (j >= length)."""
    positions = torch.arange(max_len, device=lengths.device)  # (L,)
    return positions[None, :] >= lengths[:, None]  # (1, L) >= (B, 1) -> (B, L)


@exercise(
    "05.1",
    title="A key-padding mask from sequence lengths",
    hint="Compare torch.arange(max_len)[None, :] with lengths[:, None]: position j of sequence "
    "b is padding when j >= lengths[b]. The result is bool, shape (B, max_len), True = padding.",
    solution=_solution_padding_mask,
)
def check_padding_mask(fn) -> CheckResult:
    lengths = torch.tensor([3, 6, 1, 0, 4])
    max_len = 6
    out = fn(lengths.clone(), max_len)
    want = _solution_padding_mask(lengths, max_len)
    if not isinstance(out, torch.Tensor):
        return fail("type", f"your function must return a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) == (max_len, len(lengths)):
        return fail("shape", f"got shape {tuple(out.shape)} = (L, B); a key_padding_mask is "
                    f"(B, L) = {tuple(want.shape)}, one row per sequence")
    if tuple(out.shape) != tuple(want.shape):
        return fail("shape", f"expected (B, max_len) = {tuple(want.shape)} for {len(lengths)} "
                    f"lengths and max_len={max_len}, got {tuple(out.shape)}")
    if out.dtype != torch.bool:
        return fail("dtype", f"expected a bool mask (True = padding), got dtype {out.dtype}; a "
                    "float mask would be ADDED to the scores instead")
    if torch.equal(out, ~want):
        return fail("masking", "your mask is inverted: it is True on the real tokens. A "
                    "key_padding_mask is True where the key is PADDING (to be ignored)")
    positions = torch.arange(max_len)[None, :]
    if torch.equal(out, positions > lengths[:, None]):
        return fail("masking", "off by one: you used j > length, so the first padding position "
                    "(j = length) is still attended; use j >= length")
    if torch.equal(out, positions >= lengths[:, None] - 1):
        return fail("masking", "off by one: you used j >= length - 1, so the last real token is "
                    "masked as padding")
    if not torch.equal(out, want):
        wrong = (out != want).nonzero().tolist()[:3]
        return fail("masking", f"wrong entries at (row, position) {wrong}; expected row for "
                    f"length {int(lengths[0])}: {want[0].int().tolist()}")
    return ok("Correct! True marks padding, as key_padding_mask in nn.MultiheadAttention.")


# --------------------------------------------------------------------------------------------
# 05.2 masked cross-attention
# --------------------------------------------------------------------------------------------


def _solution_masked_cross_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, Lq, D) attends over k (B, Lk, D), v (B, Lk, Dv); key_padding_mask (B, Lk) True = pad.

    Returns (out (B, Lq, Dv), weights (B, Lq, Lk)); a query with only padded keys gets zeros.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, Lq, Lk)
    pad = key_padding_mask[:, None, :]  # (B, 1, Lk): the same keys are padding for every query
    scores = scores.masked_fill(pad, float("-inf"))
    all_padded = pad.all(dim=-1, keepdim=True)  # (B, 1, 1): nothing to attend to
    scores = scores.masked_fill(all_padded, 0.0)  # finite scores, so softmax gives no NaN ...
    weights = scores.softmax(dim=-1).masked_fill(all_padded, 0.0)  # ... then zero those rows
    return weights @ v, weights  # (B, Lq, Dv), (B, Lq, Lk)


def _naive(q, k, v, pad, scale=True, invert=False, on_queries=False):
    scores = q @ k.transpose(-2, -1)
    if scale:
        scores = scores / math.sqrt(q.size(-1))
    m = ~pad if invert else pad
    m = m[:, :, None] if on_queries else m[:, None, :]
    w = scores.masked_fill(m, float("-inf")).softmax(-1)
    return w @ v, w


@exercise(
    "05.2",
    title="Cross-attention with a key-padding mask (and no NaN)",
    hint="Fill the scores of padded keys with -inf (mask shape (B, 1, Lk) broadcasts over the "
    "queries), and for a sequence whose keys are ALL padding, replace its scores by 0 before the "
    "softmax and its weights by 0 after it.",
    solution=_solution_masked_cross_attention,
)
def check_masked_cross_attention(fn) -> CheckResult:
    g = torch.Generator().manual_seed(5)
    b, lq, lk, d, dv = 3, 4, 4, 8, 5  # Lq == Lk, so a mask on the wrong axis still broadcasts
    q = torch.randn(b, lq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, lk, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, lk, dv, generator=g, dtype=torch.float64)
    pad = torch.tensor([[False, False, True, True], [False, False, False, False],
                        [True, True, True, True]])  # the last sequence is ALL padding
    result = fn(q.clone(), k.clone(), v.clone(), pad.clone())
    if not (isinstance(result, tuple) and len(result) == 2):
        return fail("type", f"return a pair (out, weights), got {type(result).__name__}")
    out, w = result
    want_out, want_w = _solution_masked_cross_attention(q, k, v, pad)
    for name, got, want in (("out", out, want_out), ("weights", w, want_w)):
        if not isinstance(got, torch.Tensor):
            return fail("type", f"{name} must be a torch.Tensor, got {type(got).__name__}")
        if tuple(got.shape) != tuple(want.shape):
            return fail("shape", f"{name}: expected {tuple(want.shape)}, got {tuple(got.shape)}")
    if torch.isnan(out).any() or torch.isnan(w).any():
        rows_ok = torch.allclose(out[:2], want_out[:2], atol=1e-6)
        detail = "the rows that have real keys are right; " if rows_ok else ""
        return fail("masking", f"{detail}NaN in the output: sequence 2 has only padded keys, all its "
                    "scores are -inf and softmax gives 0/0. Such a row must give zero weights and "
                    "a zero output")
    if torch.allclose(out, want_out, atol=1e-6) and torch.allclose(w, want_w, atol=1e-6):
        return ok("Correct! Padded keys get zero weight and a fully padded row gives zeros.")
    # the real-key rows decide which mistake it was
    diagnoses = [
        (dict(invert=True), "your mask is inverted: the queries attend ONLY to the padded keys. "
                            "key_padding_mask is True = padding = ignore"),
        (dict(on_queries=True), "you applied the padding mask to the queries (mask shape "
                                "(B, Lk, 1)) instead of the keys ((B, 1, Lk))"),
        (dict(scale=False), "you forgot to scale the scores by 1/√D"),
    ]
    for kwargs, message in diagnoses:
        o, ww = _naive(q, k, v, pad, **kwargs)  # rows with nothing to attend to: NaN -> 0
        if torch.allclose(out[:2].nan_to_num(), o[:2].nan_to_num(), atol=1e-6) and torch.allclose(
            w[:2].nan_to_num(), ww[:2].nan_to_num(), atol=1e-6
        ):
            return fail("masking" if "mask" in message else "values", message)
    if not torch.allclose(w[0, :, 2:], torch.zeros_like(w[0, :, 2:])):
        return fail("masking", "padded keys still get weight: sequence 0's keys 2 and 3 are padding")
    if torch.allclose(out[:2], want_out[:2], atol=1e-6) and not torch.allclose(out[2], want_out[2]):
        return fail("masking", "the rows with real keys are right, but a sequence whose keys are all "
                    "padding must give zero weights and a zero output")
    return fail("values", "the shapes are right but the values differ from masked attention")
