"""The fault-injection census: every writer of a file the course keeps, failed at every step.

A *writer* sets up the files as they are before a run (``setup``) and then writes the new ones
(``action``), as the course does: the atomic primitives of ``course_utils.files``, the metrics of
``record_result``, checkpoints, downloads, the translation cache, ``make execute``'s commit of a
notebook with its reports, README and instructor guide, ``update_readme`` and ``list_exercises``.

A *fault* fails one step of the write: the disk fills up in the middle of writing the data, or
when flushing it to disk (``fsync``), there is no room for the temporary file, a rename is
refused (on Windows, while another program holds the file open), a later rename is refused,
Ctrl-C arrives in the middle of writing; in a child process, the file-size limit
(``ulimit -f``, standing in for a full disk) stops the write.

A fault is *injected* when the write reached the failing step. It is *survived* when the error
reached the caller and every file in the writer's folder is byte for byte what it was (no file
changed, lost, added, no temporary file left behind); otherwise data was *lost* (or a temporary
file *left behind*, or the error *swallowed*).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent

README = "# Course\n\n<!-- course-map:start -->\nold map\n<!-- course-map:end -->\n\nThe end.\n"
GUIDE = ("# Guide\n\n<!-- run-times:start -->\nold times\n<!-- run-times:end -->\n\n"
         "<!-- exercises:start -->\nold list\n<!-- exercises:end -->\n")
OLD_METRIC = {"notebook": "00_tiny", "name": "answer", "value": 41.0, "target": 40.0,
              "higher_is_better": True, "unit": "", "mode": "full", "device": "cpu", "machine": "m",
              "torch": "t", "wall_time_s": 1.0, "timestamp": "2026-01-01T00:00:00+00:00"}


@dataclass
class Writer:
    name: str
    setup: Callable[[Path], None]  # the files as they are before the run, in an empty folder
    action: Callable[[Path], Any]  # the write (raises on a failure)


# ---- the writers ----------------------------------------------------------------------------


def _old_files(root: Path, *names: str) -> None:
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"old content {i} of {name}\n" * 20, encoding="utf-8")


def _files_text(root: Path) -> None:
    from course_utils.files import atomic_write_text

    atomic_write_text(root / "notes.txt", "new text\n" * 500)


def _files_bytes(root: Path) -> None:
    from course_utils.files import atomic_write_bytes

    atomic_write_bytes(root / "notes.txt", bytes(range(256)) * 40)


def _files_json(root: Path) -> None:
    from course_utils.files import atomic_write_json

    atomic_write_json(root / "notes.txt", {"scores": list(range(2000))})


def _files_open(root: Path) -> None:
    import torch

    from course_utils.files import atomic_open

    with atomic_open(root / "notes.txt", "wb") as f:
        torch.save({"weights": torch.arange(4000.0)}, f)


def _files_many(root: Path) -> None:
    from course_utils.files import atomic_write_many

    atomic_write_many({root / "a.txt": "new a\n" * 400, root / "sub" / "b.txt": b"new b\n" * 400,
                       root / "c.txt": "a new file\n" * 400})


def _record_result_setup(root: Path) -> None:
    (root / "reports").mkdir()
    (root / "reports" / "metrics.json").write_text(json.dumps({"results": [OLD_METRIC]}, indent=2))


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _record_result(root: Path) -> None:
    from course_utils.results import record_result

    with _env(COURSE_RECORD="1", COURSE_REPORTS_DIR=str(root / "reports")):
        os.environ.pop("COURSE_FAST", None)
        with contextlib.redirect_stdout(None):
            record_result("answer", 42.0, target=40.0, notebook="00_tiny")


def _checkpoint_setup(root: Path) -> None:
    import torch

    from course_utils.checkpoint import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(root / "model.pt", torch.nn.Linear(40, 40), step=3)


def _save_checkpoint(root: Path) -> None:
    import torch

    from course_utils.checkpoint import save_checkpoint

    torch.manual_seed(1)
    model = torch.nn.Linear(40, 40)
    save_checkpoint(root / "model.pt", model, torch.optim.SGD(model.parameters(), lr=0.1), step=9)


def _save_state(root: Path) -> None:
    import torch

    from course_utils.checkpoint import save_state

    torch.manual_seed(1)
    save_state(root / "model.pt", model_state=torch.nn.Linear(40, 40).state_dict(), step=9)


def _download_setup(root: Path) -> None:
    _old_files(root, "cache/fra.txt")
    (root / "source").mkdir()
    (root / "source" / "fra.txt").write_text("Go.\tVa !\n" * 2000, encoding="utf-8")


def _download(root: Path) -> None:
    from course_utils.download import fetch, sha256_file

    src = root / "source" / "fra.txt"
    fetch(src.as_uri(), root / "cache" / "fra.txt", sha256=sha256_file(src), overwrite=True)


def _tatoeba_setup(root: Path) -> None:
    (root / "source").mkdir()
    (root / "source" / "fra.txt").write_text("Go.\tVa !\tCC-BY\nHi.\tSalut !\tCC-BY\n" * 300,
                                             encoding="utf-8")
    _old_files(root, "cache/tatoeba-older.json")


def _tatoeba(root: Path) -> None:
    from course_utils.datasets.translation import load_tatoeba

    load_tatoeba(root / "source" / "fra.txt", cache_dir=root / "cache")


def _course_setup(root: Path) -> None:
    import nbformat

    (root / "notebooks").mkdir()
    (root / "reports").mkdir()
    (root / "docs").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 00 · A tiny notebook"),
                nbformat.v4.new_code_cell("print('old output')")]
    nbformat.write(nb, root / "notebooks" / "00_tiny.ipynb")
    (root / "README.md").write_text(README, encoding="utf-8")
    (root / "docs" / "instructor_guide.md").write_text(GUIDE, encoding="utf-8")
    (root / "reports" / "metrics.json").write_text(json.dumps({"results": [OLD_METRIC]}, indent=2))
    (root / "reports" / "course_run.json").write_text(json.dumps(
        {"00_tiny": {"wall_time_s": 3.0, "status": "passed", "machine": "m",
                     "timestamp": "2026-01-01T00:00:00+00:00"}}))
    (root / "reports" / "course_run.md").write_text("old summary\n", encoding="utf-8")


@contextlib.contextmanager
def _scripts_in(root: Path) -> Iterator[tuple[Any, Any, Any]]:
    """``execute_notebooks``, ``update_readme`` and ``list_exercises`` pointed at ``root``."""
    sys.path.insert(0, str(REPO / "scripts"))
    import execute_notebooks
    import list_exercises
    import update_readme

    saved = [(m, a, getattr(m, a)) for m, a in ((execute_notebooks, "REPO"), (update_readme, "REPO"),
                                                (update_readme, "GUIDE"), (list_exercises, "REPO"),
                                                (list_exercises, "GUIDE"))]
    guide = root / "docs" / "instructor_guide.md"
    execute_notebooks.REPO = update_readme.REPO = list_exercises.REPO = root
    update_readme.GUIDE = list_exercises.GUIDE = guide
    try:
        with _env(COURSE_REPORTS_DIR=str(root / "reports")):
            yield execute_notebooks, update_readme, list_exercises
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)


def _commit_notebook(root: Path) -> None:
    import nbformat

    with _scripts_in(root) as (execute_notebooks, _, _):
        path = root / "notebooks" / "00_tiny.ipynb"
        nb = nbformat.read(path, as_version=4)
        nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="new output\n" * 300)]
        staged = [{**OLD_METRIC, "value": 42.0}]
        entry = {"wall_time_s": 5.0, "status": "passed", "machine": "m",
                 "timestamp": "2026-01-02T00:00:00+00:00"}
        execute_notebooks.commit_notebook(path, nb, staged, entry)


def _update_readme(root: Path) -> None:
    with _scripts_in(root) as (_, update_readme, _), contextlib.redirect_stdout(None):
        if update_readme.main() != 0:
            raise RuntimeError("update_readme failed")


def _list_exercises(root: Path) -> None:
    with _scripts_in(root) as (_, _, list_exercises), contextlib.redirect_stdout(None):
        if list_exercises.main([]) != 0:
            raise RuntimeError("list_exercises failed")


def _plain_write(root: Path) -> None:
    (root / "notes.txt").write_text("new text\n" * 500, encoding="utf-8")


# Not a writer of the course: a plain write, which the faults must catch losing data (the census
# checks itself with it).
PLAIN = Writer("a plain Path.write_text (negative control)", lambda r: _old_files(r, "notes.txt"),
               _plain_write)

WRITERS = [
    Writer("files.atomic_write_text", lambda r: _old_files(r, "notes.txt"), _files_text),
    Writer("files.atomic_write_bytes", lambda r: _old_files(r, "notes.txt"), _files_bytes),
    Writer("files.atomic_write_json", lambda r: _old_files(r, "notes.txt"), _files_json),
    Writer("files.atomic_open (torch.save)", lambda r: _old_files(r, "notes.txt"), _files_open),
    Writer("files.atomic_write_many", lambda r: _old_files(r, "a.txt", "sub/b.txt"), _files_many),
    Writer("results.record_result (reports/metrics.json)", _record_result_setup, _record_result),
    Writer("checkpoint.save_checkpoint", _checkpoint_setup, _save_checkpoint),
    Writer("checkpoint.save_state", _checkpoint_setup, _save_state),
    Writer("download.fetch", _download_setup, _download),
    Writer("translation.load_tatoeba (parsed-pairs cache)", _tatoeba_setup, _tatoeba),
    Writer("make execute: notebook + metrics + run times + summary + README + guide",
           _course_setup, _commit_notebook),
    Writer("update_readme (README course map, guide run times)", _course_setup, _update_readme),
    Writer("list_exercises (guide's exercise list)", _course_setup, _list_exercises),
]


# ---- the faults -----------------------------------------------------------------------------


class _FailingFile:
    """A file whose ``after``-th write fails: half the data is written, then ``exc`` is raised."""

    def __init__(self, f: Any, fault: _Fault) -> None:
        self._f, self._fault = f, fault

    def write(self, data: Any) -> int:
        if self._fault.arm():
            self._f.write(data[: len(data) // 2])
            raise self._fault.error()
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _FailingFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __iter__(self):
        return iter(self._f)


class _Fault:
    """Fails the ``nth`` call of one primitive with ``error()``; ``fired`` says if it happened."""

    def __init__(self, nth: int, error: Callable[[], BaseException]) -> None:
        self.nth, self.error, self.calls, self.fired = nth, error, 0, False

    def arm(self) -> bool:
        self.calls += 1
        if self.calls == self.nth and not self.fired:
            self.fired = True
            return True
        return False


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device (injected)")


def _refused() -> OSError:
    return PermissionError(errno.EACCES, "The file is being used by another process (injected)")


@contextlib.contextmanager
def _patch(obj: Any, name: str, make: Callable[[Callable], Callable]) -> Iterator[None]:
    original = getattr(obj, name)
    setattr(obj, name, make(original))
    try:
        yield
    finally:
        setattr(obj, name, original)


def _writing(args: tuple, kwargs: dict) -> bool:
    mode = kwargs.get("mode", args[1] if len(args) > 1 else "r")
    return isinstance(mode, str) and any(c in mode for c in "wax+")


def _write_fault(error: Callable[[], BaseException]) -> Callable[[], tuple[_Fault, Any]]:
    """Fail the first write to any file opened for writing: through ``os.fdopen`` (the atomic
    writers), ``open`` or ``io.open`` (``Path.write_text``, a plain ``open(path, "w")``)."""

    def start() -> tuple[_Fault, Any]:
        fault = _Fault(1, error)

        def make(opener: Callable) -> Callable:
            def failing(*args: Any, **kwargs: Any) -> Any:
                f = opener(*args, **kwargs)
                return _FailingFile(f, fault) if _writing(args, kwargs) else f
            return failing

        stack = contextlib.ExitStack()
        import builtins
        import io

        for obj, name in ((os, "fdopen"), (io, "open"), (builtins, "open")):
            stack.enter_context(_patch(obj, name, make))
        return fault, stack
    return start


def _call_fault(obj: Any, name: str, nth: int,
                error: Callable[[], BaseException]) -> Callable[[], tuple[_Fault, Any]]:
    def start() -> tuple[_Fault, Any]:
        fault = _Fault(nth, error)

        def make(original: Callable) -> Callable:
            def failing(*args: Any, **kwargs: Any) -> Any:
                if fault.arm():
                    raise fault.error()
                return original(*args, **kwargs)
            return failing

        return fault, _patch(obj, name, make)
    return start


FAULTS: dict[str, Callable[[], tuple[_Fault, Any]]] = {
    "disk full in the middle of the write": _write_fault(_enospc),
    "disk full when flushing to disk (fsync)": _call_fault(os, "fsync", 1, _enospc),
    "no room for the temporary file": _call_fault(tempfile, "mkstemp", 1, _enospc),
    "rename refused (the file is open elsewhere)": _call_fault(os, "replace", 1, _refused),
    "a later rename refused": _call_fault(os, "replace", 2, _refused),
    "Ctrl-C in the middle of the write": _write_fault(KeyboardInterrupt),
}


# ---- running a case -------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes; lock files (``*.lock``, empty, made by ``filelock``
    on the first run and left in place by design) are not data."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix != ".lock"}


@dataclass
class Result:
    writer: str
    fault: str
    outcome: str  # survived / data lost / temporary file left / error swallowed / not reached
    detail: str = ""


def judge(writer: str, fault: str, before: dict[str, bytes], after: dict[str, bytes],
          raised: BaseException | None, fired: bool) -> Result:
    if not fired:
        return Result(writer, fault, "not reached", "the write never reached this step")
    changed = sorted(k for k in before if after.get(k) != before[k])
    added = sorted(set(after) - set(before))
    if changed:
        return Result(writer, fault, "data lost", f"changed or lost: {changed}")
    if added:
        return Result(writer, fault, "temporary file left", f"new files: {added}")
    if raised is None:
        return Result(writer, fault, "error swallowed", "the write failed but the caller was not told")
    return Result(writer, fault, "survived", f"{type(raised).__name__}: {raised}"[:200])


def run_case(writer: Writer, fault_name: str, root: Path) -> Result:
    """Set up, snapshot, write with the fault armed, compare."""
    root.mkdir(parents=True, exist_ok=True)
    writer.setup(root)
    before = snapshot(root)
    fault, patch = FAULTS[fault_name]()
    raised: BaseException | None = None
    try:
        with patch:
            writer.action(root)
    except BaseException as exc:  # noqa: BLE001  (Ctrl-C included: it is one of the faults)
        raised = exc
    return judge(writer.name, fault_name, before, snapshot(root), raised, fault.fired)


_CHILD = """
import os, resource, signal, sys
sys.path.insert(0, {here!r})
import fault_census as F
writer = next(w for w in F.WRITERS + [F.PLAIN] if w.name == {name!r})
root = __import__("pathlib").Path({root!r})
{warm}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
print("START", flush=True)
try:
    writer.action(root)
