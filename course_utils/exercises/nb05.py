"""Exercises of notebook 05 (cross-attention).

* ``05.1`` (predict) — forget the ``key_padding_mask`` on the half picture (32 real patches and
  32 zero patches): which share of each word's attention (red, green, blue, dark) lands on the
  padding? Four numbers, compared with the measurement.
* ``05.2`` (extend) — a patch-level ``key_padding_mask`` for pictures of different sizes placed in
  the top-left corner of one canvas:
  ``fn(heights (B,), widths (B,), size, patch) -> (B, (size // patch)²) bool``, True = padding.
* ``05.3`` (debug) — PyTorch's ``nn.MultiheadAttention`` called with the course's conventions, with
  two bugs: ``fn(mha, text, patches, key_padding_mask) -> (out, weights)``, equal to the course's
  ``MultiHeadAttention`` (zero weights and no NaN for a sequence with no real key).

>>> from course_utils.exercises import check, solution_answer
>>> all(check(i, *solution_answer(i)).passed for i in ("05.1", "05.2", "05.3"))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import CheckResult, Mistake, exercise, fail, ok
from .nb01 import _as_tensor, _diagnose, _first_difference, _same

__all__ = ["check_padding_share", "check_patch_padding_mask", "check_torch_cross_attention"]

# --------------------------------------------------------------------------------------------
# 05.1 predict: where the attention goes when the mask is forgotten
# --------------------------------------------------------------------------------------------

_WORDS = ("red", "green", "blue", "dark")


def _picture(size: int = 64, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """The notebook's picture: a red square, a green disc and a blue triangle on a dark background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = [(yy >= 6) & (yy < 26) & (xx >= 8) & (xx < 28),
             (yy - 44) ** 2 + (xx - 18) ** 2 < 11**2,
             (yy >= 12) & (yy < 56) & ((xx - 46).abs() <= (yy - 12) // 2)]
    img = torch.full((3, size, size), 0.1)
    for channel, mask in enumerate(masks):
        colour = torch.full((3,), 0.1)
        colour[channel] = 0.9
        img[:, mask] = colour[:, None]
    return (img + noise * torch.randn(img.shape, generator=g)).clamp(0, 1)


def _patchify(img: torch.Tensor, p: int = 8) -> torch.Tensor:
    c, h, w = img.shape
    return img.reshape(c, h // p, p, w // p, p).permute(1, 3, 0, 2, 4).reshape(-1, c * p * p)


def _measured_padding_share() -> torch.Tensor:
    """Each word's attention on the 32 zero patches of the half picture, with no mask."""
    p, beta, d = 8, 24.0, 4
    w_q = beta * torch.tensor([[1.0, 0, 0, -1], [0, 1, 0, -1], [0, 0, 1, -1], [0, 0, 0, 0]])
    w_k = torch.zeros(d, 3 * p * p)
    for channel in range(3):
        w_k[channel, channel * p * p:(channel + 1) * p * p] = 1.0 / (p * p)
    keys = torch.zeros(64, 3 * p * p)
    keys[:32] = _patchify(_picture()[:, :32, :])  # the top half; the rest is zero padding
    q, k = torch.eye(4) @ w_q.T, keys @ w_k.T  # (4, d), (64, d)
    weights = torch.softmax(q @ k.T / math.sqrt(d), dim=-1)  # (4 words, 64 patches), no mask
    return weights[:, 32:].sum(-1)  # (4,)


def _solution_padding_share() -> tuple[float, float, float, float]:
    """Score = (colour of the patch) · β/√d; the padding's colour is (0, 0, 0). Reasoning per word:

    red, blue: their object is (at least partly) in the top half, and a patch of it scores about
    0.9·24/2 = 10.8 against 0 for padding: e^-10.8 per padded patch, nothing lands there.
    green: the disc is gone; a real patch still has green 0.1 (score 1.2), padding 0, so a real
    patch gets e^1.2 ≈ 3.3 times the weight of a padded one: 32 / (32 + 32·3.3) ≈ 0.23.
    dark: its score is minus 12 times a patch's total brightness: background -0.3·12 = -3.6,
    coloured patches far lower, padding 0. Even if all 32 real patches were background, the
    padding would get 32 / (32 + 32·e^-3.6) ≈ 0.97 of the weight.
    """
    green = 1 / (1 + math.exp(0.1 * 24 / 2))
    dark = 1 / (1 + math.exp(-0.3 * 24 / 2))
    return 0.0, green, 0.0, dark


def _as_numbers(x: Any, n: int, what: str) -> list[float]:
    if x is None or x is Ellipsis:
        raise NotImplementedError
    if isinstance(x, torch.Tensor):
        x = x.flatten().tolist()
    if not isinstance(x, (list, tuple)) or len(x) != n:
        raise TypeError(f"{what} must be {n} numbers (a list or tuple), got {x!r}")
    if any(v is None for v in x):
        raise NotImplementedError
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x):
        raise TypeError(f"{what} must be {n} numbers, got {x!r}")
    return [float(v) for v in x]


@exercise(
    "05.1",
    title="Predict where each word looks when the padding mask is forgotten",
    hint="Without the mask a padded patch is a key like any other, with mean colour (0, 0, 0). For "
    "each word compare the score of a padded patch (0) with the scores of the real patches "
    "(β/√d = 12 times their red, green, blue or minus their total brightness) in the top half.",
    solution=_solution_padding_share,
    solution_args=lambda: (_solution_padding_share(),),
    kind="predict",
    minutes=15,
    difficulty=2,
    mistakes=[
        Mistake("padding is ignored anyway", ((0.0, 0.0, 0.0, 0.0),), "a key like any other"),
        Mistake("uniform weights", ((0.5, 0.5, 0.5, 0.5),), "not uniform"),
        Mistake("green goes entirely to padding", ((0.0, 1.0, 0.0, 1.0),), "a little green"),
        Mistake("dark ignores the padding", ((0.0, 0.23, 0.0, 0.0),), "darker than the background"),
    ],
)
def check_padding_share(prediction: Any) -> CheckResult:
    pred = _as_numbers(prediction, 4, "your prediction (one share per word)")
    measured = _measured_padding_share().tolist()
    table = ", ".join(f"{w} {m:.2f}" for w, m in zip(_WORDS, measured, strict=False))
    wrong = [i for i in range(4) if abs(pred[i] - measured[i]) > 0.05]
    if not wrong:
        return ok(f"Correct! Measured: {table}. Only the words whose object is missing, or whose "
                  "favourite colour is black, are fooled: a forgotten mask fails silently, and only "
                  "for some inputs.")
    if all(v == 0 for v in pred):
        return fail("values", f"measured: {table}. Without the mask a padded patch is a key like any "
                    "other: it gets weight exp(score) like the real patches")
    if all(abs(v - 0.5) < 1e-9 for v in pred):
        return fail("values", f"measured: {table}. Half of the keys are padding, but the weights are "
                    "not uniform: each word's scores decide where its weight goes")
    notes = {
        0: "red: the red square is in the top half and scores about 0.9·12 = 10.8, against 0 for a "
           "padded patch, so almost nothing lands on the padding",
        1: "green: the disc is in the bottom half, but every real patch still has a little green "
           "(about 0.1, score 1.2) and the padding none (score 0): a real patch gets e^1.2 ≈ 3.3 "
           "times the weight of a padded one",
        2: "blue: the top of the triangle is in the top half and its patches score about 10.8",
        3: "dark: its score is minus a patch's total brightness, and the zero padding is darker than "
           "the background (brightness 0.3, score -3.6), so the padding wins",
    }
    return fail("values", f"measured: {table}. " + " ".join(
        f"You said {pred[i]:g} for {notes[i]}." for i in wrong))


# --------------------------------------------------------------------------------------------
# 05.2 extend: a patch padding mask for pictures of different sizes
# --------------------------------------------------------------------------------------------


def _solution_patch_padding_mask(heights: torch.Tensor, widths: torch.Tensor, size: int,
                                 patch: int) -> torch.Tensor:
    """(B, g·g) bool with g = size // patch, True = padding: a patch with no pixel of the picture."""
    starts = torch.arange(0, size, patch, device=heights.device)  # (g,): first pixel of each patch row/column
    row_real = starts[None, :] < heights[:, None]  # (B, g): a patch row touching the picture is real
    col_real = starts[None, :] < widths[:, None]  # (B, g)
    real = row_real[:, :, None] & col_real[:, None, :]  # (B, g, g): real in both directions
    return ~real.flatten(1)  # (B, g·g) in patchify's row-major order, True = padding


def _patch_variant(full_only: bool = False, order: str = "row", use_widths: bool = True,
                   combine: str = "and", invert: bool = False, flatten: bool = True):
    def fn(heights, widths, size, patch):
        starts = torch.arange(0, size, patch)
        ends = starts + patch if full_only else starts + 1
        row_real = ends[None, :] <= heights[:, None]
        col_real = ends[None, :] <= widths[:, None] if use_widths else torch.ones_like(row_real)
        if combine == "and":
            real = row_real[:, :, None] & col_real[:, None, :]
        else:
            real = row_real[:, :, None] | col_real[:, None, :]
        if order == "column":
            real = real.transpose(1, 2)
        pad = real if invert else ~real
        return pad.flatten(1) if flatten else pad
    return fn


@exercise(
    "05.2",
    title="A patch padding mask for pictures of different sizes",
    hint="Patch (r, c) covers pixels r·P..r·P+P-1 and c·P..c·P+P-1. It is real when it touches the "
    "picture in both directions: r·P < height and c·P < width. Build (B, g, g), flatten it "
    "row-major like patchify, and return True where it is NOT real.",
    solution=_solution_patch_padding_mask,
    kind="extend",
    minutes=15,
    difficulty=2,
    mistakes=[
        Mistake("inverted", (_patch_variant(invert=True),), "inverted"),
        Mistake("only whole patches count as real", (_patch_variant(full_only=True),), "partly covered"),
        Mistake("column-major order", (_patch_variant(order="column"),), "row-major"),
        Mistake("widths ignored", (_patch_variant(use_widths=False),), "widths"),
        Mistake("padding only below AND right", (_patch_variant(combine="or"),), "below OR to the right"),
        Mistake("not flattened", (_patch_variant(flatten=False),), "flatten"),
    ],
)
def check_patch_padding_mask(fn: Callable[..., Any]) -> CheckResult:
    heights = torch.tensor([16, 9, 4, 16, 0])
    widths = torch.tensor([16, 13, 16, 5, 0])  # sizes that are not multiples of the patch size
    size, patch = 16, 4
    g = size // patch
    got = fn(heights.clone(), widths.clone(), size, patch)
    r = _as_tensor(got, "the mask")
    if isinstance(r, CheckResult):
        return r
    want = _solution_patch_padding_mask(heights, widths, size, patch)
    if got.shape == (len(heights), g, g):
        return fail("shape", f"your mask is (B, g, g) = {tuple(got.shape)}; the keys are the flattened "
                    f"patches, so flatten the grid row-major to (B, g·g) = {tuple(want.shape)}")
    if got.shape != want.shape:
        return fail("shape", f"one entry per picture and patch, (B, g·g) = {tuple(want.shape)}; got "
                    f"{tuple(got.shape)}")
    if got.dtype != torch.bool:
        return fail("dtype", f"a key_padding_mask is bool (True = padding), got {got.dtype}")
    if torch.equal(got, want):
        return ok("Correct! Use it as the key_padding_mask of the patches: a 9×13 picture keeps its 3×4 "
                  "partly covered patches, and an empty canvas is all padding (zeros, not NaN, in the "
                  "course's attention).")
    for variant, message in [
        (_patch_variant(invert=True), "your mask is inverted: True must mark the PADDING patches"),
        (_patch_variant(full_only=True), "partly covered patches count as padding in your mask: a 9-pixel "
                                          "high picture covers 3 patch rows (rows 0-3, 4-7 and pixel 8), "
                                          "the third only in part; a patch is real when r·P < height"),
        (_patch_variant(order="column"), "your patches are numbered column by column; patchify numbers "
                                          "them row-major (patch r·g + c)"),
        (_patch_variant(use_widths=False), "you ignored the widths: a picture narrower than the canvas "
                                            "leaves padding on its right"),
        (_patch_variant(combine="or"), "you mark a patch as padding only when it is below AND to the "
                                        "right of the picture; it is padding when it is below OR to the "
                                        "right"),
    ]:
        if torch.equal(got, variant(heights, widths, size, patch)):
            return fail("masking", message)
    bad = (got != want).nonzero()[0].tolist()
    b, k = bad
    return fail("masking", f"first wrong entry: picture {b} ({int(heights[b])}×{int(widths[b])} pixels), "
                f"patch {k} (row {k // g}, column {k % g}): got {bool(got[b, k])}, expected {bool(want[b, k])}")


# --------------------------------------------------------------------------------------------
# 05.3 debug: nn.MultiheadAttention with the course's conventions
# --------------------------------------------------------------------------------------------


def _solution_torch_cross_attention(mha: nn.MultiheadAttention, text: torch.Tensor, patches: torch.Tensor,
                                    key_padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.MultiheadAttention, but a sequence with no real key gets zero weights and no NaN."""
    empty = key_padding_mask.all(dim=-1)  # (B,): nothing to attend to
    safe = key_padding_mask & ~empty[:, None]  # those rows may attend anywhere: finite, not NaN
    out, weights = mha(text, patches, patches, key_padding_mask=safe)  # torch: True = padding too
    weights = weights.masked_fill(empty[:, None, None], 0.0)  # ... then their weights are zero
    zero_result = mha.out_proj(torch.zeros_like(out[:1, :1]))  # a zero attention result, projected
    return torch.where(empty[:, None, None], zero_result, out), weights


def _broken_cross_attention(mha, text, patches, key_padding_mask):
    keep = ~key_padding_mask
    return mha(text, patches, patches, key_padding_mask=keep)


def _inverted_nan_handled(mha, text, patches, key_padding_mask):
    return _solution_torch_cross_attention(mha, text, patches, ~key_padding_mask)


def _nan_left(mha, text, patches, key_padding_mask):
    return mha(text, patches, patches, key_padding_mask=key_padding_mask)


def _nan_to_zero(mha, text, patches, key_padding_mask):
    out, w = mha(text, patches, patches, key_padding_mask=key_padding_mask)
    return out.nan_to_num(0.0), w.nan_to_num(0.0)


def _uniform_over_padding(mha, text, patches, key_padding_mask):
    empty = key_padding_mask.all(dim=-1)
    return mha(text, patches, patches, key_padding_mask=key_padding_mask & ~empty[:, None])


@exercise(
    "05.3",
    title="nn.MultiheadAttention with the course's mask conventions",
    hint="What does True mean in nn.MultiheadAttention's key_padding_mask (its documentation says)? "
    "What does it return for a sequence whose keys are all padding, and what should the course's "
    "rule give there instead?",
    solution=_solution_torch_cross_attention,
    kind="debug",
    minutes=15,
    difficulty=2,
    mistakes=[
        Mistake("the broken code, unchanged", (_broken_cross_attention,), "both bugs are still there"),
        Mistake("NaN handled, mask still inverted", (_inverted_nan_handled,), "inverted"),
        Mistake("mask fixed, NaN left", (_nan_left,), "NaN"),
        Mistake("NaN replaced by zeros", (_nan_to_zero,), "out_proj(0)"),
        Mistake("empty rows attend to padding", (_uniform_over_padding,), "padding gets weight"),
    ],
)
def check_torch_cross_attention(fn: Callable[..., Any]) -> CheckResult:
    from course_utils.attention import MultiHeadAttention

    torch.manual_seed(53)
    e, kdim = 8, 6
    mha = nn.MultiheadAttention(e, 2, kdim=kdim, vdim=kdim, batch_first=True).eval()
    with torch.no_grad():  # non-zero biases, so "output 0" and "output out_proj(0)" differ
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    text, patches = torch.randn(3, 4, e), torch.randn(3, 5, kdim)
    pad = torch.tensor([[False, False, False, True, True], [False] * 5, [True] * 5])
    with torch.no_grad():
        answer = fn(mha, text.clone(), patches.clone(), pad.clone())
        want_out, want_w = MultiHeadAttention.from_torch(mha).eval()(text, patches, key_padding_mask=pad,
                                                                      need_weights=True)
    if not isinstance(answer, tuple) or len(answer) != 2:
        return fail("type", f"return a pair (out, weights), got {type(answer).__name__}")
    out, w = answer
    for name, x in (("out", out), ("weights", w)):
        r = _as_tensor(x, name)
        if isinstance(r, CheckResult):
            return r
    if out.shape != want_out.shape or w.shape != want_w.shape:
        return fail("shape", f"out must be {tuple(want_out.shape)} and weights {tuple(want_w.shape)} "
                    f"(averaged over heads); got {tuple(out.shape)} and {tuple(w.shape)}")
    if _same(out, want_out) and _same(w, want_w):
        return ok("Correct! Equal to the course's MultiHeadAttention: the same mask convention, and a "
                  "picture with no patch gives zero weights and out_proj's bias instead of NaN.")
    if _same(out, _broken_cross_attention(mha, text, patches, pad)[0]):
        return fail("masking", "both bugs are still there: the picture WITHOUT padding comes out NaN, "
                    "and the one with no patch at all gets weights")
    if _same(out[0], _broken_cross_attention(mha, text, patches, pad)[0][0]) or (
            torch.isnan(out[1]).all() and not torch.isnan(out[2]).any()):
        return fail("masking", "your mask is inverted: nn.MultiheadAttention's key_padding_mask is True "
                    "= padding (the course's meaning too), so `~key_padding_mask` hides the real "
                    "patches; the picture with no padding then has no key left and gives NaN")
    if torch.isnan(out).any() or torch.isnan(w).any():
        rows = sorted({int(i) for i in torch.isnan(out).nonzero()[:, 0]})
        return fail("masking", f"NaN in sequence(s) {rows}: a sequence whose keys are ALL padding gets "
                    "softmax(-inf, ..., -inf) = 0/0 inside nn.MultiheadAttention. Give it a mask it "
                    "survives, then fix its weights and output")
    found = _diagnose(out, [
        ("values", _nan_to_zero(mha, text, patches, pad)[0],
         "the empty sequence's output is 0; with zero attention the layer still adds out_proj's "
         "bias: use out_proj(0) (what the course's layer gives), not 0"),
    ])
    if found is not None:
        return found
    if not _same(w[2], want_w[2]) and _same(w[:2], want_w[:2]):
        return fail("masking", "for the sequence with no real key, padding gets weight: its weights "
                    "must be all zero")
    if not _same(w, want_w):
        return fail("values", f"the weights differ {_first_difference(w, want_w, 'b, query, key')}")
    return fail("values", f"the output differs {_first_difference(out, want_out, 'b, query, feature')}")
