"""Checkpoints that say what they hold, load safely, and explain a mismatch.

* :func:`save_checkpoint` stores the model's ``state_dict`` (and the optimizer's, if given), the
  model's **config** (the constructor arguments you need to build it again), the model class,
  the step, any ``extra`` plain data and the **library versions** (torch, course_utils, Python,
  NumPy). It writes a temporary file and renames it, so a crash never leaves half a checkpoint.
* :func:`save_state` writes the same file from state dicts (a distributed trainer's rank 0).
* :func:`load_checkpoint` reads it with ``torch.load(..., weights_only=True)`` (no pickled code
  runs: a checkpoint from the internet cannot execute anything) and, when the model does not
  match, raises :class:`CheckpointMismatchError` naming the missing keys, the unexpected keys
  and every shape that differs (expected by the model vs found in the file), together with the
  config the checkpoint was saved with, so the learner can build the right model.

Only plain data may go in ``config`` and ``extra``: numbers, strings, booleans, ``None``,
lists, tuples, dicts with string keys, tensors, ``torch.dtype``/``torch.device``.

>>> import tempfile
>>> from torch import nn
>>> def mlp(hidden):
...     return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))
>>> with tempfile.TemporaryDirectory() as d:
...     path = save_checkpoint(f"{d}/model.pt", mlp(8), config={"hidden": 8}, step=10)
...     ckpt = load_checkpoint(path, mlp(8))                 # same architecture: loads
...     load_checkpoint(path, mlp(16))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
course_utils.checkpoint.CheckpointMismatchError: .../model.pt does not fit Sequential: 3 shape mismatches: 0.weight: model expects (16, 4), checkpoint has (8, 4); 0.bias: model expects (16,), checkpoint has (8,); 2.weight: model expects (2, 16), checkpoint has (2, 8). The checkpoint was saved from torch.nn.modules.container.Sequential with config {'hidden': 8}: build the model with that config, ...
>>> ckpt["step"], ckpt["config"], sorted(ckpt["versions"])
(10, {'hidden': 8}, ['course_utils', 'numpy', 'python', 'torch'])
"""

from __future__ import annotations

import datetime as _dt
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checks import check_bool, check_path, check_str, describe
from .files import atomic_open

__all__ = [
    "CheckpointMismatchError", "compare_state_dicts", "load_checkpoint", "save_checkpoint", "save_state", "versions",
]

FORMAT = "course_utils.checkpoint/1"
_REQUIRED = ("format", "model", "config", "versions")


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model: missing/unexpected keys or other shapes."""


def versions() -> dict[str, str]:
    """The library versions a checkpoint records.

    >>> sorted(versions())
    ['course_utils', 'numpy', 'python', 'torch']
    """
    import numpy as np

    from . import __version__

    return {
        "course_utils": str(__version__),
        "numpy": str(np.__version__),
        "python": sys.version.split()[0],
        "torch": str(torch.__version__),
    }


_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.Tensor, torch.dtype, torch.device)


def _check_plain(value: Any, where: str) -> None:
    """Raise ``TypeError`` naming ``where`` if ``value`` is not plain data (weights_only-safe)."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} keys must be str or int, got {type(key).__name__} key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} must hold plain data only (numbers, strings, lists, dicts, tensors) so that it "
        f"loads with weights_only=True, got {type(value).__module__}.{type(value).__qualname__}"
    )


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    step: int | None = None,
) -> Path:
    """Save ``model`` (and ``optimizer``) with its ``config`` and the library versions; return the path.

    The file is written next to ``path`` under a temporary name and renamed into place.
    """
    check_path("path", path)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_optimizer(optimizer)
    cls = type(model)
    return save_state(
        path,
        model_state=model.state_dict(),
        optimizer_state=optimizer.state_dict() if optimizer is not None else None,
        model_class=f"{cls.__module__}.{cls.__qualname__}",
        config=config,
        extra=extra,
        step=step,
    )


