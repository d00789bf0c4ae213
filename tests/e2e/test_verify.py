"""`make verify NB=..` re-runs a notebook and compares it with the stored run, touching nothing."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
import verify  # noqa: E402

pytestmark = pytest.mark.slow  # runs a (short) notebook in full mode


def _snapshot():
    return {p: p.read_bytes() for p in [*(REPO / "reports").glob("*.json"), *(REPO / "notebooks").glob("*.ipynb")]}


def test_verify_on_a_fast_notebook_is_within_range_and_touches_nothing(capsys, monkeypatch):
    monkeypatch.delenv("COURSE_REPORTS_DIR", raising=False)  # read the course's own stored results
    before = _snapshot()
    assert verify.main(["04"]) == 0
    out = capsys.readouterr().out
    assert "max_abs_diff_vs_nn_multiheadattention" in out and "within range" in out
    assert "target missed" not in out
    assert _snapshot() == before


@pytest.mark.parametrize("value, verdict", [(0.5, "within range"), (0.7, "outside the measured range"),
                                             (0.2, "target missed")])
def test_verdicts(value, verdict):
    stored, spread = {"value": 0.5}, {"min": 0.45, "max": 0.55}
    assert verify.verdict(value, stored, spread, target=0.3, higher=True, timing=False) == verdict


def test_a_timing_result_is_judged_by_its_target_only():
    assert verify.verdict(9.0, {"value": 2.0}, None, target=10.0, higher=False, timing=True) == "target met"


def test_a_notebook_is_found_by_number_or_refused():
    assert verify.find_notebook("4").name.startswith("04_")
    with pytest.raises(SystemExit, match="names no notebook"):
        verify.find_notebook("99")
