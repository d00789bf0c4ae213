"""The Makefile's promises: a clear message for an old Python, and no reinstall when nothing changed."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO  # noqa: E402


def test_old_python_gets_a_clear_message(tmp_path):
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "-s", f"PYTHON={sys.executable}", f"VENV={venv}", "MIN_PYTHON=99.0", "install"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "The course needs Python 99.0 or newer" in result.stderr
    assert "make PYTHON=python3.12 test" in result.stderr
    assert not venv.exists(), "no virtualenv may be created with a Python that is too old"


def test_second_install_is_a_no_op():
    # `make test` has just installed (or found) the course: `make install` must have nothing to do.
    stamp = REPO / ".venv" / ".course-installed"
    if not stamp.exists():
        import pytest

        pytest.skip("not run through `make`")
    result = subprocess.run(["make", "-q", "install"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, "make considers the install out of date although pyproject.toml is unchanged"