def save_state(
    path: str | Path,
    *,
    model_state: Mapping[str, Any],
    optimizer_state: Mapping[str, Any] | None = None,
    model_class: str = "unknown",
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    step: int | None = None,
) -> Path:
    """:func:`save_checkpoint` for code that holds state dicts rather than the modules.

    A distributed trainer is such code: under FSDP the full state dicts are gathered by a
    collective (``torch.distributed.checkpoint.state_dict.get_state_dict``) and only rank 0
    writes them. The file has the same format and loads with :func:`load_checkpoint`.

    >>> import tempfile
    >>> m = nn.Linear(2, 1); opt = torch.optim.SGD(m.parameters(), lr=0.1)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = save_state(f"{d}/ckpt.pt", model_state=m.state_dict(),
    ...                    optimizer_state=opt.state_dict(), step=7, config={"lr": 0.1})
    ...     ckpt = load_checkpoint(p, nn.Linear(2, 1))
    >>> ckpt["step"], ckpt["config"], torch.equal(ckpt["model"]["weight"], m.weight)
    (7, {'lr': 0.1}, True)
    """
    path = check_path("path", path)
    check_str("model_class", model_class, allow_empty=False)
    if not isinstance(model_state, Mapping):
        raise TypeError(f"model_state must be a state dict (a mapping), got {type(model_state).__name__}")
    if optimizer_state is not None and not isinstance(optimizer_state, Mapping):
        raise TypeError(f"optimizer_state must be a state dict or None, got {type(optimizer_state).__name__}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ValueError(f"step must be a non-negative int or None, got {step!r}")
    for name, mapping in (("config", config), ("extra", extra)):
        if mapping is not None and not isinstance(mapping, Mapping):
            raise TypeError(f"{name} must be a dict or None, got {describe(mapping)}")
    config = dict(config or {})
    extra = dict(extra or {})
    _check_plain(config, "config")
    _check_plain(extra, "extra")
    payload = {
        "format": FORMAT,
        "model_class": str(model_class),
        "model": dict(model_state),
        "optimizer": dict(optimizer_state) if optimizer_state is not None else None,
        "config": config,
        "step": step,
        "extra": extra,
        "versions": versions(),
        "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_open(path, "wb") as f:  # a crash or a full disk never leaves half a checkpoint
        torch.save(payload, f)
    return path


def compare_state_dicts(expected: Mapping[str, Any], received: Mapping[str, Any]) -> dict[str, list]:
    """Keys missing from ``received``, keys it has in excess, and the shapes that differ.

    >>> a = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    >>> b = {"w": torch.zeros(3, 3), "extra": torch.zeros(1)}
    >>> compare_state_dicts(a, b)
    {'missing': ['b'], 'unexpected': ['extra'], 'shapes': [('w', (2, 3), (3, 3))]}
    """
    for name, state in (("expected", expected), ("received", received)):
        if not isinstance(state, Mapping):
            raise TypeError(f"{name} must be a state dict (a mapping), got {describe(state)}")
    missing = [k for k in expected if k not in received]
    unexpected = [k for k in received if k not in expected]
    shapes = []
    for key, want in expected.items():
        if key in received and isinstance(want, torch.Tensor) and isinstance(received[key], torch.Tensor):
            if tuple(want.shape) != tuple(received[key].shape):
                shapes.append((key, tuple(want.shape), tuple(received[key].shape)))
    return {"missing": missing, "unexpected": unexpected, "shapes": shapes}


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def _mismatch_message(path: Path, model: nn.Module, diff: dict[str, list], ckpt: Mapping[str, Any],
                      strict: bool) -> str:
    parts = []
    if diff["shapes"]:
        n = len(diff["shapes"])
        shown = "; ".join(f"{k}: model expects {want}, checkpoint has {got}" for k, want, got in diff["shapes"][:8])
        more = f"; … ({n - 8} more)" if n > 8 else ""
        parts.append(f"{n} shape mismatch{'es' if n != 1 else ''}: {shown}{more}")
    if strict and diff["missing"]:
        parts.append(f"missing from the checkpoint ({len(diff['missing'])}): {_listing(diff['missing'])}")
    if strict and diff["unexpected"]:
        parts.append(f"unexpected in the checkpoint ({len(diff['unexpected'])}): {_listing(diff['unexpected'])}")
    saved = ckpt.get("model_class", "an unknown class")
    return (
        f"{path} does not fit {type(model).__name__}: " + " | ".join(parts) + ". "
        f"The checkpoint was saved from {saved} with config {ckpt.get('config')}: build the model "
        "with that config, or load with strict=False to skip missing/unexpected keys (shapes "
        "must still match)."
    )


def _check_optimizer(optimizer: Any) -> None:
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {describe(optimizer)}")


def _check_map_location(map_location: Any) -> None:
    """A CUDA ``map_location`` on a machine without CUDA fails here, saying what to pass instead."""
    if callable(map_location) or isinstance(map_location, dict):
        return
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"map_location must be a device such as 'cpu' or 'cuda:0', got {map_location!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"map_location={map_location!r} asks for a CUDA GPU, but this machine has none: "
            "load with map_location='cpu' (the default)"
        )


def _check_optimizer_shapes(path: Path, optimizer: torch.optim.Optimizer, saved: Mapping[str, Any]) -> None:
    """The saved per-parameter state (e.g. Adam's moments) must have each parameter's shape.

    ``Optimizer.load_state_dict`` only compares the number of parameters, so the state of a
    differently shaped model would load and fail (or, worse, broadcast) at the next step.
    """
    groups, state = saved.get("param_groups", []), saved.get("state", {})
    for g, (group, saved_group) in enumerate(zip(optimizer.param_groups, groups, strict=False)):
        for i, (param, pid) in enumerate(zip(group["params"], saved_group.get("params", []), strict=False)):
            for name, value in state.get(pid, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise ValueError(
                        f"the optimizer state in {path} does not fit this model: parameter {i} of "
                        f"group {g} has shape {tuple(param.shape)}, its saved {name!r} has shape "
                        f"{tuple(value.shape)}; the optimizer was saved for a different model"
                    )


def load_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
) -> dict[str, Any]:
    """Read a checkpoint (``weights_only=True``), load it into ``model``/``optimizer``; return it.

    The returned dict has ``model`` and ``optimizer`` (state dicts), ``config``, ``step``,
    ``extra``, ``versions``, ``model_class`` and ``saved_at``. Errors:

    * no file: ``FileNotFoundError`` naming it;
    * a truncated/corrupt file, or one that is not a course checkpoint: ``ValueError`` naming it;
    * a model that does not fit: :class:`CheckpointMismatchError` (a ``ValueError``) naming the
      missing/unexpected keys and the mismatching shapes (expected vs received). Nothing is
      loaded into the model in that case;
    * a file that holds Python objects (it would run code when unpickled): ``ValueError`` naming
      the object it refused;
    * ``map_location`` on a GPU this machine does not have: ``ValueError`` saying what to pass;
    * an optimizer state saved for a differently shaped model: ``ValueError`` naming the
      parameter and both shapes.
    """
    path = check_path("path", path)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    _check_optimizer(optimizer)
    check_bool("strict", strict)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: check the path, or train the model and save it with "
            "course_utils.checkpoint.save_checkpoint first"
        )
    _check_map_location(map_location)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch words the refusal "Unsupported global: GLOBAL x.y" (older) or
        # "Trying to load unsupported GLOBAL x.y whose module x is blocked" (newer)
        found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", str(exc))
        if found is None:  # not a pickle of objects, just bytes that are not a checkpoint
            raise ValueError(
                f"{path} is not a readable checkpoint (truncated or corrupt: the data is not a "
                "torch.save file). Save it again, or copy the file again if it came from elsewhere."
            ) from exc
        raise ValueError(
            f"{path} could not be loaded with weights_only=True: it holds a Python object "
            f"({found.group(1)}), not only plain data and tensors, and loading it would run code. "
            "Only load files you trust; re-save it with course_utils.checkpoint.save_checkpoint."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ValueError(
            f"{path} is not a readable checkpoint (truncated or corrupt: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Save it again."
        ) from exc
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != FORMAT:
        keys = sorted(ckpt) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(
            f"{path} is not a course_utils checkpoint (expected a dict with format {FORMAT!r} and "
            f"keys {list(_REQUIRED)}, got {keys}). A bare state_dict loads with "
            "model.load_state_dict(torch.load(path, weights_only=True))."
        )
    ckpt = dict(ckpt)
    if model is not None:
        state = ckpt["model"]
        diff = compare_state_dicts(model.state_dict(), state)
        if diff["shapes"] or (strict and (diff["missing"] or diff["unexpected"])):
            raise CheckpointMismatchError(_mismatch_message(path, model, diff, ckpt, strict))
        model.load_state_dict(state, strict=strict)
    if optimizer is not None:
        if ckpt.get("optimizer") is None:
            raise ValueError(f"{path} holds no optimizer state (it was saved without optimizer=...)")
        _check_optimizer_shapes(path, optimizer, ckpt["optimizer"])
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as exc:
            raise ValueError(
                f"the optimizer state in {path} does not fit this optimizer ({exc}); build the "
                "optimizer over model.parameters() of the same model as when saving"
            ) from exc
    return ckpt
