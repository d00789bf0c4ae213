"""Test-wide settings and the helpers every test folder shares.

Folders: ``unit/`` (one module each, fast), ``properties/`` (property and fuzz tests),
``repo/`` (the repository itself: README, reports, notebooks' metadata, environment) and
``e2e/`` (processes: JupyterLab, the browser, torchrun, whole notebooks). Tests marked
``slow`` take more than a few seconds; ``make unit`` skips them, ``make test`` runs them.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A seeded standard-normal tensor: the same numbers in every test run."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(autouse=True)
def _isolated_reports(tmp_path_factory, monkeypatch):
    # Tests must never touch the real reports/metrics.json that `make execute` keeps.
    monkeypatch.setenv("COURSE_REPORTS_DIR", str(tmp_path_factory.mktemp("reports")))
    monkeypatch.delenv("COURSE_FAST", raising=False)
    yield


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")

