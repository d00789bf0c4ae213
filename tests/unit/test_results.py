from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from course_utils import record_result, setup_notebook
from course_utils.results import TargetMissed, load_metrics, metrics_path


def test_full_mode_records_and_replaces(capsys, monkeypatch):
    monkeypatch.setenv("COURSE_RECORD", "1")  # as `make execute` sets it
    setup_notebook("00_test", quiet=True, device="cpu")
    record_result("accuracy", 0.9, target=0.8)
    record_result("accuracy", 0.95, target=0.8)
    record_result("loss", 0.1, target=0.2, higher_is_better=False)
    entries = load_metrics()
    assert [(e["name"], e["value"]) for e in entries] == [("accuracy", 0.95), ("loss", 0.1)]
    entry = entries[0]
    assert entry["notebook"] == "00_test" and entry["mode"] == "full" and entry["device"] == "cpu"
    for key in ("target", "torch", "wall_time_s", "timestamp", "machine"):
        assert key in entry
    assert "accuracy = 0.95 (target ≥ 0.8)" in capsys.readouterr().out


def test_fast_mode_asserts_but_never_writes(monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    setup_notebook("00_test", quiet=True, device="cpu")
    record_result("accuracy", 0.9, target=0.5)
    assert not metrics_path().exists()
    with pytest.raises(TargetMissed):
        record_result("accuracy", 0.4, target=0.5)


def test_full_mode_only_targets_are_reported_not_asserted_in_fast_mode(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_FAST", "1")
    setup_notebook("00_test", quiet=True, device="cpu")
    record_result("speedup", 0.5, target=1.5, unit="x", full_mode_only=True)
    assert "speedup = 0.5 x (target ≥ 1.5 is asserted in full mode only)" in capsys.readouterr().out
    assert not metrics_path().exists()


def test_full_mode_only_targets_are_asserted_in_full_mode(monkeypatch):
    monkeypatch.setenv("COURSE_RECORD", "1")
    setup_notebook("00_test", quiet=True, device="cpu")
    with pytest.raises(TargetMissed, match="speedup = 0.5 missed its target ≥ 1.5"):
        record_result("speedup", 0.5, target=1.5, full_mode_only=True)
    record_result("speedup", 2.0, target=1.5, full_mode_only=True)
    assert [(e["name"], e["value"]) for e in load_metrics()] == [("speedup", 2.0)]


def test_a_reported_number_has_no_target_but_must_be_finite(capsys, monkeypatch):
    monkeypatch.setenv("COURSE_RECORD", "1")
    setup_notebook("00_test", quiet=True, device="cpu")
    record_result("test BLEU", 92.41, target=None)
    assert "test BLEU = 92.41 (reported, no target)" in capsys.readouterr().out
    assert [(e["name"], e["value"], e["target"]) for e in load_metrics()] == [("test BLEU", 92.41, None)]
    with pytest.raises(TargetMissed, match="not a finite number"):
        record_result("test BLEU", float("nan"), target=None)


def test_missed_target_says_by_how_much():
    with pytest.raises(TargetMissed, match=r"accuracy = 0.9 missed its target ≥ 0.975 by 0.075"):
        record_result("accuracy", 0.9, target=0.975, notebook="x")
    with pytest.raises(TargetMissed, match=r"time = 3 missed its target ≤ 2 by 1"):
        record_result("time", 3.0, target=2.0, higher_is_better=False, notebook="x")
    assert load_metrics() == []  # a miss is never recorded


def test_nan_is_a_miss():
    with pytest.raises(TargetMissed, match="not a finite number"):
        record_result("loss", float("nan"), target=1.0, higher_is_better=False, notebook="x")


def _write(i: int, reports_dir: str) -> None:
    import os

    os.environ["COURSE_REPORTS_DIR"] = reports_dir
    os.environ["COURSE_RECORD"] = "1"
    from course_utils import record_result as rr

    rr(f"m{i}", float(i), target=0.0, notebook=f"nb{i % 3}")


def test_parallel_writers_lose_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_REPORTS_DIR", str(tmp_path))
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        pool.starmap(_write, [(i, str(tmp_path)) for i in range(12)])
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert sorted(e["name"] for e in data["results"]) == sorted(f"m{i}" for i in range(12))


def test_a_learners_full_run_never_writes_the_reports_and_shows_the_stored_value(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_RECORD", "1")
    setup_notebook("00_test", quiet=True, device="cpu")
    record_result("accuracy", 0.97, target=0.9)
    before = metrics_path().read_bytes()
    monkeypatch.delenv("COURSE_RECORD")
    record_result("accuracy", 0.93, target=0.9)
    assert metrics_path().read_bytes() == before
    out = capsys.readouterr().out
    assert "accuracy = 0.93 (target ≥ 0.9)" in out and "the course's stored run: accuracy = 0.97" in out
    with pytest.raises(TargetMissed):  # a seeded quality target still fails loudly
        record_result("accuracy", 0.5, target=0.9)


def test_a_missed_timing_target_warns_on_a_learners_machine_and_fails_under_make_execute(monkeypatch, capsys):
    monkeypatch.delenv("COURSE_RECORD", raising=False)
    setup_notebook("00_test", quiet=True, device="cpu")
    record_result("speedup", 2.0, target=5.0, unit="x", timing=True)
    out = capsys.readouterr().out
    assert "speedup = 2 x (target ≥ 5)" in out and "missed its target" in out and "asserted only" in out
    assert not metrics_path().exists()
    monkeypatch.setenv("COURSE_RECORD", "1")
    with pytest.raises(TargetMissed, match="speedup = 2 missed its target ≥ 5 by 3"):
        record_result("speedup", 2.0, target=5.0, unit="x", timing=True)


@pytest.mark.parametrize("call, error, message", [
    (lambda: record_result(123, 0.5, target=0.1), TypeError, "name must be a str, got int 123"),
    (lambda: record_result("", 0.5, target=0.1), ValueError, "name must be a non-empty str"),
    (lambda: record_result("acc", 0.5, target=0.1, higher_is_better="no"), TypeError,
     "higher_is_better must be True or False, got str 'no'"),
    (lambda: record_result("acc", "0.5", target=0.1), TypeError, "acc: value must be a real number, got str '0.5'"),
    (lambda: record_result("acc", 0.5, target=True), TypeError, "acc: target must be a real number, got bool True"),
    (lambda: record_result("acc", 0.5, target=0.1, timing="yes"), TypeError, "timing must be True or False"),
    (lambda: record_result("acc", 0.5, target=0.1, unit=3), TypeError, "unit must be a str, got int 3"),
])
def test_bad_arguments_are_named(call, error, message):
    setup_notebook("00_test", quiet=True, device="cpu")
    with pytest.raises(error, match=message):
        call()


def test_describe_result_names_a_bad_value():
    from course_utils.results import describe_result

    with pytest.raises(TypeError, match="x: target must be a real number, got str 'a'"):
        describe_result("x", 0.5, "a")
    with pytest.raises(TypeError, match="x: value must be a real number, got str 'a'"):
        describe_result("x", "a", 0.5)


def test_a_failed_write_leaves_the_metrics_as_they_were(monkeypatch):
    monkeypatch.setenv("COURSE_RECORD", "1")
    setup_notebook("00_test", quiet=True, device="cpu")
    record_result("accuracy", 0.9, target=0.8)
    before = metrics_path().read_bytes()
    import course_utils.files as files

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        record_result("accuracy", 0.95, target=0.8)
    assert metrics_path().read_bytes() == before
    assert sorted(p.name for p in metrics_path().parent.iterdir() if not p.name.endswith(".lock")) == ["metrics.json"]


def test_a_measuring_run_records_every_result_and_stops_at_none(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_RECORD", "measure")  # as scripts/reproducibility.py sets it
    setup_notebook("00_test", quiet=True, device="cpu")
    record_result("accuracy", 0.5, target=0.9)      # a miss under this setting: a finding, not a crash
    record_result("speedup", 1.0, target=5.0, timing=True)
    assert [(e["name"], e["value"]) for e in load_metrics()] == [("accuracy", 0.5), ("speedup", 1.0)]
    assert capsys.readouterr().out.count("missed its target") == 2
