"""No exercise's reference solution is a copy of code the notebook shows above its check.

An exercise that only asks a learner to retype a cell teaches nothing. For every registered
exercise, the solution function is compared with every function defined in the code cells above
its ``check("NN.k", ...)`` call (and in that cell, before the call), after normalising both: no
docstring, no comments, no whitespace, no function name, no annotations, and local names
(arguments and assigned variables) renamed in order of appearance. The solution's body is also
looked for, verbatim up to comments and whitespace, inside each of those cells.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import re
import textwrap

import pytest
from conftest import REPO  # noqa: E402

from course_utils.exercises import exercises

NOTEBOOKS = {p.stem[:2]: p for p in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
_SPACE = re.compile(r"\s+")


class _Rename(ast.NodeTransformer):
    """Arguments and assigned names -> v0, v1, ... in order of first appearance."""

    def __init__(self, local: set[str]) -> None:
        self.local, self.names = local, {}

    def _new(self, name: str) -> str:
        return self.names.setdefault(name, f"v{len(self.names)}")

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg, node.annotation = self._new(node.arg), None
        return node

    def visit_Name(self, node: ast.Name) -> ast.Name:
        if node.id in self.local:
            node.id = self._new(node.id)
        return node


def _local_names(fn: ast.AST) -> set[str]:
    names = {a.arg for a in ast.walk(fn) if isinstance(a, ast.arg)}
    names |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names


def _body(fn: ast.FunctionDef) -> list[ast.stmt]:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]  # the docstring
    return body


def normalised(fn: ast.FunctionDef, rename: bool) -> str:
    """A function's source without name, docstring, comments, annotations and whitespace."""
    fn = copy.deepcopy(fn)
    fn.name, fn.decorator_list, fn.returns = "_", [], None
    fn.body = _body(fn) or [ast.Pass()]
    for arg in (a for a in ast.walk(fn) if isinstance(a, ast.arg)):
        arg.annotation = None
    if rename:
        fn = _Rename(_local_names(fn)).visit(fn)
    return _SPACE.sub("", ast.unparse(fn))


def body_text(fn: ast.FunctionDef) -> str:
    return _SPACE.sub("", "\n".join(ast.unparse(s) for s in _body(fn)))


def _parse(code: str) -> ast.Module | None:
    lines = [line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))]  # magics
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def copies(solution_source: str, cells_above: list[str]) -> list[str]:
    """What in ``cells_above`` the solution copies: a description per copy (empty: none)."""
    solution = next(n for n in ast.parse(textwrap.dedent(solution_source)).body
                    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    exact, renamed, body = normalised(solution, False), normalised(solution, True), body_text(solution)
    found = []
    for index, code in enumerate(cells_above):
        module = _parse(code)
        if module is None:
            continue
        for fn in (n for n in ast.walk(module) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            if normalised(fn, False) == exact:
                found.append(f"cell {index}: function {fn.name!r}, verbatim")
            elif normalised(fn, True) == renamed:
                found.append(f"cell {index}: function {fn.name!r}, with its variables renamed")
        if body and body in _SPACE.sub("", ast.unparse(module)):
            found.append(f"cell {index}: the solution's body, verbatim")
    return found


def cells_above_check(path, exercise_id: str) -> list[str] | None:
    """The code of every code cell above the one that calls check(exercise_id, ...), plus that cell's
    code before the call; None if the notebook never checks it."""
    cells = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    call = re.compile(r"""\bcheck\(\s*["']""" + re.escape(exercise_id) + r"""["']""")
    for i, cell in enumerate(cells):
        source = "".join(cell["source"])
        match = call.search(source)
        if match:
            return ["".join(c["source"]) for c in cells[:i]] + [source[:match.start()]]
    return None


@pytest.mark.parametrize("exercise_id", sorted(exercises()))
def test_solution_is_not_a_copy_of_a_cell_above(exercise_id):
    path = NOTEBOOKS.get(exercise_id.split(".")[0])
    above = cells_above_check(path, exercise_id) if path else None
    if above is None:
        pytest.skip(f"no notebook checks {exercise_id} (tests/repo/test_exercises_registry.py says so)")
    source = inspect.getsource(exercises()[exercise_id].solution)
    found = copies(source, above)
    assert not found, f"{exercise_id}'s solution copies code shown above its check: {'; '.join(found)}"


# ---- the comparison itself can fail -----------------------------------------------------------

_CELL = '''
%matplotlib inline
import torch


def my_split_heads(x, num_heads):
    b, t, e = x.shape  # unpack
    return x.reshape(b, t, num_heads, e // num_heads).transpose(1, 2)


class Layer:
    def forward(self, q, k):
        scores = q @ k.transpose(-2, -1)
        weights = scores.softmax(-1)
        return weights @ k
'''


def _verbatim(x, num_heads):
    """A docstring, a different name, a comment: still a copy."""
    b, t, e = x.shape
    return x.reshape(b, t, num_heads, e // num_heads).transpose(1, 2)  # heads before time


def _renamed(y, heads: int) -> torch.Tensor:  # noqa: F821 (annotations are never evaluated)
    B, T, E = y.shape
    return y.reshape(B, T, heads, E // heads).transpose(1, 2)


def _body_of_a_method(q, k):
    scores = q @ k.transpose(-2, -1)
    weights = scores.softmax(-1)
    return weights @ k


def _new(x, num_heads):
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


@pytest.mark.parametrize("fn, what", [(_verbatim, "verbatim"), (_renamed, "renamed"),
                                      (_body_of_a_method, "body")])
def test_copies_are_found(fn, what):
    found = copies(inspect.getsource(fn), [_CELL])
    assert any(what in f for f in found), found


def test_a_new_solution_is_not_a_copy():
    assert copies(inspect.getsource(_new), [_CELL]) == []


def test_only_cells_above_the_check_count(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": ["def f(x):\n", "    return x + 1\n"]},
                    {"cell_type": "markdown", "source": ["text"]},
                    {"cell_type": "code", "source": ["y = 2\n", "check('99.1', f)\n", "z = 3\n"]},
                    {"cell_type": "code", "source": ["def g(x):\n", "    return x\n"]}]}
    path = tmp_path / "99_x.ipynb"
    path.write_text(json.dumps(nb))
    assert cells_above_check(path, "99.1") == ["def f(x):\n    return x + 1\n", "y = 2\n"]
    assert cells_above_check(path, "99.2") is None
