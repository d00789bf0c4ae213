from __future__ import annotations

import pytest

from course_utils import exercises as ex_module
from course_utils.exercises import (
    CheckResult,
    check,
    exercises,
    fail,
    ok,
    solution,
    solution_answer,
    solution_function,
)


def test_every_registered_solution_passes_its_checker():
    for exercise_id in exercises():
        result = check(exercise_id, *solution_answer(exercise_id))
        assert result.passed, f"solution of {exercise_id} fails its own checker: {result!r}"


def test_every_named_mistake_gets_its_own_message():
    for exercise_id, ex in exercises().items():
        for mistake in ex.mistakes:
            result = check(exercise_id, *mistake.args)
            assert not result.passed, f"{exercise_id}: the mistake {mistake.name!r} passes the checker"
            assert mistake.says in result.message, (
                f"{exercise_id}: for {mistake.name!r} the checker says {result.message!r}, "
                f"not {mistake.says!r}")


def test_ids_are_notebook_dot_number():
    for exercise_id in exercises():
        nb, _, number = exercise_id.partition(".")
        assert len(nb) == 2 and nb.isdigit() and number.isdigit(), exercise_id


@pytest.fixture
def toy_exercise(monkeypatch):
    def _solution(x):
        return 2 * x

    def _checker(fn):
        value = fn(3)
        if value == 3:
            return fail("values", "you returned the input unchanged")
        return ok() if value == 6 else fail("values", f"expected 6, got {value}")

    registry = dict(ex_module._REGISTRY)
    monkeypatch.setattr(ex_module, "_REGISTRY", registry)
    ex_module.exercise("99.1", title="double it", hint="multiply by two", solution=_solution)(_checker)
    return "99.1"


def test_check_messages(toy_exercise):
    assert repr(check(toy_exercise, lambda x: 2 * x)) == "✅ Correct!"
    wrong = check(toy_exercise, lambda x: x)
    assert not wrong and wrong.kind == "values" and wrong.hint == "multiply by two"
    assert "❌ [values] you returned the input unchanged\n   Hint: multiply by two" == repr(wrong)


def test_unattempted_and_crashing_answers_are_messages(toy_exercise):
    def stub(x):
        raise NotImplementedError

    assert check(toy_exercise, stub).kind == "not attempted"
    crashed = check(toy_exercise, lambda x: 1 / 0)
    assert crashed.kind == "error" and "ZeroDivisionError" in crashed.message


def test_solution_prints_source_only_when_asked(toy_exercise, capsys):
    source = solution(toy_exercise)
    assert "return 2 * x" in source and "Solution to exercise 99.1: double it" in capsys.readouterr().out
    assert solution_function(toy_exercise)(5) == 10


def test_unknown_exercise_lists_known_ones():
    with pytest.raises(KeyError, match="no exercise '00.9'; known exercises"):
        check("00.9", lambda: None)


def test_check_result_is_falsey_when_failed():
    assert not CheckResult(False, "x") and CheckResult(True, "y")
