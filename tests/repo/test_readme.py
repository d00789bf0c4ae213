"""The README's course map is the one `scripts/update_readme.py` renders from the reports."""

from __future__ import annotations

import sys

from conftest import REPO  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))

from update_readme import GUIDE, render, render_guide  # noqa: E402


def test_course_map_matches_reports():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert render(text) == text, "README course map is stale: run `python scripts/update_readme.py`"


def test_quickstart_is_two_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make lab", "make test"]


def test_instructor_guide_times_match_reports():
    text = GUIDE.read_text(encoding="utf-8")
    assert render_guide(text) == text, "instructor guide run times are stale: run `python scripts/update_readme.py`"
