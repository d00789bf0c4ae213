"""`make execute` loses nothing: a failed notebook, a corrupt report or a full disk at any point
leaves the notebook, the reports, the README and the instructor guide byte for byte as they were."""

from __future__ import annotations

import json
import sys

import nbformat
import pytest
from conftest import REPO  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))

import execute_notebooks  # noqa: E402
import update_readme  # noqa: E402

pytestmark = pytest.mark.slow  # each test starts a Jupyter kernel

README = "# Course\n\n<!-- course-map:start -->\nold map\n<!-- course-map:end -->\n\nThe end.\n"
GUIDE = ("# Guide\n\n<!-- run-times:start -->\nold times\n<!-- run-times:end -->\n\n"
         "<!-- exercises:start -->\nold list\n<!-- exercises:end -->\n")


def _notebook(*code: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 00 · A tiny notebook")]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in code]
    return nb


GOOD = _notebook("from course_utils import setup_notebook, record_result\n"
                 "run = setup_notebook('00_tiny', quiet=True, device='cpu')",
                 "record_result('answer', 42.0, target=40.0)")
BROKEN = _notebook("from course_utils import setup_notebook, record_result\n"
                   "run = setup_notebook('00_tiny', quiet=True, device='cpu')",
                   "record_result('answer', 42.0, target=40.0)",
                   "raise RuntimeError('a cell that fails')")


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "reports").mkdir()
    (tmp_path / "docs").mkdir()
    nbformat.write(GOOD, tmp_path / "notebooks" / "00_tiny.ipynb")
    (tmp_path / "README.md").write_text(README)
    (tmp_path / "docs" / "instructor_guide.md").write_text(GUIDE)
    old = {"notebook": "00_tiny", "name": "answer", "value": 41.0, "target": 40.0, "higher_is_better": True,
           "unit": "", "mode": "full", "device": "cpu", "machine": "m", "torch": "t", "wall_time_s": 1.0,
           "timestamp": "2026-01-01T00:00:00+00:00"}
    (tmp_path / "reports" / "metrics.json").write_text(json.dumps({"results": [old]}, indent=2) + "\n")
    (tmp_path / "reports" / "course_run.json").write_text(json.dumps(
        {"00_tiny": {"wall_time_s": 3.0, "status": "passed", "machine": "m", "timestamp": "2026-01-01T00:00:00+00:00"}}))
    monkeypatch.setattr(execute_notebooks, "REPO", tmp_path)
    monkeypatch.setattr(update_readme, "REPO", tmp_path)
    monkeypatch.setattr(update_readme, "GUIDE", tmp_path / "docs" / "instructor_guide.md")
    monkeypatch.setenv("COURSE_REPORTS_DIR", str(tmp_path / "reports"))
    return tmp_path


def _snapshot(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and not p.name.endswith(".lock")}


def _run(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["execute_notebooks.py", *args])
    return execute_notebooks.main()


def test_a_passing_notebook_updates_everything_together(repo, monkeypatch):
    assert _run(monkeypatch, str(repo / "notebooks" / "00_tiny.ipynb")) == 0
    nb = nbformat.read(repo / "notebooks" / "00_tiny.ipynb", as_version=4)
    assert "answer = 42 (target ≥ 40)" in nb.cells[2].outputs[0]["text"]
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())["results"]
    assert [(m["name"], m["value"]) for m in metrics] == [("answer", 42.0)]
    assert json.loads((repo / "reports" / "course_run.json").read_text())["00_tiny"]["status"] == "passed"
    assert "answer = 42 (target ≥ 40)" in (repo / "README.md").read_text()
    assert "| 00_tiny |" in (repo / "docs" / "instructor_guide.md").read_text()
    assert "answer = 42" in (repo / "reports" / "course_run.md").read_text()
    assert not list(repo.rglob("*.tmp"))


def test_a_result_the_notebook_no_longer_records_disappears(repo, monkeypatch):
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    metrics["results"].append(dict(metrics["results"][0], name="a_result_of_an_older_version", value=1.0))
    (repo / "reports" / "metrics.json").write_text(json.dumps(metrics))
    assert _run(monkeypatch, str(repo / "notebooks" / "00_tiny.ipynb")) == 0
    names = [m["name"] for m in json.loads((repo / "reports" / "metrics.json").read_text())["results"]]
    assert names == ["answer"]


def test_a_failing_notebook_changes_nothing(repo, monkeypatch):
    nbformat.write(BROKEN, repo / "notebooks" / "00_tiny.ipynb")
    before = _snapshot(repo)
    assert _run(monkeypatch, str(repo / "notebooks" / "00_tiny.ipynb")) == 1
    assert _snapshot(repo) == before  # its record_result ran, yet metrics.json kept the old value


@pytest.mark.parametrize("broken", ["metrics.json", "course_run.json"])
def test_a_corrupt_report_stops_the_run_before_anything_runs(repo, monkeypatch, capsys, broken):
    (repo / "reports" / broken).write_text('{"results": [')
    before = _snapshot(repo)
    assert _run(monkeypatch, str(repo / "notebooks" / "00_tiny.ipynb")) == 1
    err = capsys.readouterr().err
    assert f"reports/{broken} is not valid JSON" in err and "nothing was run" in err and "git checkout" in err
    assert _snapshot(repo) == before


def test_a_full_disk_at_any_write_leaves_every_file_as_it_was(repo, monkeypatch):
    nb, _ = execute_notebooks.execute(repo / "notebooks" / "00_tiny.ipynb", 120,
                                      {"COURSE_RECORD": "1", "COURSE_REPORTS_DIR": str(repo / "reports")})
    staged = update_readme.read_metrics(repo / "reports" / "metrics.json")
    # record_result wrote into reports/ here (no staging in this direct call): start from that state
    before = _snapshot(repo)
    entry = {"wall_time_s": 1.0, "status": "passed", "machine": "m", "timestamp": "2026-01-02T00:00:00+00:00"}
    import course_utils.files as files

    real_fsync, written = files.os.fsync, []
    for fail_at in range(6):  # notebook, metrics, run times, summary, README, guide
        written.clear()

        def fsync(fd, fail_at=fail_at):
            written.append(fd)
            if len(written) > fail_at:
                raise OSError(28, "No space left on device")
            return real_fsync(fd)

        monkeypatch.setattr(files.os, "fsync", fsync)
        with pytest.raises(OSError, match="No space left"):
            execute_notebooks.commit_notebook(repo / "notebooks" / "00_tiny.ipynb", nb, staged, entry)
        assert _snapshot(repo) == before, f"a failure at write {fail_at} changed files"
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    execute_notebooks.commit_notebook(repo / "notebooks" / "00_tiny.ipynb", nb, staged, entry)
    assert _snapshot(repo) != before


def test_update_readme_names_a_corrupt_report_and_writes_nothing(repo, monkeypatch, capsys):
    (repo / "reports" / "course_run.json").write_text("[1, 2")
    before = _snapshot(repo)
    assert update_readme.main() == 1
    assert "course_run.json is not valid JSON" in capsys.readouterr().err
    assert _snapshot(repo) == before
