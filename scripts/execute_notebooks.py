#!/usr/bin/env python
"""`make execute`: run notebooks in full mode from a fresh kernel and save their outputs in place.

    python scripts/execute_notebooks.py                       # every notebook
    python scripts/execute_notebooks.py notebooks/04_*.ipynb  # some

Each notebook runs top to bottom in a new kernel, with the working directory set to
``notebooks/``, ``COURSE_FAST`` unset (full mode) and ``COURSE_RECORD=1`` (its headline results
are recorded and its timing targets asserted). At the end a summary table (notebook, wall time,
headline metrics against their targets) is printed and written to ``reports/course_run.md``.

Nothing is lost. The reports are read and checked before any notebook runs (a corrupt one stops
the run at once, naming the file and the fix). While a notebook runs, its results go to a
staging copy of ``reports/metrics.json``; only when it has passed are its saved outputs, its
metrics, ``reports/course_run.json``, ``reports/course_run.md``, the README's course map and the
instructor guide written, together, each atomically (all new, or, on any failure such as a
full disk, all as they were). A notebook that fails leaves every file as it was.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from filelock import FileLock
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
import update_readme  # noqa: E402

from course_utils.files import atomic_write_many  # noqa: E402
from course_utils.results import describe_result, reports_dir  # noqa: E402

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def execute(path: Path, timeout: int, env: dict[str, str]) -> tuple[nbformat.NotebookNode, float]:
    """Run the notebook in a fresh kernel with ``env``; return it (not saved) and its wall time."""
    nb = nbformat.read(path, as_version=4)
    # Notebooks drafted in another tool (e.g. jupytext) get the standard kernel and lose its metadata.
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = KERNELSPEC
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # timestamps of an earlier run
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=True,
        record_timing=False,  # no per-cell timestamps in the stored notebooks
    )
    saved = dict(os.environ)
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        start = time.perf_counter()
        client.execute()
        elapsed = time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return nb, elapsed


def metric_text(entry: dict) -> str:
    return describe_result(entry["name"], entry["value"], entry["target"], entry.get("higher_is_better", True),
                           entry.get("unit", ""))


def summary(times: dict[str, dict], metrics: list[dict]) -> str:
    by_nb: dict[str, list[dict]] = {}
    for entry in metrics:
        by_nb.setdefault(entry["notebook"], []).append(entry)
    lines = [
        "# Course run (full mode)",
        "",
        "Written by `make execute` (scripts/execute_notebooks.py). Wall times are for the whole notebook,",
        "run from a fresh kernel; metrics come from `reports/metrics.json`.",
        "",
        "| notebook | wall time | machine | headline metrics | status |",
        "|---|---:|---|---|---|",
    ]
    total = 0.0
    for name, info in sorted(times.items()):
        total += info["wall_time_s"] if info["status"] == "passed" else 0
        metrics_md = "<br>".join(metric_text(e) for e in by_nb.get(name, [])) or "—"
        lines.append(f"| {name} | {info['wall_time_s']:.0f} s | {info['machine']} | {metrics_md} | {info['status']} |")
    lines += ["", f"Total: {total / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def check_reports() -> None:
    """Read every report before anything runs: a corrupt one stops the run here, named."""
    update_readme.read_run_times(reports_dir() / "course_run.json")
    update_readme.read_metrics(reports_dir() / "metrics.json")
    update_readme.rendered()  # the README and the guide have their markers


def machine_name() -> str:
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    try:
        import torch

        if torch.cuda.is_available():
            machine += f", {torch.cuda.get_device_name(0)}"
    except Exception:  # a broken CUDA install must not stop the run
        pass
    return machine


def _notebook_text(nb: nbformat.NotebookNode) -> str:
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"  # as nbformat.write saves it


def commit_notebook(path: Path, nb: nbformat.NotebookNode, staged_metrics: list[dict], entry: dict) -> None:
    """Write the notebook, its metrics, the run times, the summary, README and guide as one change."""
    reports = reports_dir()
    with FileLock(str(reports / "reports.lock")):  # several `make execute` runs may share the reports
        metrics = update_readme.read_metrics(reports / "metrics.json")
        times = update_readme.read_run_times(reports / "course_run.json")
        name = path.stem
        # This notebook's entries are exactly the ones this run recorded (a result the notebook
        # no longer records disappears with its old value).
        metrics = [m for m in metrics if m["notebook"] != name] + [m for m in staged_metrics if m["notebook"] == name]
        metrics.sort(key=lambda r: (r["notebook"], r["name"]))
        times[name] = entry
        files: dict[Path, str] = {
            path: _notebook_text(nb),
            reports / "metrics.json": json.dumps({"results": metrics}, indent=2, ensure_ascii=False) + "\n",
            reports / "course_run.json": json.dumps(times, indent=2, sort_keys=True) + "\n",
            reports / "course_run.md": summary(times, metrics),
        }
        for doc, text in update_readme.rendered(times, metrics).items():
            if doc.read_text(encoding="utf-8") != text:
                files[doc] = text
        atomic_write_many(files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args()
    paths = args.notebooks or sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        print(f"no such notebook: {', '.join(missing)}" if missing else "no notebooks to run", file=sys.stderr)
        return 1
    reports_dir().mkdir(parents=True, exist_ok=True)
    try:
        check_reports()
    except update_readme.ReportError as exc:
        print(f"make execute: nothing was run. {exc}", file=sys.stderr)
        return 1
    machine = machine_name()
    failures = 0
    for path in tqdm(paths, desc="notebooks", unit="nb"):
        name = path.stem
        tqdm.write(f"running {name} ...")
        with tempfile.TemporaryDirectory(prefix="course-run-") as staging:
            # The kernel's record_result writes here, not into reports/: a failed run records
            # nothing, and the staging starts empty, so a result the notebook no longer records
            # disappears from the reports with its old value.
            env = {"COURSE_RECORD": "1", "COURSE_REPORTS_DIR": staging}
            for var in ("COURSE_FAST", "TQDM_DISABLE"):  # full mode, with progress bars
                os.environ.pop(var, None)
            try:
                nb, elapsed = execute(path.resolve(), args.timeout, env)
            except CellExecutionError as exc:
                failures += 1
                tqdm.write(f"{name} FAILED (its notebook and the reports are left as they were):\n{str(exc)[-3000:]}")
                continue
            staged = update_readme.read_metrics(Path(staging) / "metrics.json")
        entry = {
            "wall_time_s": round(elapsed, 1),
            "status": "passed",
            "machine": machine,
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            commit_notebook(path.resolve(), nb, staged, entry)
        except OSError as exc:
            failures += 1
            tqdm.write(f"{name}: could not save ({exc}); its notebook and the reports are left as they were")
            continue
        tqdm.write(f"{name}: passed in {elapsed:.0f} s")
    print()
    print((reports_dir() / "course_run.md").read_text(encoding="utf-8") if (reports_dir() / "course_run.md").exists() else "")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
