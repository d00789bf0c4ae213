"""Exercises of notebook 00 (devices, timing, mixed precision).

* ``00.1`` (predict) — how many bytes of model state does AdamW training in float32 keep for the
  notebook's digits MLP (weights, gradients, optimizer state)? The checker counts them after a
  real optimizer step.
* ``00.2`` (debug) — a float16 training step with a ``GradScaler`` that clips the *scaled*
  gradients and steps the optimizer behind the scaler's back; fix it:
  ``fn(model, optimizer, scaler, x, y, max_norm) -> None``.
* ``00.3`` (derive) — round float32 to bfloat16 with integer operations on the bits (round to
  nearest, ties to even): ``fn(x float32) -> float32`` equal to ``x.to(torch.bfloat16).float()``.

>>> from course_utils.exercises import check, solution_answer
>>> all(check(i, *solution_answer(i)).passed for i in ("00.1", "00.2", "00.3"))
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from . import CheckResult, Mistake, exercise, fail, ok
from .nb01 import _as_number, _close, _first_difference, _gap

__all__ = ["check_adam_state_bytes", "check_bf16_rounding", "check_scaled_step"]


# --------------------------------------------------------------------------------------------
# 00.1 predict: the bytes of AdamW's training state for the digits MLP
# --------------------------------------------------------------------------------------------


def _digits_mlp() -> torch.nn.Module:
    """The classifier of the notebook's section 6: 64 pixels → 256 hidden units → 10 digits."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))


def _measured_state_bytes() -> dict[str, int]:
    """Weights, gradients and AdamW state after one step, counted tensor by tensor."""
    model = _digits_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    F.cross_entropy(model(torch.randn(8, 64)), torch.randint(0, 10, (8,))).backward()
    opt.step()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    moments = sum(t.numel() * t.element_size() for state in opt.state.values()
                  for name, t in state.items() if name in ("exp_avg", "exp_avg_sq"))
    return {"weights": weights, "grads": grads, "moments": moments, "params": weights // 4}


def _solution_adam_state_bytes() -> int:
    params = (64 * 256 + 256) + (256 * 10 + 10)  # weights and biases of the two Linear layers: 19,210
    # float32 everywhere: the weight, its gradient, and AdamW's two moving averages (m and v)
    return params * 4 * 4


@exercise(
    "00.1",
    title="Predict: the bytes AdamW keeps while training the digits MLP in float32",
    hint="Count the parameters of both Linear layers (weights *and* biases). Each one has a float32 "
    "value, a float32 gradient, and AdamW keeps two running averages per parameter.",
    solution=_solution_adam_state_bytes,
    solution_args=lambda: (_solution_adam_state_bytes(),),
    kind="predict",
    minutes=8,
    difficulty=1,
    mistakes=[
        Mistake("weights only", (19_210 * 4,), "gradients and AdamW's two moments"),
        Mistake("three of the four tensors", (19_210 * 12,), "three tensors per parameter"),
        Mistake("two of the four tensors, or 16-bit values", (19_210 * 8,), "8 bytes per parameter"),
        Mistake("forgets the biases", (64 * 256 * 16 + 256 * 10 * 16,), "biases"),
        Mistake("counts bits, not bytes", (19_210 * 16 * 8,), "bits"),
    ],
)
def check_adam_state_bytes(prediction: Any) -> CheckResult:
    pred = _as_number(prediction, "your prediction (a number of bytes)")
    m = _measured_state_bytes()
    total = m["weights"] + m["grads"] + m["moments"]
    said = (f"You predicted {pred:,.0f} bytes; counted after one AdamW step: weights {m['weights']:,} + "
            f"gradients {m['grads']:,} + moments {m['moments']:,} = {total:,} bytes ({m['params']:,} parameters)")
    if _close(pred, total, 0.001):
        return ok(f"Correct! {said}: 16 bytes per parameter. With mixed precision the 16-bit copies come "
                  "on top of a float32 master copy, and notebook 15 shows how FSDP splits all of it "
                  "over the GPUs.")
    p = m["params"]
    weights_no_bias = 64 * 256 + 256 * 10
    known = [
        (p * 4, "That is the weights alone: training also keeps the gradients and AdamW's two moments, "
                "each as large as the weights"),
        (p * 12, "That is three tensors per parameter: one of the four is missing — the weight, its "
                 "gradient, and AdamW's two moving averages (m and v), 4 bytes each"),
        (p * 8, "That is 8 bytes per parameter: two float32 tensors (weights and gradients, without AdamW's "
                "moments), or everything counted as 16-bit; here there are four tensors, all float32"),
        (weights_no_bias * 16, "Close, but the biases are parameters too: 256 + 10 more, each with its "
                               "gradient and moments"),
        (p * 16 * 8, "That is the number of bits; memory is counted in bytes (8 bits each)"),
    ]
    for value, message in known:
        if _close(pred, value, 0.001):
            return fail("values", f"{said}. {message}.")
    return fail("values", f"{said}; yours is {_gap(pred, total)}. Count the parameters, then the "
                "float32 tensors of the same size that training keeps for each.")


# --------------------------------------------------------------------------------------------
# 00.2 debug: a GradScaler step in the wrong order
# --------------------------------------------------------------------------------------------


def buggy_scaled_step(model, optimizer, scaler, x, y, max_norm=1.0):
    """A float16-style training step with two bugs: find and fix them."""
    loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _solution_scaled_step(model, optimizer, scaler, x, y, max_norm=1.0):
    loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()  # gradients of (loss × scale)
    scaler.unscale_(optimizer)  # divide them by the scale (and look for inf/NaN) before clipping
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)  # skips the step if a gradient overflowed
    scaler.update()  # halves the scale after an overflow, grows it after a run of good steps
    optimizer.zero_grad(set_to_none=True)


