"""Device choice, seeding and the fast/full mode switch: the first cell of every notebook.

Every notebook starts with::

    from course_utils import setup_notebook, by_mode
    run = setup_notebook("04_multi_head_attention")
    device = run.device

which seeds Python, NumPy and PyTorch, picks the best device (CUDA, then MPS, then CPU),
switches TF32 matrix products on when the device is a CUDA GPU (the course's one place for it:
:func:`course_utils.precision.enable_tf32`), and tells the learner which mode the notebook
runs in. ``COURSE_FAST=1`` (set by ``make test``) shrinks data and epochs so that CI runs every
notebook in under a minute; full mode is what a learner runs and what the stored outputs show.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from .checks import check_bool

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}


def fast_mode() -> bool:
    """True when the environment variable ``COURSE_FAST`` is set to 1/true/yes/on.

    >>> import os
    >>> os.environ["COURSE_FAST"] = "1"; fast_mode()
    True
    >>> os.environ["COURSE_FAST"] = "0"; fast_mode()
    False
    >>> del os.environ["COURSE_FAST"]
    """
    return os.environ.get("COURSE_FAST", "").strip().lower() in _TRUE


def by_mode(full: T, fast: T) -> T:
    """Pick a size or a target by mode: ``fast`` under ``COURSE_FAST=1``, ``full`` otherwise.

    >>> import os
    >>> os.environ["COURSE_FAST"] = "1"; by_mode(full=10_000, fast=200)
    200
    >>> del os.environ["COURSE_FAST"]; by_mode(full=10_000, fast=200)
    10000
    """
    return fast if fast_mode() else full


def get_device(prefer: str | None = None) -> torch.device:
    """The device the course runs on: CUDA, then Apple's MPS, then the CPU.

    ``prefer`` (or the environment variable ``COURSE_DEVICE``) forces one, e.g. ``"cpu"``
    to compare with a GPU run. Asking for a device that is not there is an error, not a
    silent fallback.

    >>> get_device("cpu")
    device(type='cpu')
    """
    if prefer is not None and not isinstance(prefer, (str, torch.device)):
        raise TypeError(
            f"prefer must be a device name such as 'cpu', 'cuda' or 'mps', or a torch.device, "
            f"got {type(prefer).__name__} {prefer!r}"
        )
    if isinstance(prefer, str) and not prefer.strip():
        raise ValueError("prefer must be a device such as 'cpu', 'cuda', 'cuda:1' or 'mps' (or None "
                         "for the best one here), got an empty str ''")
    prefer = prefer or os.environ.get("COURSE_DEVICE") or None
    if prefer is not None:
        try:
            device = torch.device(prefer)
        except RuntimeError as exc:  # torch: "Expected one of cpu, cuda, ... device type ..."
            raise ValueError(
                f"prefer must be a device such as 'cpu', 'cuda', 'cuda:1' or 'mps', got {prefer!r}"
            ) from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {prefer!r} was requested but CUDA is not available here")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"device {prefer!r} was requested but MPS is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0, deterministic: bool = False) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (all devices) in one call.

    ``deterministic=True`` also asks PyTorch for deterministic kernels (slower on GPU; some
    CUDA operations such as ``index_add_`` then warn). On the CPU, the course's results are
    reproducible with the seed alone.

    >>> seed_everything(0); a = torch.rand(2)
    >>> seed_everything(0); b = torch.rand(2)
    >>> torch.equal(a, b)
    True
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not -(2**63) <= seed < 2**64:  # the range torch.manual_seed accepts
        raise ValueError(f"seed must be in [-2**63, 2**64), got {seed}")
    check_bool("deterministic", deterministic)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this workspace setting to be deterministic (PyTorch's reproducibility notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@dataclass
class NotebookRun:
    """What ``setup_notebook`` returns: the notebook's name, device, mode and start time."""

    name: str
    device: torch.device
    seed: int
    fast: bool
    started: float = field(default_factory=time.perf_counter)

    @property
    def mode(self) -> str:
        return "fast" if self.fast else "full"

    def elapsed(self) -> float:
        """Seconds since ``setup_notebook`` was called."""
        return time.perf_counter() - self.started

    def __str__(self) -> str:
        where = str(self.device)
        if self.device.type == "cuda":
            where += f" ({torch.cuda.get_device_name(self.device)}, TF32 matmuls {_tf32_state()})"
        return (
            f"{self.name}: {self.mode} mode on {where} "
            f"(torch {torch.__version__}, {torch.get_num_threads()} CPU threads, seed {self.seed})"
        )


def _tf32_state() -> str:
    return "off" if torch.get_float32_matmul_precision() == "highest" else "on"


_current_run: NotebookRun | None = None


def setup_notebook(name: str, seed: int = 0, device: str | None = None, quiet: bool = False) -> NotebookRun:
    """Start a notebook: seed everything, pick the device, remember the name for ``record_result``.

    >>> run = setup_notebook("99_example", quiet=True)
    >>> run.name, run.seed
    ('99_example', 0)
    """
    global _current_run
    check_bool("quiet", quiet)
    if isinstance(device, str) and not device.strip():
        raise ValueError("device must be a device such as 'cpu', 'cuda' or 'mps' (or None for the "
                         "best one here), got an empty str ''")
    seed_everything(seed)
    run = NotebookRun(name=name, device=get_device(device), seed=seed, fast=fast_mode())
    if run.device.type == "cuda":
        from .precision import enable_tf32

        enable_tf32()  # float32 matmuls on tensor cores (Ampere+); see notebook 00
    from .display import describe_figures

    describe_figures()  # in a notebook, every figure carries its title as alt text
    _current_run = run
    if not quiet:
        print(run)
    return run


def current_run() -> NotebookRun | None:
    """The run started by the last ``setup_notebook`` call in this process, if any."""
    return _current_run
