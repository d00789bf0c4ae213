"""How much of a module's code is input checking rather than the maths: the check share.

    python scripts/check_share.py                      # the four maths modules
    python scripts/check_share.py course_utils/rl.py   # any files
    python scripts/check_share.py --max 0.2            # exit 1 if a share reaches 20 %

**Definition.** For every function and method of a file (nested ones included, each counted on
its own), its *body lines* are the physical lines of the statements of its body that hold code:
the docstring, blank lines, comment-only lines and the lines of nested function definitions
are left out. A body line is a *check line* when it belongs to

1. a ``raise`` statement;
2. an ``if`` statement whose branches hold nothing but check statements (the test and its
   branches, e.g. ``if x.dim() != 3: raise ValueError(...)``);
3. an expression statement that calls a function named ``check_*`` or ``_check*``
   (e.g. ``check_qkv(q, k, v)``, ``self._check_inputs(...)``);
4. a ``for`` loop whose body holds nothing but check statements
   (``for name, t in ...: check_float_tensor(name, t)``);
5. any statement of a function named ``check_*`` or ``_check*`` (a validation helper).

The *check share* of a file is its check lines over its body lines. Reference points counted
the same way: nanoGPT's ``model.py`` 4 %, minGPT's 5 %, torchtune's attention 15 %.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MATHS_MODULES = [f"course_utils/{m}.py" for m in ("attention", "positional", "efficient",
                                                   "transformer")]
Function = ast.FunctionDef | ast.AsyncFunctionDef


def _is_check_name(name: str) -> bool:
    return name.startswith(("check_", "_check"))


def _called_name(node: ast.AST) -> str:
    func = node.func if isinstance(node, ast.Call) else None
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _is_check(stmt: ast.stmt) -> bool:
    """Rules 1–4 of the module docstring, for one statement."""
    if isinstance(stmt, ast.Raise):
        return True
    if isinstance(stmt, ast.Expr) and _is_check_name(_called_name(stmt.value)):
        return True
    if isinstance(stmt, ast.If):
        return all(map(_is_check, stmt.body)) and all(map(_is_check, stmt.orelse))
    if isinstance(stmt, ast.For):
        return all(map(_is_check, stmt.body)) and not stmt.orelse
    return False


def _span(node: ast.AST) -> set[int]:
    return set(range(node.lineno, node.end_lineno + 1))


def _body(fn: Function) -> list[ast.stmt]:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]  # the docstring
    return body


def _walk_statements(stmts: list[ast.stmt]):
    """Every statement under ``stmts`` that is not inside a nested function or class."""
    for stmt in stmts:
        yield stmt
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for field in ("body", "orelse", "finalbody", "handlers"):
            yield from _walk_statements(getattr(stmt, field, []) or [])


def function_lines(fn: Function, code_lines: set[int]) -> tuple[set[int], set[int]]:
    """``(body lines, check lines)`` of one function, by the module docstring's rules."""
    body, nested = set(), set()
    for stmt in _body(fn):
        body |= _span(stmt)
    checks = set()
    for stmt in _walk_statements(_body(fn)):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            nested |= _span(stmt)
        elif _is_check(stmt):
            checks |= _span(stmt)
    body = (body - nested) & code_lines
    checks = body if _is_check_name(fn.name) else (checks - nested) & code_lines
    return body, checks


def check_share(path: Path) -> tuple[int, int]:
    """``(check lines, body lines)`` of the file at ``path``."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    code_lines = {i for i, line in enumerate(lines, start=1)
                  if line.strip() and not line.strip().startswith("#")}
    total = checks = 0
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body, check = function_lines(node, code_lines)
            total, checks = total + len(body), checks + len(check)
    return checks, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", default=MATHS_MODULES)
    parser.add_argument("--max", type=float, default=None,
                        help="exit with status 1 if a file's share reaches this fraction")
    args = parser.parse_args(argv)
    worst = 0.0
    print(f"{'file':40s} {'checks':>7s} {'body':>6s} {'share':>7s}")
    for name in args.files:
        path = Path(name) if Path(name).is_absolute() else REPO / name
        checks, total = check_share(path)
        share = checks / total if total else 0.0
        worst = max(worst, share)
        print(f"{name:40s} {checks:7d} {total:6d} {share:7.1%}")
    return 1 if args.max is not None and worst >= args.max else 0


if __name__ == "__main__":
    sys.exit(main())