except OSError as exc:
    print("RAISED", exc.errno, exc)
    sys.exit(3)
print("DONE")
"""


def run_file_size_limit(writer: Writer, root: Path, limit: int = 256) -> Result:
    """The write in a child process whose files may not grow past ``limit`` bytes (``ulimit -f``)."""
    fault_name = f"file-size limit (ulimit -f, {limit} bytes)"
    root.mkdir(parents=True, exist_ok=True)
    writer.setup(root)
    before = snapshot(root)
    # import everything the writer needs before the limit applies (no .pyc, caches written)
    warm = ("import torch, nbformat, course_utils.files, course_utils.results, "
            "course_utils.checkpoint, course_utils.download, course_utils.datasets.translation\n"
            "sys.path.insert(0, str(F.REPO / 'scripts'))\n"
            "import execute_notebooks, update_readme, list_exercises, course_utils.exercises as E\n"
            "E.exercises()")
    code = _CHILD.format(here=str(Path(__file__).resolve().parent), name=writer.name,
                         root=str(root), limit=limit, warm=warm)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=str(root.parent), timeout=300)
    started = "START" in proc.stdout
    raised = OSError(proc.stdout.split("RAISED", 1)[-1].strip()) if proc.returncode == 3 else None
    if proc.returncode not in (0, 3):  # died otherwise: the error still reached the caller
        raised = RuntimeError(f"exit {proc.returncode}: {proc.stderr[-300:]}")
    fired = started and proc.returncode != 0
    return judge(writer.name, fault_name, before, snapshot(root), raised, fired)


def run_census(base: Path, writers: list[Writer] | None = None,
               file_size_limit: bool = True) -> list[Result]:
    """Every writer under every fault (and the file-size limit where POSIX has it)."""
    results = []
    for i, writer in enumerate(writers or WRITERS):
        for j, fault_name in enumerate(FAULTS):
            results.append(run_case(writer, fault_name, base / f"w{i}f{j}"))
        if file_size_limit and hasattr(os, "fork"):
            results.append(run_file_size_limit(writer, base / f"w{i}limit"))
    return results


def counts(results: list[Result]) -> dict[str, int]:
    injected = [r for r in results if r.outcome != "not reached"]
    return {"injected": len(injected),
            "survived": sum(r.outcome == "survived" for r in injected),
            "data lost": sum(r.outcome == "data lost" for r in injected),
            "other": sum(r.outcome not in ("survived", "data lost") for r in injected)}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fault-census-") as tmp:
        results = run_census(Path(tmp))
    for r in results:
        print(f"{r.outcome:20} {r.writer} | {r.fault} | {r.detail[:120]}")
    c = counts(results)
    print(f"\nfaults injected {c['injected']} / survived {c['survived']} / data lost {c['data lost']}"
          f" / other {c['other']}")
    return 0 if c["injected"] == c["survived"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())


# ---- every place that writes a file ---------------------------------------------------------

import ast  # noqa: E402

SCANNED = ("course_utils", "scripts", "benchmarks")

# Writers that do not go through course_utils.files, and why that is right. Keyed by
# (file, enclosing function): a new write elsewhere fails the static test until it is atomic or
# listed here with its reason.
EXEMPT: dict[tuple[str, str], str] = {
    ("course_utils/files.py", "*"): "the atomic writers themselves",
    ("course_utils/download.py", "fetch"): "streams into a temporary file in the destination "
                                           "folder, verifies it, renames it: atomic (tested)",
    ("course_utils/monitor.py", "_write_proc"): "writes a kernel control file under /proc "
                                                "(resets the peak-RSS counter), not data",
    ("course_utils/loading.py", "_write_bytes"): "the loading study's sample files, generated in "
                                                 "a scratch folder and rebuilt on every run",
    ("course_utils/loading.py", "write_layouts"): "the loading study's layouts, generated in a "
                                                  "scratch folder and rebuilt on every run",
    ("scripts/build_site.py", "*"): "the website's sources (build/site_src) and built pages "
                                    "(site/, git-ignored), rebuilt from scratch on every build",
    ("scripts/mutate.py", "*"): "a scratch copy of the repository under build/mutation, "
                                "rebuilt on every run (its report is written atomically)",
}

_WRITE_FUNCS = {"save": ("torch", "np", "numpy"), "savez": ("np", "numpy"),
                "savez_compressed": ("np", "numpy"), "dump": ("json", "pickle"),
                "write": ("nbformat",), "copy": ("shutil",), "copy2": ("shutil",),
                "copyfile": ("shutil",), "copytree": ("shutil",), "move": ("shutil",),
                "replace": ("os",), "rename": ("os",), "fdopen": ("os",),
                "mkstemp": ("tempfile",)}


@dataclass
class Site:
    path: str
    line: int
    function: str
    call: str
    exempt: str | None  # why it may bypass course_utils.files (None: it must not)


def _mode(call: ast.Call, position: int) -> str | None:
    for kw in call.keywords:
        if kw.arg == "mode" and isinstance(kw.value, ast.Constant):
            return str(kw.value.value)
    if len(call.args) > position and isinstance(call.args[position], ast.Constant):
        return str(call.args[position].value)
    return None


def _is_write(call: ast.Call) -> str | None:
    """A description of the write ``call`` makes, or None."""
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
    if name in ("write_text", "write_bytes", "savefig", "to_csv", "tofile"):
        return name
    if name == "open" and owner in (None, "io", "builtins") or (name == "open" and owner is None):
        mode = _mode(call, 1)
        return f"open(..., {mode!r})" if mode and any(c in mode for c in "wax+") else None
    if name == "open" and isinstance(f, ast.Attribute) and owner not in ("tarfile", "zipfile"):
        mode = _mode(call, 0)  # Path.open(mode)
        return f".open({mode!r})" if mode and any(c in mode for c in "wax+") else None
    if name == "open" and owner == "tarfile" or name == "ZipFile":
        mode = _mode(call, 1)
        return f"{owner or ''}.{name}(..., {mode!r})" if mode and mode[0] in "wax" else None
    if name in _WRITE_FUNCS and owner in _WRITE_FUNCS[name]:
        if name == "fdopen":
            mode = _mode(call, 1)
            return f"os.fdopen(..., {mode!r})" if mode and any(c in mode for c in "wax+") else None
        return f"{owner}.{name}"
    return None


def _target(call: ast.Call, desc: str) -> ast.expr | None:
    """The file argument of a write that takes a file object."""
    if desc in ("torch.save", "pickle.dump", "json.dump", "nbformat.write") and len(call.args) > 1:
        return call.args[1]
    if desc in ("savefig", "np.save", "numpy.save") and call.args:
        return call.args[0]
    return None


class _Scan(ast.NodeVisitor):
    def __init__(self, path: str) -> None:
        self.path, self.sites, self.stack = path, [], []
        self.safe_names: list[set[str]] = [set()]  # names bound to atomic_open files or buffers

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.stack.append(node.name)
        self.safe_names.append(set())
        self.generic_visit(node)
        self.safe_names.pop()
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            call = item.context_expr
            if (isinstance(call, ast.Call) and isinstance(item.optional_vars, ast.Name)
                    and getattr(call.func, "id", getattr(call.func, "attr", "")) == "atomic_open"):
                self.safe_names[-1].add(item.optional_vars.id)
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        value = node.value
        if isinstance(value, ast.Call) and getattr(value.func, "attr", getattr(
                value.func, "id", "")) in ("BytesIO", "StringIO"):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    self.safe_names[-1].add(t.id)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        desc = _is_write(node)
        if desc is not None:
            target = _target(node, desc)
            into_safe = isinstance(target, ast.Name) and any(target.id in s for s in self.safe_names)
            if not into_safe:
                function = self.stack[-1] if self.stack else "<module>"
                exempt = EXEMPT.get((self.path, function)) or EXEMPT.get((self.path, "*"))
                self.sites.append(Site(self.path, node.lineno, function, desc, exempt))
        self.generic_visit(node)


def write_sites() -> list[Site]:
    """Every call in ``course_utils``, ``scripts`` and ``benchmarks`` that writes a file directly
    (not into a file object of ``atomic_open`` or an in-memory buffer)."""
    sites = []
    for folder in SCANNED:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            scan = _Scan(rel)
            scan.visit(ast.parse(path.read_text(encoding="utf-8"), filename=rel))
            sites += scan.sites
    return sites
