"""A small training loop that every notebook shares: progress bar, history, and two guards.

* A non-finite loss stops training at once with the step and the last finite loss, instead
  of training on NaNs for the rest of the run.
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


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the step."""


class TrainHistory(dict):
    """``{"step": [...], "loss": [...], <other metrics>: [...]}`` plus ``interrupted``."""

    interrupted: bool = False

    @property
    def last_loss(self) -> float:
        return self["loss"][-1] if self.get("loss") else math.nan


def _as_metrics(result: Any) -> dict[str, float]:
    if isinstance(result, Mapping):
        if "loss" not in result:
            raise ValueError(f"step_fn returned a dict without a 'loss' entry; got keys {sorted(map(str, result))}")
        items = result.items()
    else:
        items = [("loss", result)]
    metrics = {}
    for key, value in items:
        if isinstance(value, torch.Tensor):
            if value.numel() != 1 or value.is_complex():
                raise ValueError(
                    f"step_fn must return a scalar {key!r} (a float or a one-element tensor), got a "
                    f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
                )
            value = value.detach().item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"step_fn must return a number for {key!r} (a float, a one-element tensor, or a "
                f"dict of them with a 'loss' entry), got {type(value).__name__} {value!r}"
            )
        metrics[key] = float(value)
    return metrics


def train_steps(
    step_fn: Callable[[int], Any],
    num_steps: int,
    desc: str = "training",
    log_every: int = 1,
    disable_progress: bool | None = None,
) -> TrainHistory:
    """Run ``step_fn(step)`` for ``num_steps`` steps with a progress bar; return the history.

    >>> losses = iter([1.0, 0.5, 0.25])
    >>> h = train_steps(lambda step: next(losses), num_steps=3, disable_progress=True)
    >>> h["loss"], h.interrupted
    ([1.0, 0.5, 0.25], False)
    >>> train_steps(lambda step: float("nan") if step == 1 else 1.0, 3, disable_progress=True)
    Traceback (most recent call last):
    ...
    course_utils.training.NonFiniteLossError: loss became nan at step 1; the last finite loss was 1 at step 0. Lower the learning rate, clip gradients, or check the inputs for NaN.
    """
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative int, got {num_steps!r}")
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    history = TrainHistory(step=[], loss=[])
    last_finite: tuple[int, float] | None = None
    # Pass `disable` only when asked: otherwise tqdm reads TQDM_DISABLE (set by `make test`).
    options = {} if disable_progress is None else {"disable": disable_progress}
    bar = tqdm(range(num_steps), desc=desc, leave=False, **options)
    try:
        for step in bar:
            metrics = _as_metrics(step_fn(step))
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
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    except KeyboardInterrupt:
        history.interrupted = True
        done = history["step"][-1] + 1 if history["step"] else 0
        print(f"Interrupted after {done} of {num_steps} steps; returning the history so far "
              "(the model keeps its trained weights).")
    finally:
        bar.close()
    return history
