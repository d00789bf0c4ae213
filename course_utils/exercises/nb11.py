"""Exercises of notebook 11 (Vision Transformer): cut images into patches; attention rollout."""

from __future__ import annotations

import torch

from course_utils.exercises import CheckResult, exercise, fail, ok
from course_utils.vit import attention_rollout, patchify


def _solution_patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)  # (B, C, gh, p, gw, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p): patches row by row
    return x.reshape(b, (h // p) * (w // p), c * p * p)  # (B, N, C·p·p)


@exercise(
    "11.1",
    title="Cut images into patches",
    hint="reshape to (B, C, H/p, p, W/p, p), permute to (B, H/p, W/p, C, p, p), then flatten: "
    "patches go row by row, and inside a patch the order is channel, row, column.",
    solution=_solution_patchify,
)
def check_patchify(fn) -> CheckResult:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 8, 8)
    expected = patchify(images, 4)  # (2, 4, 48)
    got = fn(images, 4)
    if not isinstance(got, torch.Tensor):
        return fail("type", f"return a tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        return fail("shape", f"expected shape (B, N, C·p·p) = {tuple(expected.shape)}, got {tuple(got.shape)}")
    if torch.allclose(got, expected):
        return ok("Correct: your patches match course_utils.vit.patchify (and Conv2d's weight order).")
    if torch.allclose(got.sort(-1).values, expected.sort(-1).values):
        return fail("values", "each patch holds the right pixels but in another order: flatten each "
                    "patch channel first, then row, then column (the order of Conv2d.weight.flatten(1))")
    if torch.allclose(got.sort(1).values, expected.sort(1).values):
        return fail("values", "the patches are right but in the wrong order: number them row by row")
    return fail("values", "the patches hold the wrong pixels: a patch is a p×p square of the image, "
                "not p·p consecutive pixels of a flattened row")


def _solution_rollout(attentions: torch.Tensor) -> torch.Tensor:
    a = attentions.mean(dim=2)  # average the heads: (depth, B, T, T)
    eye = torch.eye(a.size(-1))
    rollout = eye.expand_as(a[0])
    for layer in a:  # first layer first
        a_hat = 0.5 * layer + 0.5 * eye  # the residual connection keeps half of each token
        a_hat = a_hat / a_hat.sum(-1, keepdim=True)
        rollout = a_hat @ rollout  # a later layer multiplies from the left
    return rollout


@exercise(
    "11.2",
    title="Attention rollout",
    hint="average the heads, add the identity (0.5·A + 0.5·I), renormalise the rows, and multiply "
    "the layers with the later one on the left: R = Â_L ··· Â_1.",
    solution=_solution_rollout,
)
def check_rollout(fn) -> CheckResult:
    torch.manual_seed(0)
    att = torch.softmax(torch.randn(3, 2, 4, 5, 5) * 2, dim=-1)  # (depth, B, heads, T, T)
    expected = attention_rollout(att)
    got = fn(att)
    if not isinstance(got, torch.Tensor):
        return fail("type", f"return a tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        return fail("shape", f"expected (B, T, T) = {tuple(expected.shape)}, got {tuple(got.shape)}")
    if not torch.allclose(got.sum(-1), torch.ones(2, 5), atol=1e-5):
        return fail("values", "the rows of your rollout do not sum to 1: renormalise Â's rows")
    if torch.allclose(got, expected, atol=1e-5):
        return ok("Correct: your rollout matches course_utils.vit.attention_rollout.")
    reversed_order = attention_rollout(att.flip(0))
    if torch.allclose(got, reversed_order, atol=1e-5):
        return fail("values", "you multiplied the layers in the wrong order: the last layer goes on the left")
    no_residual = attention_rollout(att, residual=0.0)
    if torch.allclose(got, no_residual, atol=1e-5):
        return fail("values", "you left out the residual connection: use 0.5·A + 0.5·I")
    return fail("values", "the values differ from course_utils.vit.attention_rollout")
