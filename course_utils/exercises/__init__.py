"""Exercise checkers and their worked solutions.

In a notebook, the learner fills in a function and asks the checker::

    from course_utils.exercises import check, solution
    check("01.1", my_scaled_scores)    # says what is wrong (shape, values, masking) and hints
    solution("01.1")                    # prints the worked solution, only when asked

Each notebook's exercises live in ``course_utils/exercises/nbNN.py``, which registers them
with the ``exercise`` decorator::

    @exercise("01.1", title="Scaled dot-product scores", hint="Divide by sqrt(d).",
              solution=_solution_scores, kind="debug", minutes=10, difficulty=2,
              mistakes=[Mistake("forgot the 1/sqrt(d)", (_unscaled,), "forget to scale"), ...])
    def check_scores(fn) -> CheckResult:
        ...
        return fail("values", "your scores are sqrt(d) times too large: did you forget to scale?")

An exercise is one of four kinds (``KINDS``): **predict** (state a number or a shape, then
measure), **derive** (turn a formula the notebook did not show into code), **debug** (find and fix
the bug in a broken implementation) or **extend** (build something new on the notebook's
pieces); ``implement`` is kept for exercises that rebuild a piece the notebook describes but
does not show. ``minutes`` is the expected time and ``difficulty`` runs from 1 (warm-up) to 3
(hard). ``mistakes`` are the plausible wrong answers the checker recognises, each with a
fragment of the message it must give: the tests run every one of them.

``check`` never raises on a wrong answer (a wrong answer is a message, not a crash), and a
function that still raises ``NotImplementedError`` reads as "not attempted yet".
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from course_utils.checks import describe

_HERE = Path(__file__).resolve().parent
_ID = re.compile(r"\d\d\.\d+")


@dataclass(frozen=True)
class CheckResult:
    """The verdict of a checker: passed or not, what kind of problem, and what to do."""

    passed: bool
    message: str
    kind: str = ""  # "shape", "values", "masking", "dtype", "not attempted", "error", ...
    hint: str = ""

    def __repr__(self) -> str:
        if self.passed:
            return f"✅ {self.message}"
        text = f"❌ [{self.kind}] {self.message}" if self.kind else f"❌ {self.message}"
        if self.hint:
            text += f"\n   Hint: {self.hint}"
        return text

    def __bool__(self) -> bool:
        return self.passed


def ok(message: str = "Correct!") -> CheckResult:
    return CheckResult(True, message)


def fail(kind: str, message: str) -> CheckResult:
    return CheckResult(False, message, kind=kind)


KINDS = ("predict", "derive", "debug", "extend", "implement")


@dataclass(frozen=True)
class Mistake:
    """A plausible wrong answer: what it is, the arguments to pass to the checker, and a
    fragment of the message the checker must give for it."""

    name: str
    args: tuple
    says: str

    def __post_init__(self) -> None:
        if not isinstance(self.args, tuple):
            raise TypeError(f"args must be a tuple of the checker's arguments, e.g. (wrong_fn,), "
                            f"got {describe(self.args)}")


@dataclass(frozen=True)
class Exercise:
    id: str
    title: str
    checker: Callable[..., CheckResult]
    solution: Callable[..., Any]
    hint: str
    kind: str | None = None
    minutes: int | None = None
    difficulty: int | None = None
    mistakes: tuple[Mistake, ...] = ()
    solution_args: Callable[[], tuple] | None = None


_REGISTRY: dict[str, Exercise] = {}


def exercise(
    exercise_id: str,
    title: str,
    hint: str,
    solution: Callable[..., Any],
    kind: str | None = None,
    minutes: int | None = None,
    difficulty: int | None = None,
    mistakes: tuple[Mistake, ...] | list[Mistake] = (),
    solution_args: Callable[[], tuple] | None = None,
):
    """Register a checker under ``exercise_id`` (e.g. ``"04.2"``), with its hint and solution.

    ``solution_args`` is for exercises whose checker does not take the solution function
    itself (a *predict* exercise takes a number): a function returning the arguments that the
    solution gives, so the tests can pass them to the checker.
    """
    if not isinstance(exercise_id, str) or not _ID.fullmatch(exercise_id):
        raise ValueError(f"exercise_id must be a str 'NN.k' (notebook, number) such as '04.2', got "
                         f"{describe(exercise_id)}")
    if not callable(solution):
        raise TypeError(f"solution must be the solution function, got {describe(solution)}")
    if solution_args is not None and not callable(solution_args):
        raise TypeError(f"solution_args must be a function returning the checker's arguments, or "
                        f"None, got {describe(solution_args)}")
    if not isinstance(mistakes, (list, tuple)) or not all(isinstance(m, Mistake) for m in mistakes):
        raise TypeError(f"mistakes must be a list of Mistake(name, args, says), got "
                        f"{describe(mistakes)}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if difficulty is not None and difficulty not in (1, 2, 3):
        raise ValueError(f"difficulty must be 1, 2 or 3, got {difficulty!r}")
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, int) or minutes <= 0):
        raise ValueError(f"minutes must be a positive int, got {minutes!r}")

    def register(checker: Callable[..., CheckResult]) -> Callable[..., CheckResult]:
        if exercise_id in _REGISTRY and _REGISTRY[exercise_id].checker is not checker:
            raise ValueError(f"exercise {exercise_id!r} is registered twice")
        _REGISTRY[exercise_id] = Exercise(exercise_id, title, checker, solution, hint, kind, minutes,
                                          difficulty, tuple(mistakes), solution_args)
        return checker

    return register


def _load_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("nb"):
            importlib.import_module(f"{__name__}.{module.name}")


def exercises() -> dict[str, Exercise]:
    """All registered exercises, by id."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


