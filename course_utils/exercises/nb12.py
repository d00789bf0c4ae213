"""Exercises of notebook 12 (image captioning with visual attention)."""

from __future__ import annotations

import torch

from . import CheckResult, exercise, fail, ok


def _solution_penalty(alphas: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # alphas (B, T, N): one attention map per word; mask (B, T): True for real words
    alphas = alphas * mask[..., None].to(alphas.dtype)  # padding steps give no attention
    per_cell = alphas.sum(dim=1)  # (B, N): total attention each cell received over the caption
    return ((1.0 - per_cell) ** 2).sum(dim=1).mean()  # sum over cells, mean over the batch


@exercise(
    "12.1",
    title="The doubly stochastic penalty",
    hint="Zero the maps of padding steps, sum over time (dim 1) to get each cell's total "
    "attention, then sum (1 - total)² over the cells and average over the batch.",
    solution=_solution_penalty,
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
    if torch.allclose(got, _solution_penalty(alphas, torch.ones_like(mask)), atol=1e-5):
        return fail("masking", "your penalty counts the padding steps: multiply the maps by the mask first")
    if torch.allclose(got, expected * 3, atol=1e-5):
        return fail("values", "you summed over the batch: average it instead")
    if torch.allclose(got, ((1 - alphas.sum(2)) ** 2).sum(1).mean(), atol=1e-5):
        return fail("values", "you summed over the cells (dim 2) first: sum over time (dim 1)")
    if not torch.allclose(got, expected, atol=1e-5):
        return fail("values", f"expected {expected.item():.4f}, got {got.item():.4f}")
    return ok("Correct: every cell is pushed towards a total attention of 1 over the caption.")
