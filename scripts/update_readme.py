#!/usr/bin/env python
"""Rewrite the README's course map and the instructor guide's run times from the last `make execute`.

The table between the ``course-map`` markers lists every notebook, its title (the notebook's
first heading), its measured full-mode wall time (``reports/course_run.json``) and its headline
results (``reports/metrics.json``). ``make execute`` calls this; ``tests/test_readme.py`` fails
when the README and the reports disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from course_utils.results import describe_result  # noqa: E402

START, END = "<!-- course-map:start -->", "<!-- course-map:end -->"


def notebook_title(path: Path) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    first = "".join(nb["cells"][0]["source"]).splitlines()[0]
    title = first.lstrip("# ").strip()
    # "04 · Multi-head attention" -> "Multi-head attention"
    return title.split("·", 1)[1].strip() if "·" in title else title


def course_map() -> str:
    times_path = REPO / "reports" / "course_run.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    metrics_path = REPO / "reports" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())["results"] if metrics_path.exists() else []
    rows = [
        "| # | notebook | what you build | full-mode time (CPU, 2 cores) | headline results (asserted) |",
        "|---|---|---|---:|---|",
    ]
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        name = path.stem
        run = times.get(name, {})
        wall = f"{run['wall_time_s'] / 60:.1f} min" if run.get("status") == "passed" and run.get("wall_time_s") else "not measured yet"
        results = []
        for m in metrics:
            if m["notebook"] == name:
                results.append(describe_result(m["name"], m["value"], m["target"], m.get("higher_is_better", True)))
        rows.append(f"| {name[:2]} | [{name}](notebooks/{path.name}) | {notebook_title(path)} | {wall} | {'<br>'.join(results) or '—'} |")
    return "\n".join(rows)


TIMES_START, TIMES_END = "<!-- run-times:start -->", "<!-- run-times:end -->"
GUIDE = REPO / "docs" / "instructor_guide.md"


def run_times() -> str:
    times_path = REPO / "reports" / "course_run.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    rows = ["| notebook | full-mode run time | machine |", "|---|---:|---|"]
    total = 0.0
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
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
        raise ValueError(f"{name} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def render(readme: str) -> str:
    return _replace(readme, START, END, course_map(), "README.md")


def render_guide(guide: str) -> str:
    return _replace(guide, TIMES_START, TIMES_END, run_times(), GUIDE.name)


def main() -> int:
    for path, fn in ((REPO / "README.md", render), (GUIDE, render_guide)):
        text = path.read_text(encoding="utf-8")
        new = fn(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"{path.relative_to(REPO)} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
