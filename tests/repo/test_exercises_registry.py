"""Every notebook has exercises that make a learner think, and the instructor guide lists them.

For every notebook in ``notebooks/``: at least 3 registered exercises, at least 2 of them of the
kinds predict / derive / debug / extend, each with its kind, expected minutes and difficulty and
at least 3 named mistakes; the notebook checks exactly the exercises registered for it; and the
guide's generated list (``scripts/list_exercises.py``) is current.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
from conftest import REPO  # noqa: E402

from course_utils.exercises import exercises

sys.path.insert(0, str(REPO / "scripts"))

import list_exercises  # noqa: E402

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
THINKING = ("predict", "derive", "debug", "extend")
CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](\d\d\.\d+)["']""")


def _registered(path):
    nb = path.stem[:2]
    return {i: e for i, e in exercises().items() if i.split(".")[0] == nb}


def _checked_in(path) -> set[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    return set(CHECK_CALL.findall(code))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_three_exercises_two_that_make_the_learner_think(path):
    mine = _registered(path)
    assert len(mine) >= 3, f"{path.stem}: {len(mine)} exercises registered ({sorted(mine)}), at least 3 needed"
    thinking = sorted(i for i, e in mine.items() if e.kind in THINKING)
    assert len(thinking) >= 2, (
        f"{path.stem}: only {thinking} are of the kinds {', '.join(THINKING)}; at least 2 needed")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_exercise_has_metadata_and_three_named_mistakes(path):
    for exercise_id, e in _registered(path).items():
        assert e.kind is not None and e.minutes is not None and e.difficulty is not None, (
            f"{exercise_id}: kind={e.kind!r}, minutes={e.minutes!r}, difficulty={e.difficulty!r}; all three needed")
        assert len(e.mistakes) >= 3, f"{exercise_id}: {len(e.mistakes)} named mistakes, at least 3 needed"
        assert len({m.says for m in e.mistakes}) == len(e.mistakes), f"{exercise_id}: two mistakes share a message"
        if e.kind == "predict":
            assert e.solution_args is not None, (
                f"{exercise_id}: a predict exercise's checker takes a number: register solution_args")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_checks_exactly_its_exercises(path):
    registered, checked = set(_registered(path)), _checked_in(path)
    assert registered == checked, (
        f"{path.stem}: registered but never checked in the notebook: {sorted(registered - checked)}; "
        f"checked but not registered: {sorted(checked - registered)}")


def test_instructor_guide_lists_the_registry():
    text = list_exercises.GUIDE.read_text(encoding="utf-8")
    assert list_exercises.render(text) == text, (
        "the instructor guide's exercise list is stale: run `python scripts/list_exercises.py`")


def test_the_list_shows_kind_and_minutes_of_every_exercise():
    listing = list_exercises.exercise_list()
    shipped = {p.stem[:2] for p in NOTEBOOKS}
    for exercise_id, e in exercises().items():
        if exercise_id.split(".")[0] not in shipped:  # a notebook the course does not ship yet
            assert f"| {exercise_id} |" not in listing, f"{exercise_id} is listed without its notebook"
            continue
        row = next((line for line in listing.splitlines() if line.startswith(f"| {exercise_id} |")), None)
        assert row is not None, f"{exercise_id} is missing from the generated list"
        assert f"| {e.kind} | {e.minutes} |" in row, row


def test_render_needs_the_markers():
    with pytest.raises(ValueError, match="no <!-- exercises:start -->"):
        list_exercises.render("# a guide without the markers\n")
