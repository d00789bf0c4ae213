"""Exercises of notebook 03 (self-attention and positions).

* ``03.1`` — the sinusoidal table of Vaswani et al. (2017): ``fn(max_len, d_model) -> (max_len, d_model)``.
* ``03.2`` — rotary position embedding (RoPE), "rotate half" layout: ``fn(x (T, D)) -> (T, D)``,
  position ``m`` of ``x`` rotated by the angles ``m θ_i``, ``θ_i = 10000^(-2i/D)``.

>>> from course_utils.exercises import check, solution_function
>>> check("03.1", solution_function("03.1")).passed
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import CheckResult, exercise, fail, ok
from .nb01 import _as_tensor, _diagnose, _max_err, _same

# ---------------------------------------------------------------------------------------------
# 03.1 sinusoidal positional encoding
# ---------------------------------------------------------------------------------------------


def _solution_sinusoidal(max_len: int, d_model: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d))."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (max_len, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # 0, 2, 4, ...  (d/2,)
    angle = pos / 10000 ** (two_i / d_model)  # (max_len, d/2): one frequency per pair
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)  # even dims: sine
    pe[:, 1::2] = torch.cos(angle)  # odd dims: cosine of the same angle
    return pe.float()


def _sinusoidal_variants(max_len: int, d: int) -> list[tuple[str, torch.Tensor, str]]:
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, d, 2, dtype=torch.float64)
    angle = pos / 10000 ** (two_i / d)
    swapped = torch.zeros(max_len, d, dtype=torch.float64)
    swapped[:, 0::2], swapped[:, 1::2] = torch.cos(angle), torch.sin(angle)
    per_dim = pos / 10000 ** (torch.arange(d, dtype=torch.float64) / d)  # a frequency per dim
    own_freq = per_dim.clone()
    own_freq[:, 0::2], own_freq[:, 1::2] = per_dim[:, 0::2].sin(), per_dim[:, 1::2].cos()
    i_only = pos / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / d)  # i/d instead of 2i/d
    half_exp = torch.zeros(max_len, d, dtype=torch.float64)
    half_exp[:, 0::2], half_exp[:, 1::2] = i_only.sin(), i_only.cos()
    halves = torch.cat((angle.sin(), angle.cos()), dim=-1)
    return [
        ("values", swapped.float(), "sine and cosine are swapped: even dims (0, 2, …) get the sine, odd dims the cosine"),
        ("values", own_freq.float(),
         "each dim got its own frequency 10000^(j/d); a sine and its cosine partner share one: "
         "dims 2i and 2i+1 both use pos / 10000^(2i/d)"),
        ("values", half_exp.float(), "the exponent is 2i/d, not i/d: pair i uses pos / 10000^(2i/d)"),
        ("values", halves.float(),
         "you put all the sines in the first half and the cosines in the second; the paper interleaves "
         "them: sin in dims 0, 2, 4, …, cos in dims 1, 3, 5, …"),
    ]


@exercise(
    "03.1",
    title="Sinusoidal positional encoding",
    hint="angle = pos / 10000 ** (2i / d_model) for pair i = 0 .. d/2-1, shape (max_len, d/2); "
    "pe[:, 0::2] = sin(angle), pe[:, 1::2] = cos(angle).",
    solution=_solution_sinusoidal,
)
def check_sinusoidal(fn: Callable[..., Any]) -> CheckResult:
    max_len, d = 12, 8
    pe = fn(max_len, d)
    r = _as_tensor(pe, "the table")
    if isinstance(r, CheckResult):
        return r
    ref = _solution_sinusoidal(max_len, d)
    if pe.shape == (d, max_len):
        return fail("shape", f"your table is (d_model, max_len) = {tuple(pe.shape)}; expected one row per "
                    f"position, (max_len, d_model) = {(max_len, d)}")
    if pe.shape != ref.shape:
        return fail("shape", f"the table should have shape (max_len, d_model) = {(max_len, d)}, got {tuple(pe.shape)}")
    found = _diagnose(pe.float(), _sinusoidal_variants(max_len, d))
    if found is not None:
        return found
    if not _same(pe.float(), ref):
        return fail("values", f"your table differs from the paper's by up to {_max_err(pe, ref):.3g}")
    return ok("Correct! That is the table of Vaswani et al. (2017), section 3.5.")


# ---------------------------------------------------------------------------------------------
# 03.2 rotary position embedding
# ---------------------------------------------------------------------------------------------


def _solution_rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate pair (x[:, i], x[:, i + D/2]) at position m by the angle m·θ_i, θ_i = base^(-2i/D)."""
    t, d = x.shape
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # (D/2,)
    angle = torch.arange(t, dtype=torch.float32)[:, None] * theta[None, :]  # (T, D/2)
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[:, : d // 2], x[:, d // 2 :]  # the two coordinates of each pair
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # 2-D rotation per pair


@exercise(
    "03.2",
    title="Rotary position embedding (RoPE)",
    hint="Pair dim i with dim i + D/2. At position m, rotate (a, b) by φ = m·θ_i with "
    "θ_i = 10000^(-2i/D): (a cos φ - b sin φ, a sin φ + b cos φ). Positions start at 0.",
    solution=_solution_rope,
)
def check_rope(fn: Callable[..., Any]) -> CheckResult:
    g = torch.Generator().manual_seed(302)
    t, d = 6, 8
    x = torch.randn(t, d, generator=g)
    y = fn(x.clone())
    r = _as_tensor(y, "the rotated tensor")
    if isinstance(r, CheckResult):
        return r
    ref = _solution_rope(x)
    if y.shape != ref.shape:
        return fail("shape", f"RoPE keeps the shape: expected (T, D) = {(t, d)}, got {tuple(y.shape)}")
    half = d // 2
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    pos = torch.arange(t, dtype=torch.float32)[:, None]

    def rot(angle: torch.Tensor) -> torch.Tensor:
        cos, sin = angle.cos(), angle.sin()
        x1, x2 = x[:, :half], x[:, half:]
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)

    angle = pos * theta
    inter = x.clone()
    a, b = x[:, 0::2], x[:, 1::2]
    inter[:, 0::2], inter[:, 1::2] = a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()
    found = _diagnose(y, [
        ("values", x, "your output equals the input: nothing was rotated"),
        ("values", rot(-angle), "you rotate the wrong way: the new first coordinate is a·cos φ - b·sin φ, "
         "the second a·sin φ + b·cos φ"),
        ("values", rot((pos + 1) * theta), "positions start at 0 (the first row is not rotated), yours start at 1"),
        ("values", rot(pos * 10000.0 ** (-torch.arange(half, dtype=torch.float32) / d)),
         "the frequencies are off: θ_i = 10000^(-2i/D), with 2i, not i"),
        ("values", rot(pos.expand(t, half)), "every pair turns at the same speed: pair i turns by m·θ_i, "
         "θ_i = 10000^(-2i/D)"),
        ("values", inter, "you paired neighbouring dims (0,1), (2,3), … (the GPT-J/interleaved layout); this "
         "course pairs dim i with dim i + D/2 (the \"rotate half\" layout of LLaMA)"),
    ])
    if found is not None:
        return found
    if not _same(y, ref):
        return fail("values", f"your rotation differs from RoPE by up to {_max_err(y, ref):.3g}")
    return ok("Correct! That is RoPE in the rotate-half layout (as course_utils.positional.RotaryEmbedding).")
