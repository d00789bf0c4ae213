"""The course imports on every operating system: no POSIX-only module at import time.

Windows has no ``fcntl``, ``resource``, ``termios``, ``pwd``, ``grp``, ... A module-level
``import fcntl`` anywhere in ``course_utils`` makes the first cell of every notebook fail there.
Two checks, one static and one dynamic:

* every ``.py`` file of ``course_utils``, ``scripts`` and ``benchmarks`` is parsed, and a
  POSIX-only import that runs at import time (not inside a function, not guarded by
  ``try/except ImportError`` or a platform test) fails the test, naming file and line;
* a fresh interpreter imports ``course_utils`` and every submodule with ``fcntl`` blocked
  outright (as on Windows) and every other POSIX-only module blocked when ``course_utils``
  itself imports it (third-party packages such as psutil pick their own per-platform backend).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO  # noqa: E402

POSIX_ONLY = frozenset({"fcntl", "termios", "tty", "pty", "pwd", "grp", "resource", "syslog", "crypt",
                        "spwd", "nis", "posix", "readline"})
GUARD_EXCEPTIONS = {"ImportError", "ModuleNotFoundError", "Exception", "OSError"}


def _guarded_by_platform(test: ast.expr) -> bool:
    text = ast.unparse(test)
    return any(word in text for word in ("sys.platform", "os.name", "platform.system", "hasattr"))


def _handles_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        if handler.type is None:
            return True
        names = [handler.type] if not isinstance(handler.type, ast.Tuple) else list(handler.type.elts)
        if any(isinstance(n, ast.Name) and n.id in GUARD_EXCEPTIONS for n in names):
            return True
    return False


def posix_only_imports(source: str, filename: str = "<source>") -> list[str]:
    """``file:line module`` for every POSIX-only import that runs when the module is imported."""
    found: list[str] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue  # runs only when called: the caller can check the platform first
            if isinstance(node, ast.Import):
                found.extend(f"{filename}:{node.lineno} {a.name}" for a in node.names
                             if a.name.split(".")[0] in POSIX_ONLY)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] in POSIX_ONLY:
                    found.append(f"{filename}:{node.lineno} {node.module}")
            elif isinstance(node, ast.Try):
                if not _handles_import_error(node):
                    visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.If):
                if not _guarded_by_platform(node.test):
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)  # a class body runs at import time
            elif isinstance(node, (ast.With, ast.For, ast.While)):
                visit(node.body)

    visit(ast.parse(source, filename=filename).body)
    return found


def test_the_scanner_finds_what_it_should_and_nothing_else():
    bad = textwrap.dedent("""
        import os
        import fcntl
        from resource import getrusage
        class A:
            import termios
    """)
    assert [f.split(" ")[1] for f in posix_only_imports(bad)] == ["fcntl", "resource", "termios"]
    fine = textwrap.dedent("""
        import os, signal, socket
        def lock():
            import fcntl
        try:
            import resource
        except ImportError:
            resource = None
        if sys.platform != "win32":
            import pwd
    """)
    assert posix_only_imports(fine) == []


def test_no_posix_only_import_at_module_level():
    files = [p for folder in ("course_utils", "scripts", "benchmarks") for p in sorted((REPO / folder).rglob("*.py"))]
    assert len(files) > 20, "the scan found too few files to mean anything"
    found = [hit for p in files for hit in posix_only_imports(p.read_text(encoding="utf-8"), str(p.relative_to(REPO)))]
    assert not found, "POSIX-only modules imported at import time (breaks Windows): " + ", ".join(found)


_BLOCKED_IMPORT = textwrap.dedent("""
    import importlib, os, pkgutil, sys, warnings

    COURSE = os.path.join({repo!r}, "course_utils")
    POSIX_ONLY = {posix!r}

    def _importer_is_course_utils():
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_code.co_filename
            if not name.startswith("<frozen"):
                return os.path.abspath(name).startswith(COURSE)
            frame = frame.f_back
        return False

    class Windowsish:
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top == "fcntl" or (top in POSIX_ONLY and _importer_is_course_utils()):
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: POSIX-only)", name=name)
            return None

    sys.meta_path.insert(0, Windowsish())
    warnings.simplefilter("ignore")  # filelock says it falls back to a soft lock without fcntl
    import course_utils
    from course_utils import record_result, setup_notebook  # the first cell of every notebook
    failed = []
    for module in pkgutil.walk_packages(course_utils.__path__, "course_utils."):
        try:
            importlib.import_module(module.name)
        except Exception as exc:
            failed.append(f"{{module.name}}: {{type(exc).__name__}}: {{exc}}")
    assert "fcntl" not in sys.modules, "something imported fcntl after all"
    print("FAILED" if failed else "OK", *failed, sep="\\n")
""")


@pytest.mark.slow
def test_course_utils_imports_with_posix_modules_blocked():
    code = _BLOCKED_IMPORT.format(repo=str(REPO), posix=sorted(POSIX_ONLY))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={"PATH": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
                               "MPLBACKEND": "Agg", "TQDM_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[0] == "OK", proc.stdout


def test_the_blocker_really_blocks(tmp_path):
    """The check above would pass vacuously if the finder blocked nothing: prove it bites."""
    probe = tmp_path / "course_utils"
    probe.mkdir()
    code = _BLOCKED_IMPORT.format(repo=str(tmp_path), posix=sorted(POSIX_ONLY)).split("import course_utils")[0]
    code += "\ntry:\n    import fcntl\nexcept ModuleNotFoundError as e:\n    print('blocked:', e)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "blocked: No module named 'fcntl'" in proc.stdout, proc.stdout + proc.stderr
