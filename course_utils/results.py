"""Headline results: asserted against their target, and recorded by full-mode runs.

Every notebook calls ``record_result`` once per headline number. It checks the number
against the target of the current mode (a run that misses it fails loudly, with the size of
the miss). Only ``make execute`` writes the number to ``reports/metrics.json`` (it sets
``COURSE_RECORD=1``), from which the README's course map reads; a learner's own run prints
the stored value beside theirs and leaves the file, and so their git tree, as it was.

Timing results (wall-clock seconds, speed-ups, throughput: ``timing=True``) depend on the
machine. A learner's run prints a warning when one misses its target; only ``make execute``
asserts them, on the machine whose numbers the course quotes.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import numbers
import os
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from .checks import check_bool, check_path, check_str, describe
from .files import atomic_write_json
from .runtime import current_run, fast_mode


def reports_dir() -> Path:
    """``reports/`` at the repository root (or ``$COURSE_REPORTS_DIR`` when set)."""
    override = os.environ.get("COURSE_REPORTS_DIR")
    if override:
        return Path(override)
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").exists():
        return repo / "reports"
    return Path.cwd() / "reports"


def metrics_path() -> Path:
    return reports_dir() / "metrics.json"


def recording() -> bool:
    """True when results are written: under ``make execute`` (``COURSE_RECORD=1``, the run whose
    numbers the course quotes) and under ``scripts/reproducibility.py`` (``COURSE_RECORD=measure``)."""
    return os.environ.get("COURSE_RECORD", "").strip().lower() in {"1", "true", "yes", "on", "measure"}


def measuring() -> bool:
    """True under ``scripts/reproducibility.py``: every result is recorded, none stops the run (a
    missed target is a finding about that setting, reported in ``reports/reproducibility.json``)."""
    return os.environ.get("COURSE_RECORD", "").strip().lower() == "measure"


class TargetMissed(AssertionError):
    """A headline result missed its target; the message says by how much."""


def check_target(name: str, value: float, target: float, higher_is_better: bool = True) -> None:
    """Raise ``TargetMissed`` unless ``value`` meets ``target``.

    >>> check_target("accuracy", 0.99, 0.98)
    >>> check_target("accuracy", 0.95, 0.98)
    Traceback (most recent call last):
    ...
    course_utils.results.TargetMissed: accuracy = 0.95 missed its target ≥ 0.98 by 0.03
    """
    _check_names(name, higher_is_better)
    for what, x in (("value", value), ("target", target)):
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise TypeError(f"{name}: {what} must be a real number, got {describe(x)}")
    _check_target_finite(name, target)
    if not math.isfinite(value):
        raise TargetMissed(f"{name} = {value} is not a finite number (target {target})")
    ok = value >= target if higher_is_better else value <= target
    if not ok:
        sign = "≥" if higher_is_better else "≤"
        raise TargetMissed(f"{name} = {value:.4g} missed its target {sign} {target:.4g} by {abs(value - target):.3g}")


@contextmanager
def _locked(path: Path):
    """An exclusive lock beside ``path``: notebooks running in parallel never lose an entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # filelock: an OS-level lock on Linux, macOS and Windows alike (fcntl is POSIX-only).
    with FileLock(str(path.with_suffix(".lock"))):
        yield


def load_metrics(path: Path | None = None) -> list[dict[str, Any]]:
    """The entries of ``reports/metrics.json`` (an empty list when there is none)."""
    path = metrics_path() if path is None else check_path("path", path)
    if not path.exists():
        return []
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or not isinstance(data.get("results", []), list):
            raise ValueError(f"expected {{'results': [...]}}, got {type(data).__name__}")
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(
            f"{path} is corrupt or truncated ({exc}). Delete it; the next full-mode run "
            "(`make execute`) writes it again."
        ) from exc
    return data.get("results", [])


def _check_names(name: Any, higher_is_better: Any, unit: Any = "") -> None:
    """A result's name is a non-empty string (it keys the reports), the direction a real bool."""
    check_str("name", name, allow_empty=False)
    check_bool("higher_is_better", higher_is_better)
    check_str("unit", unit)


def _check_target_finite(name: str, target: Any) -> None:
    """A target is a finite number: a NaN target can never be met, an infinite one means nothing."""
    if target is not None and not math.isfinite(target):
        raise ValueError(f"{name}: target must be a finite number, got {target}")


