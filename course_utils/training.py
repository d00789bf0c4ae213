"""A small training loop that every notebook shares: progress bar, history, and two guards.

* A non-finite loss stops training with the step where it appeared and the last finite loss,
  instead of training on NaNs for the rest of the run.
* No device synchronisation per step: reading a GPU loss (``.item()``) makes the CPU wait
  for the GPU to finish everything queued, so it cannot queue the next step meanwhile. Losses
  that live on a GPU are kept as tensors and read in one transfer every ``sync_every`` steps
  (default :data:`DEVICE_SYNC_EVERY`); losses on the CPU cost nothing to read and are checked
  every step.
* Ctrl-C (``KeyboardInterrupt``, the notebook's stop button) returns the history so far:
  the model keeps its trained weights and the learner keeps their work.

The step itself is yours: ``train_steps`` calls ``step_fn(step)``, which runs one
optimisation step and returns the loss (a float, a 0-d tensor, or a dict with a ``"loss"``
entry and any other metrics to log)::

    def step(i):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        return loss

    history = train_steps(step, num_steps=1_000, desc="ViT")
    plot_learning_curves({"train": history["loss"]})
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from tqdm.auto import tqdm

from .checks import check_bool, check_callable


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the step."""


class TrainHistory(dict):
    """``{"step": [...], "loss": [...], <other metrics>: [...]}`` plus ``interrupted``."""

    interrupted: bool = False

    @property
    def last_loss(self) -> float:
        return self["loss"][-1] if self.get("loss") else math.nan


DEVICE_SYNC_EVERY = 50
"""How many steps a GPU loss waits before it is read (one device synchronisation per block)."""


def _as_metrics(result: Any) -> dict[str, float | torch.Tensor]:
    """The step's metrics as floats or detached 0-d tensors, checked without reading any tensor."""
    if isinstance(result, Mapping):
        if "loss" not in result:
            raise ValueError(f"step_fn returned a dict without a 'loss' entry; got keys {sorted(map(str, result))}")
        items = result.items()
    else:
        items = [("loss", result)]
    metrics: dict[str, float | torch.Tensor] = {}
    for key, value in items:
        if isinstance(value, torch.Tensor):
            if value.numel() != 1 or value.is_complex():
                raise ValueError(
                    f"step_fn must return a scalar {key!r} (a float or a one-element tensor), got a "
                    f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
                )
            metrics[key] = value.detach().reshape(())
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"step_fn must return a number for {key!r} (a float, a one-element tensor, or a "
                f"dict of them with a 'loss' entry), got {type(value).__name__} {value!r}"
            )
        metrics[key] = float(value)
    return metrics


def _on_accelerator(metrics: dict[str, float | torch.Tensor]) -> bool:
    return any(isinstance(v, torch.Tensor) and v.device.type != "cpu" for v in metrics.values())


def _read(pending: list[tuple[int, dict[str, float | torch.Tensor]]]) -> list[tuple[int, dict[str, float]]]:
    """Every tensor of ``pending`` as a float, with one transfer per device (one synchronisation)."""
    tensors = [(n, k, v) for n, (_, m) in enumerate(pending) for k, v in m.items() if isinstance(v, torch.Tensor)]
    values: dict[tuple[int, str], float] = {}
    for device in {v.device for _, _, v in tensors}:
        here = [(n, k, v) for n, k, v in tensors if v.device == device]
        floats = torch.stack([v.to(torch.float64) for _, _, v in here]).tolist()  # the one sync
        values.update({(n, k): f for (n, k, _), f in zip(here, floats, strict=True)})
    return [(step, {k: values[(n, k)] if isinstance(v, torch.Tensor) else v for k, v in m.items()})
            for n, (step, m) in enumerate(pending)]


def train_steps(
    step_fn: Callable[[int], Any],
    num_steps: int,
    desc: str = "training",
    log_every: int = 1,
    disable_progress: bool | None = None,
    sync_every: int = DEVICE_SYNC_EVERY,
) -> TrainHistory:
    """Run ``step_fn(step)`` for ``num_steps`` steps with a progress bar; return the history.

    The history keeps every ``log_every``-th step (and the last). Losses returned as GPU
    tensors are read every ``sync_every`` steps in one transfer, so the GPU never waits for
    the Python loop; a NaN is then reported up to ``sync_every - 1`` steps after it appeared,
    naming the step where it did. CPU values are read every step.

    >>> losses = iter([1.0, 0.5, 0.25])
    >>> h = train_steps(lambda step: next(losses), num_steps=3, disable_progress=True)
    >>> h["loss"], h.interrupted
    ([1.0, 0.5, 0.25], False)
    >>> train_steps(lambda step: float("nan") if step == 1 else 1.0, 3, disable_progress=True)
    Traceback (most recent call last):
    ...
    course_utils.training.NonFiniteLossError: loss became nan at step 1; the last finite loss was 1 at step 0. Lower the learning rate, clip gradients, or check the inputs for NaN.
    """
    check_callable("step_fn", step_fn)
    if disable_progress is not None:
        check_bool("disable_progress", disable_progress)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative int, got {num_steps!r}")
    for name, value in (("log_every", log_every), ("sync_every", sync_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    history = TrainHistory(step=[], loss=[])
    last_finite: tuple[int, float] | None = None
    pending: list[tuple[int, dict[str, float | torch.Tensor]]] = []
    # Pass `disable` only when asked: otherwise tqdm reads TQDM_DISABLE (set by `make test`).
    options = {} if disable_progress is None else {"disable": disable_progress}
    bar = tqdm(range(num_steps), desc=desc, leave=False, **options)

    def flush() -> None:
        nonlocal last_finite
        read, loss = _read(pending), None
        pending.clear()
        for step, metrics in read:
            loss = metrics["loss"]
            if not math.isfinite(loss):
                where = (f"the last finite loss was {last_finite[1]:.4g} at step {last_finite[0]}"
                         if last_finite else "no finite loss was seen before it")
                raise NonFiniteLossError(
                    f"loss became {loss} at step {step}; {where}. "
                    "Lower the learning rate, clip gradients, or check the inputs for NaN."
                )
            last_finite = (step, loss)
            if step % log_every == 0 or step == num_steps - 1:
                history["step"].append(step)
                for key, value in metrics.items():
                    history.setdefault(key, []).append(value)
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    try:
        for step in bar:
            pending.append((step, _as_metrics(step_fn(step))))
            if len(pending) >= (sync_every if _on_accelerator(pending[-1][1]) else 1):
                flush()
        flush()
    except KeyboardInterrupt:
        history.interrupted = True
        flush()  # the steps that finished before the interrupt
        done = last_finite[0] + 1 if last_finite else 0
        print(f"Interrupted after {done} of {num_steps} steps; returning the history so far "
              "(the model keeps its trained weights).")
    finally:
        bar.close()
    return history
