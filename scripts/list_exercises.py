#!/usr/bin/env python
"""Write the instructor guide's list of exercises from the exercise registry.

    python scripts/list_exercises.py           # rewrite docs/instructor_guide.md if it is stale
    python scripts/list_exercises.py --check   # exit 1 if it is stale, change nothing

The table between the ``exercises`` markers of ``docs/instructor_guide.md`` lists, for every
notebook, its exercises with their kind (predict, derive, debug, extend), expected minutes and
difficulty, read from ``course_utils.exercises`` (the ``@exercise`` registrations). Nothing is
typed by hand: ``tests/repo/test_exercises_registry.py`` fails when the guide and the registry
disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from course_utils.exercises import exercises  # noqa: E402
from course_utils.files import atomic_write_text  # noqa: E402

GUIDE = REPO / "docs" / "instructor_guide.md"
START, END = "<!-- exercises:start -->", "<!-- exercises:end -->"
DIFFICULTY = {1: "warm-up", 2: "core", 3: "hard"}


def _title(path: Path) -> str:
    """"04 · Multi-head attention" -> "Multi-head attention" (the notebook's first heading)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    first = "".join(nb["cells"][0]["source"]).splitlines()[0].lstrip("# ").strip()
    return first.split("·", 1)[1].strip() if "·" in first else first


def exercise_list() -> str:
    """Markdown: one table per notebook of the course, in notebook order. Exercises registered
    for a notebook the course does not ship (yet) are not listed: the guide speaks of the
    notebooks a learner can open."""
    registry = exercises()
    notebooks = {p.stem[:2]: p for p in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
    lines = []
    for nb in sorted(notebooks):
        mine = sorted((e for i, e in registry.items() if i.split(".")[0] == nb),
                      key=lambda e: int(e.id.split(".")[1]))
        title = _title(notebooks[nb])
        if not mine:
            lines += [f"**{nb} · {title}**: no exercises yet.", ""]
            continue
        total = sum(e.minutes or 0 for e in mine)
        lines += [f"**{nb} · {title}** ({len(mine)} exercises, about {total} min)", "",
                  "| exercise | kind | minutes | difficulty | what the learner does |",
                  "|---|---|---:|---|---|"]
        for e in mine:
            difficulty = f"{e.difficulty} ({DIFFICULTY[e.difficulty]})" if e.difficulty else "—"
            lines.append(f"| {e.id} | {e.kind or '—'} | {e.minutes or '—'} | {difficulty} | "
                         f"{e.title.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def render(guide: str) -> str:
    """The guide with the text between the markers replaced by the current list."""
    if START not in guide or END not in guide:
        raise ValueError(f"{GUIDE.name} has no {START} ... {END} markers: put them back where the list goes")
    head, rest = guide.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{exercise_list()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the guide is stale; write nothing")
    args = parser.parse_args(argv)
    text = GUIDE.read_text(encoding="utf-8")
    new = render(text)
    if new == text:
        return 0
    if args.check:
        print(f"{GUIDE.relative_to(REPO)}: the exercise list is stale; run python scripts/list_exercises.py",
              file=sys.stderr)
        return 1
    atomic_write_text(GUIDE, new)
    print(f"{GUIDE.relative_to(REPO)} updated (exercise list)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
