from __future__ import annotations

import subprocess
import sys

from course_utils import doctor


def test_doctor_passes_here():
    result = subprocess.run([sys.executable, "-m", "course_utils.doctor"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for line in ("python", "torch", "device", "mixed precision", "free memory", "free disk"):
        assert line in result.stdout
    assert "ready for the course" in result.stdout


def test_doctor_names_the_fix_when_something_is_missing(monkeypatch, capsys):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda p: None if p == "sacrebleu" else real(p))
    assert doctor.main() == 1
    out = capsys.readouterr().out
    assert "[FAIL] sacrebleu" in out and "sacrebleu: run `make install`" in out


def test_doctor_flags_old_python(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "MIN_PYTHON", (99, 0))
    assert doctor.main() == 1
    assert "install Python 99.0+" in capsys.readouterr().out


def test_doctor_reports_a_broken_data_source(monkeypatch, capsys):
    import types

    broken = types.ModuleType("course_utils.datasets.broken")
    broken.available = lambda: (False, "data/broken.tsv is missing")
    broken.NOTEBOOKS = ("99",)
    broken.FIX = "run `python -m course_utils.datasets.broken --write`"
    monkeypatch.setattr("course_utils.datasets.data_sources", lambda: [broken])
    assert doctor.main() == 1
    out = capsys.readouterr().out
    assert "data: broken" in out and "data/broken.tsv is missing (notebooks 99)" in out
    assert "--write" in out


def test_doctor_reports_the_launch_plan_and_cache_eviction(capsys):
    assert doctor.main() == 0
    out = capsys.readouterr().out
    assert "launch plan" in out and "2 processes" in out and "torch.distributed" in out
    assert "page cache eviction" in out


def test_doctor_warns_without_posix_fadvise(monkeypatch, capsys):
    import os

    monkeypatch.delattr(os, "posix_fadvise", raising=False)
    assert doctor.main() == 0  # a warning, not a failure: notebook 15 still runs
    out = capsys.readouterr().out
    assert "[warn] page cache eviction" in out and "warm reads only" in out


def test_report_dtype_names_a_wrong_report():
    import pytest

    from course_utils.precision import precision_report

    assert str(doctor.report_dtype(precision_report("cpu"))) == "torch.bfloat16"
    with pytest.raises(TypeError, match="report must be a course_utils.precision.PrecisionReport"):
        doctor.report_dtype("bfloat16")
