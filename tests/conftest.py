"""Test-wide settings: a non-interactive plotting backend, and reports written to a temp folder."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402


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


os.environ.setdefault("HYPOTHESIS_PROFILE", "ci")
