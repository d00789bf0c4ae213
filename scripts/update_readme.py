#!/usr/bin/env python
"""Rewrite the README's course map and the instructor guide's run times from the last `make execute`.

The table between the ``course-map`` markers lists every notebook, its title (the notebook's
first heading), its measured full-mode wall time (``reports/course_run.json``) and its headline
results (``reports/metrics.json``). ``make execute`` calls this; ``tests/repo/test_readme.py``
fails when the README and the reports disagree.

Both files are written atomically, and nothing is written when a report cannot be read: the
error names the file and says how to fix it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
import list_exercises  # noqa: E402

from course_utils.files import atomic_write_many  # noqa: E402
from course_utils.results import describe_result  # noqa: E402

START, END = "<!-- course-map:start -->", "<!-- course-map:end -->"
TIMES_START, TIMES_END = "<!-- run-times:start -->", "<!-- run-times:end -->"
GUIDE = REPO / "docs" / "instructor_guide.md"


class ReportError(ValueError):
    """A report file is missing its structure or is not valid JSON; the message says which and how to fix it."""


def _fix(path: Path) -> str:
    return (f"restore it with `git checkout -- {path.relative_to(REPO) if path.is_relative_to(REPO) else path}` "
            "or delete it (the next `make execute` writes it again)")


def read_run_times(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """``reports/course_run.json``: notebook name -> {wall_time_s, status, machine, timestamp}."""
    path = path or REPO / "reports" / "course_run.json"
    if not path.exists():
        return {}
    try:
        times = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path} is not valid JSON ({exc}): {_fix(path)}") from exc
    if not isinstance(times, dict) or not all(isinstance(v, dict) for v in times.values()):
        raise ReportError(f"{path} must map notebook names to run records, got {type(times).__name__}: {_fix(path)}")
    return times


def read_metrics(path: Path | None = None) -> list[dict[str, Any]]:
    """The entries of ``reports/metrics.json``."""
    path = path or REPO / "reports" / "metrics.json"
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path} is not valid JSON ({exc}): {_fix(path)}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ReportError(f"{path} must hold {{'results': [...]}}: {_fix(path)}")
    return data["results"]


def notebook_title(path: Path) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    first = "".join(nb["cells"][0]["source"]).splitlines()[0]
    title = first.lstrip("# ").strip()
    # "04 · Multi-head attention" -> "Multi-head attention"
    return title.split("·", 1)[1].strip() if "·" in title else title


def _notebooks() -> list[Path]:
    return sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def course_map(times: dict | None = None, metrics: list | None = None) -> str:
    times = read_run_times() if times is None else times
    metrics = read_metrics() if metrics is None else metrics
    rows = [
        "| # | notebook | what you build | full-mode time (CPU, 2 cores) | headline results (asserted) |",
        "|---|---|---|---:|---|",
    ]
    for path in _notebooks():
        name = path.stem
        run = times.get(name, {})
        wall = (f"{run['wall_time_s'] / 60:.1f} min" if run.get("status") == "passed" and run.get("wall_time_s")
                else "not measured yet")
        results = [describe_result(m["name"], m["value"], m["target"], m.get("higher_is_better", True))
                   for m in metrics if m["notebook"] == name]
        rows.append(f"| {name[:2]} | [{name}](notebooks/{path.name}) | {notebook_title(path)} | {wall} | "
                    f"{'<br>'.join(results) or '—'} |")
    return "\n".join(rows)


def run_times(times: dict | None = None) -> str:
    times = read_run_times() if times is None else times
    rows = ["| notebook | full-mode run time | machine |", "|---|---:|---|"]
    total = 0.0
    for path in _notebooks():
        run = times.get(path.stem, {})
        if run.get("status") == "passed" and run.get("wall_time_s"):
            total += run["wall_time_s"]
            rows.append(f"| {path.stem} | {run['wall_time_s'] / 60:.1f} min | {run['machine']} |")
        else:
            rows.append(f"| {path.stem} | not measured yet | |")
    rows.append(f"| **all notebooks** | **{total / 60:.0f} min** | |")
    return "\n".join(rows)


def _replace(text: str, start: str, end: str, body: str, name: str) -> str:
    if start not in text or end not in text:
        raise ReportError(f"{name} has no {start} ... {end} markers: put them back where the table goes")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def render(readme: str, times: dict | None = None, metrics: list | None = None) -> str:
    return _replace(readme, START, END, course_map(times, metrics), "README.md")


def render_guide(guide: str, times: dict | None = None) -> str:
    return _replace(guide, TIMES_START, TIMES_END, run_times(times), GUIDE.name)


def rendered(times: dict | None = None, metrics: list | None = None) -> dict[Path, str]:
    """The new text of every file this script keeps, from the given (or the stored) reports."""
    guide = render_guide(GUIDE.read_text(encoding="utf-8"), times)
    try:
        guide = list_exercises.render(guide)  # the guide's exercise list, from the exercise registry
    except ValueError as exc:
        raise ReportError(str(exc)) from exc
    new = {
        REPO / "README.md": render((REPO / "README.md").read_text(encoding="utf-8"), times, metrics),
        GUIDE: guide,
    }
    return new


def main() -> int:
    try:
        new = rendered()
    except ReportError as exc:
        print(f"update_readme: {exc}", file=sys.stderr)
        return 1
    changed = {path: text for path, text in new.items() if path.read_text(encoding="utf-8") != text}
    atomic_write_many(changed)
    for path in changed:
        print(f"{path.relative_to(REPO)} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
