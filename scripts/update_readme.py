#!/usr/bin/env python
"""Rewrite the README's course map from the notebooks' titles and the last `make execute` run.

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
                sign = "≥" if m.get("higher_is_better", True) else "≤"
                results.append(f"{m['name']} = {m['value']:.4g} (target {sign} {m['target']:.4g})")
        rows.append(f"| {name[:2]} | [{name}](notebooks/{path.name}) | {notebook_title(path)} | {wall} | {'<br>'.join(results) or '—'} |")
    return "\n".join(rows)


def render(readme: str) -> str:
    if START not in readme or END not in readme:
        raise ValueError(f"README.md has no {START} ... {END} markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{course_map()}\n{END}{tail}"


def main() -> int:
    path = REPO / "README.md"
    text = path.read_text(encoding="utf-8")
    new = render(text)
    if new != text:
        path.write_text(new, encoding="utf-8")
        print("README.md course map updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