def _variant(unscale: bool, scaler_step: bool, update: bool, zero: bool = True):
    def step(model, optimizer, scaler, x, y, max_norm=1.0):
        loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if unscale:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if scaler_step:
            scaler.step(optimizer)
        else:
            optimizer.step()
        if update:
            scaler.update()
        if zero:
            optimizer.zero_grad(set_to_none=True)
    return step


_STILL_CLIPS_SCALED = _variant(unscale=False, scaler_step=True, update=True)
_STILL_BYPASSES = _variant(unscale=True, scaler_step=False, update=True)
_NO_UPDATE = _variant(unscale=True, scaler_step=True, update=False)
_NO_ZERO = _variant(unscale=True, scaler_step=True, update=True, zero=False)


def _run_steps(fn: Callable) -> tuple[torch.Tensor, float]:
    """Four steps on a fixed model and batches, the third of which overflows; (parameters, final scale)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1000)
    gen = torch.Generator().manual_seed(1)
    for i in range(4):
        x = torch.randn(32, 6, generator=gen) * 3
        y = torch.randint(0, 3, (32,), generator=gen)
        if i == 2:
            x[0, 0] = float("inf")  # an overflow, as float16 produces when a loss is scaled too far
        fn(model, optimizer, scaler, x, y, max_norm=0.5)
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return params, scaler.get_scale()


def _outcome(fn: Callable) -> tuple[torch.Tensor, float] | str:
    """(parameters, final scale) after :func:`_run_steps`, or the error message if the step raised."""
    try:
        return _run_steps(fn)
    except (AssertionError, RuntimeError) as exc:  # GradScaler's own complaints about the order of calls
        return f"{type(exc).__name__}: {exc}"


@exercise(
    "00.2",
    title="Debug: a GradScaler step that clips and steps in the wrong way",
    hint="The scaler multiplies the loss (and so every gradient) by a large factor. What do clipping "
    "and the optimizer see if nothing divides it back first? And who notices an overflow?",
    solution=_solution_scaled_step,
    kind="debug",
    minutes=12,
    difficulty=2,
    mistakes=[
        Mistake("the buggy step as handed over", (buggy_scaled_step,), "the scaler never saw this step"),
        Mistake("still clips the scaled gradients", (_STILL_CLIPS_SCALED,), "unscale_"),
        Mistake("still calls optimizer.step() itself", (_STILL_BYPASSES,), "the optimizer stepped anyway"),
        Mistake("drops scaler.update()", (_NO_UPDATE,), "call scaler.update() after every step"),
        Mistake("drops zero_grad", (_NO_ZERO,), "zero the gradients"),
    ],
)
def check_scaled_step(fn: Callable) -> CheckResult:
    if not callable(fn):
        return fail("type", f"pass your fixed step function, got {type(fn).__name__}")
    got = _outcome(fn)
    if isinstance(got, str):
        if "No inf checks were recorded" in got:
            return fail("error", f"{got!r}: the scaler never saw this step. optimizer.step() bypasses it; "
                                 "scaler.step(optimizer) checks the gradients for inf/NaN (after unscaling them, "
                                 "which clipping needs first: scaler.unscale_(optimizer))")
        if "unscale_() is being called after step()" in got:
            return fail("error", f"{got!r}: the scaler still thinks the previous step is running: call "
                                 "scaler.update() after every step")
        raise RuntimeError(got)  # any other error: check() reports it as the learner's code raising
    params, scale = got
    want, want_scale = _run_steps(_solution_scaled_step)
    if not torch.isfinite(params).all():
        return fail("values", "your parameters contain inf or NaN after a step whose gradients overflowed: the "
                              "optimizer stepped anyway. scaler.step(optimizer) skips such a step.")
    if torch.allclose(params, want, atol=1e-6) and scale == want_scale:
        return ok("Correct: unscale_ before clipping, scaler.step instead of optimizer.step, scaler.update after it. "
                  f"The overflowing step was skipped and the scale halved ({2.0**12:g} → {want_scale:g}).")
    known = [
        (_STILL_CLIPS_SCALED, "you clip the scaled gradients: call scaler.unscale_(optimizer) before "
                              "clip_grad_norm_, so that max_norm applies to the true gradients"),
        (_NO_ZERO, "the gradients pile up from step to step: zero the gradients after the step"),
    ]
    for variant, message in known:
        other = _outcome(variant)
        if not isinstance(other, str) and torch.allclose(params, other[0], atol=1e-6) and scale == other[1]:
            return fail("values", message)
    if scale != want_scale:
        return fail("values", f"the scaler ends at scale {scale:g}, expected {want_scale:g}: one overflowing step "
                              "should halve it once (scaler.step then scaler.update)")
    return fail("values", "the parameters after four steps differ " + _first_difference(params, want, "parameter"))


# --------------------------------------------------------------------------------------------
# 00.3 derive: float32 → bfloat16 by rounding the bits
# --------------------------------------------------------------------------------------------


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF  # the 32 bits, as a non-negative int


def _float(bits: torch.Tensor) -> torch.Tensor:
    bits = torch.where(bits >= 2**31, bits - 2**32, bits)  # back to a signed 32-bit pattern
    return bits.to(torch.int32).view(torch.float32)


def _solution_bf16_round(x: torch.Tensor) -> torch.Tensor:
    bits = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    # bfloat16 keeps the top 16 bits (sign, 8 exponent bits, 7 mantissa bits). Round to nearest:
    # add just under half of the dropped part (0x7FFF), plus 1 when the kept part is odd, so that
    # an exact tie goes to the even neighbour. A carry into the exponent is correct rounding too.
    lowest_kept_bit = (bits >> 16) & 1
    rounded = (bits + 0x7FFF + lowest_kept_bit) & 0xFFFF0000
    rounded = torch.where(rounded >= 2**31, rounded - 2**32, rounded)
    return rounded.to(torch.int32).view(torch.float32)


def _truncate(x: torch.Tensor) -> torch.Tensor:
    return _float(_bits(x) & 0xFFFF0000)


def _round_half_up(x: torch.Tensor) -> torch.Tensor:
    return _float((_bits(x) + 0x8000) & 0xFFFF0000)


def _to_float16(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def _keeps_eight_bits(x: torch.Tensor) -> torch.Tensor:  # rounds to 8 mantissa bits, one too many
    bits = _bits(x)
    return _float((bits + 0x3FFF + ((bits >> 15) & 1)) & 0xFFFF8000)


def _bf16_inputs() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    ties = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 2 + 2**-7, 3.0 + 2**-7])  # exactly halfway
    wide = torch.randn(2000, generator=gen) * torch.exp2(torch.randint(-20, 20, (2000,), generator=gen).float())
    return torch.cat([ties, wide, torch.tensor([0.0, -0.0, 1e-30, 65504.0, 3.0e38])])


@exercise(
    "00.3",
    title="Derive: round float32 to bfloat16 with integer operations",
    hint="View the float32 tensor as int32 bits. bfloat16 keeps the top 16 bits; to round rather than "
    "cut, add almost half of what you drop (0x7FFF) plus the lowest bit you keep (ties to even), "
    "then clear the low 16 bits.",
    solution=_solution_bf16_round,
    kind="derive",
    minutes=15,
    difficulty=3,
    mistakes=[
        Mistake("truncates", (_truncate,), "cuts the low 16 bits off"),
        Mistake("rounds ties up", (_round_half_up,), "ties"),
        Mistake("rounds to float16", (_to_float16,), "float16"),
        Mistake("keeps 8 mantissa bits", (_keeps_eight_bits,), "one mantissa bit too many"),
    ],
)
def check_bf16_rounding(fn: Callable[[torch.Tensor], torch.Tensor]) -> CheckResult:
    x = _bf16_inputs()
    got = fn(x.clone())
    want = x.to(torch.bfloat16).float()
    if not isinstance(got, torch.Tensor):
        return fail("type", f"return a tensor, got {type(got).__name__}")
    if got.shape != x.shape:
        return fail("shape", f"return the shape of the input {tuple(x.shape)}, got {tuple(got.shape)}")
    if got.dtype != torch.float32:
        return fail("dtype", f"return float32 values (the rounded numbers, stored in float32), got {got.dtype}")
    if torch.equal(got, want):
        return ok("Correct: bit for bit what x.to(torch.bfloat16) gives, ties to even included. The relative "
                  "rounding error is at most 2⁻⁸ ≈ 0.4 %, the figure behind section 4's accuracy measurement.")
    known = [
        (_truncate, "your version cuts the low 16 bits off (rounds towards zero): about half of the values "
                    "land one bfloat16 step too low; add 0x7FFF plus the lowest kept bit before clearing"),
        (_round_half_up, "close: values exactly halfway between two bfloat16 numbers must go to the even one "
                         "(ties to even), not always up — add the lowest kept bit to 0x7FFF"),
        (_to_float16, "that is float16 (5 exponent bits, 10 mantissa bits), a different format: bfloat16 keeps "
                      "float32's 8 exponent bits and 7 mantissa bits"),
        (_keeps_eight_bits, "you keep one mantissa bit too many: bfloat16 has 7 stored mantissa bits, so clear the "
                            "low 16 bits of the float32 pattern"),
    ]
    for wrong, message in known:
        if torch.equal(got, wrong(x)):
            return fail("values", message)
    return fail("values", "the rounded values differ " + _first_difference(got, want, "i", atol=0.0))
