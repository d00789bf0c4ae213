"""scripts/check_share.py: the maths modules stay readable (checks under 20 % of their lines),
and the counting rules do what its docstring says."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location("check_share", REPO / "scripts" / "check_share.py")
check_share = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_share)


@pytest.mark.parametrize("module", check_share.MATHS_MODULES)
def test_maths_modules_are_mostly_maths(module):
    checks, total = check_share.check_share(REPO / module)
    assert total > 40, f"{module}: only {total} body lines counted"
    assert checks / total < 0.20, (
        f"{module}: {checks} of {total} function-body lines are input checks "
        f"({checks / total:.1%}); move them into course_utils/checks.py helpers, one call each")


def test_counting_rules(tmp_path):
    source = textwrap.dedent('''
        def f(x, n):
            """A docstring is not counted."""
            check_positive_int("n", n)          # rule 3: a check call
            if x.dim() != 2:                    # rule 2: an if holding only a raise
                raise ValueError(
                    "x must be 2-D")
            for name, t in (("x", x),):         # rule 4: a loop of checks
                check_tensor(name, t)
            # a comment line is not counted

            y = x * 2                           # maths
            if n > 3:                           # maths: the if does something else too
                check_tensor("y", y)            # ... but this call is a check
                y = y + 1
            return y

        def _check_thing(x):                    # rule 5: every line of a validation helper
            shape = tuple(x.shape)
            return shape
    ''')
    path = tmp_path / "m.py"
    path.write_text(source)
    checks, total = check_share.check_share(path)
    # f: 11 body lines, of which checks: 1 + 3 + 2 + 1 = 7; _check_thing: 2 of 2
    assert (checks, total) == (9, 13)


def test_cli_exit_status(capsys):
    assert check_share.main(["--max", "0.99"]) == 0
    assert check_share.main(["--max", "0.01"]) == 1
    assert "course_utils/attention.py" in capsys.readouterr().out


SPINE_FILES = [f"course_utils/{m}.py" for m in (
    "attention", "positional", "transformer", "efficient", "kv_cache", "decoding",
    "triton_attention", "monitor", "checks")] + ["course_utils/inference/__init__.py",
                                                 "course_utils/exercises/nb08.py"]


@pytest.mark.parametrize("path", SPINE_FILES)
def test_lines_fit_beside_a_notebook(path):
    """The files learners open beside a notebook keep lines within 100 characters."""
    long = [i for i, line in enumerate((REPO / path).read_text(encoding="utf-8").splitlines(), 1)
            if len(line) > 100]
    assert not long, f"{path}: lines longer than 100 characters: {long}"