class UnknownExercise(KeyError, ValueError):
    """No exercise has this id (a ``KeyError`` for lookups, a ``ValueError`` for a bad argument)."""

    def __str__(self) -> str:  # a KeyError would show its message in quotes
        return str(self.args[0])


def _get(exercise_id: str) -> Exercise:
    if not isinstance(exercise_id, str):
        raise TypeError(f"exercise_id must be a str such as '04.2', got {describe(exercise_id)}")
    known = exercises()
    if exercise_id not in known:
        raise UnknownExercise(f"no exercise {exercise_id!r}; known exercises: "
                              f"{', '.join(known) or 'none'} (exercise_id is e.g. '04.2')")
    return known[exercise_id]


def _wants_function(checker: Callable[..., Any]) -> bool:
    """Does the checker's first parameter take the learner's function (``fn``, a ``Callable``)?"""
    params = list(inspect.signature(checker).parameters.values())
    if not params:
        return False
    first = params[0]
    return first.name in ("fn", "cache_class") or "Callable" in str(first.annotation)


def _raised_by_checker(exc: BaseException) -> bool:
    """True when the innermost frame of ``exc`` is in the exercises package: the checker itself
    refused the answer (its message is about the answer), not code the learner wrote."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().parent == _HERE


def check(exercise_id: str, *answer: Any, **kwargs: Any) -> CheckResult:
    """Check a learner's answer; the result prints as ✅ or ❌ with what is wrong and a hint."""
    ex = _get(exercise_id)
    given = answer[0] if answer else None
    if answer and _wants_function(ex.checker) and not callable(given):
        result = CheckResult(False, f"pass your function itself (its name, without calling it), "
                                    f"got {describe(given)}", kind="answer")
        return CheckResult(False, result.message, kind=result.kind, hint=ex.hint)
    try:
        result = ex.checker(*answer, **kwargs)
    except NotImplementedError:
        result = CheckResult(False, "not attempted yet: fill in the function above and run this cell again",
                             kind="not attempted")
    except (TypeError, ValueError) as exc:
        if not _raised_by_checker(exc):  # the learner's code crashed: report it
            result = CheckResult(False, f"your code raised {type(exc).__name__}: {exc}", kind="error")
        else:  # the checker refused the answer itself (not a number, a wrong shape, ...)
            result = CheckResult(False, f"{exc}", kind="answer")
    except Exception as exc:  # the learner's code crashed: report it, do not crash the notebook
        result = CheckResult(False, f"your code raised {type(exc).__name__}: {exc}", kind="error")
    if not result.passed and not result.hint:
        result = CheckResult(False, result.message, kind=result.kind, hint=ex.hint)
    return result


def solution(exercise_id: str, show: bool = True) -> str:
    """Print (and return) the worked solution of ``exercise_id``: only when asked."""
    ex = _get(exercise_id)
    if not isinstance(show, bool):
        raise TypeError(f"show must be True or False, got {describe(show)}")
    source = textwrap.dedent(inspect.getsource(ex.solution))
    if show:
        print(f"# Solution to exercise {ex.id}: {ex.title}\n{source}")
    return source


def solution_function(exercise_id: str) -> Callable[..., Any]:
    """The solution as a callable (the tests pass it to its own checker)."""
    return _get(exercise_id).solution


def solution_answer(exercise_id: str) -> tuple:
    """The arguments that pass ``exercise_id``'s checker: ``(solution,)`` for an exercise that
    asks for a function, ``solution_args()`` for one that asks for a number or a shape."""
    ex = _get(exercise_id)
    return ex.solution_args() if ex.solution_args is not None else (ex.solution,)