def check_real_number(what: str, x: Any) -> None:
    """A real number (NaN and infinities included: a miss, not a type error)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {describe(x)}")


def _shown(name: str, value: float, unit: str = "") -> str:
    return f"{name} = {value:.4g}{(' ' + unit) if unit else ''}"


def describe_result(name: str, value: float, target: float | None, higher_is_better: bool = True,
                    unit: str = "") -> str:
    """The one line a headline result is shown as: in the notebook, the run summary and the README.

    >>> describe_result("accuracy", 0.98765, 0.95)
    'accuracy = 0.9877 (target ≥ 0.95)'
    >>> describe_result("test BLEU", 92.41, None)
    'test BLEU = 92.41 (reported, no target)'
    """
    _check_names(name, higher_is_better, unit)
    for what, x in (("value", value), ("target", target)):
        if x is not None or what == "value":
            check_real_number(f"{name}: {what}", x)
    _check_target_finite(name, target)
    if target is None:
        return f"{_shown(name, value, unit)} (reported, no target)"
    return f"{_shown(name, value, unit)} (target {'≥' if higher_is_better else '≤'} {target:.4g})"


def _print_stored(notebook: str, name: str) -> None:
    """A learner's run: show the course's stored value beside theirs (never write the file)."""
    try:
        stored = [r for r in load_metrics() if (r["notebook"], r["name"]) == (notebook, name)]
    except ValueError:
        return
    if stored:
        print(f"  (the course's stored run: {_shown(name, stored[0]['value'], stored[0].get('unit', ''))})")


def record_result(
    name: str,
    value: float,
    target: float | None,
    higher_is_better: bool = True,
    unit: str = "",
    notebook: str | None = None,
    full_mode_only: bool = False,
    timing: bool = False,
) -> None:
    """Assert a headline result against its target and record it (full mode only).

    ``target`` is the target of the current mode: pass ``by_mode(full=..., fast=...)`` when the
    two differ. ``target=None`` records a number the course states but sets no bar for (an
    absolute score next to the asserted comparison); it is shown as "reported, no target". The entry ``{notebook, name, value, target, ...}`` replaces any earlier entry
    with the same notebook and name.

    ``full_mode_only=True`` is for numbers that mean something only at full-mode sizes: wall-clock
    ratios and speed-ups (they need a machine the run has to itself), and results of training
    that fast mode cuts too short to mean anything. CI runs fast mode with two
    notebooks sharing two cores, where a 30 µs kernel can take milliseconds; there the value is
    printed, marked as not asserted, and never fails the run. ``target`` is the full-mode one.

    ``timing=True`` marks a number that depends on the machine (seconds, speed-ups,
    throughput). Outside ``make execute`` a missed timing target prints a warning instead of
    failing: a learner's slower laptop is not a bug.

    >>> record_result("doctest_value", 0.5, target=1.0, higher_is_better=False, notebook="doctest")
    doctest_value = 0.5 (target ≤ 1)
    """
    _check_names(name, higher_is_better, unit)
    for flag in ("full_mode_only", "timing"):
        check_bool(flag, locals()[flag])
    if notebook is not None:
        check_str("notebook", notebook, allow_empty=False)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(
                f"{name}: value must be a number or a one-element real tensor, got a tensor of "
                f"shape {tuple(value.shape)} and dtype {value.dtype}"
            )
        value = value.item()
    check_real_number(f"{name}: value", value)
    if target is not None:
        check_real_number(f"{name}: target", target)
        _check_target_finite(name, target)
    value = float(value)
    target = None if target is None else float(target)
    if full_mode_only and fast_mode() and target is not None:
        sign = "≥" if higher_is_better else "≤"
        print(f"{_shown(name, value, unit)} (target {sign} {target:.4g} is asserted in full mode only)")
        return
    if target is None:
        if not math.isfinite(value):
            raise TargetMissed(f"{name} = {value} is not a finite number")
    run = current_run()
    notebook = notebook or (run.name if run else "unknown")
    if target is not None:
        try:
            check_target(name, value, target, higher_is_better)
        except TargetMissed as exc:
            if measuring():
                print(f"{describe_result(name, value, target, higher_is_better, unit)}\n  ⚠ {exc}")
                _write(notebook, name, value, target, higher_is_better, unit, run, timing)
                return
            if not timing or recording():
                raise
            print(f"{describe_result(name, value, target, higher_is_better, unit)}\n"
                  f"  ⚠ {exc}: timings depend on the machine; this target is asserted only on the "
                  "course's reference run (`make execute`)")
            _print_stored(notebook, name)
            return
    print(describe_result(name, value, target, higher_is_better, unit))
    if fast_mode() or notebook == "doctest":
        return
    if not recording():
        _print_stored(notebook, name)
        return
    _write(notebook, name, value, target, higher_is_better, unit, run, timing)


def _write(notebook: str, name: str, value: float, target: float | None, higher_is_better: bool, unit: str,
           run: Any, timing: bool = False) -> None:
    """Replace this result's entry in ``reports/metrics.json`` (atomically, under a lock)."""
    entry = {
        "notebook": notebook,
        "name": name,
        "value": value,
        "target": target,
        "higher_is_better": higher_is_better,
        "unit": unit,
        "timing": timing,
        "mode": "full",
        "device": str(run.device) if run else "unknown",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "wall_time_s": round(run.elapsed(), 1) if run else None,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = metrics_path()
    with _locked(path):
        results = [r for r in load_metrics(path) if (r["notebook"], r["name"]) != (notebook, name)]
        results.append(entry)
        results.sort(key=lambda r: (r["notebook"], r["name"]))
        atomic_write_json(path, {"results": results})
