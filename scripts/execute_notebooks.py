#!/usr/bin/env python
"""`make execute`: run notebooks in full mode from a fresh kernel and save their outputs in place.

    python scripts/execute_notebooks.py                       # every notebook
    python scripts/execute_notebooks.py notebooks/04_*.ipynb  # some

Each notebook runs top to bottom in a new kernel, with the working directory set to
``notebooks/`` and ``COURSE_FAST`` unset (full mode). A notebook that raises stops with the
error shown, and its file is left untouched. At the end a summary table (notebook, wall time,
headline metrics against their targets) is printed and written to ``reports/course_run.md``;
the wall times are kept in ``reports/course_run.json`` for the README's course map.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
from course_utils.results import _locked, describe_result, load_metrics, reports_dir  # noqa: E402

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def execute(path: Path, timeout: int) -> float:
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
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    nbformat.write(nb, path)
    return elapsed


def metric_text(entry: dict) -> str:
    return describe_result(entry["name"], entry["value"], entry["target"], entry.get("higher_is_better", True),
                           entry.get("unit", ""))


def write_summary(times: dict[str, dict]) -> str:
    metrics = load_metrics()
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
    text = "\n".join(lines) + "\n"
    (reports_dir() / "course_run.md").write_text(text, encoding="utf-8")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args()
    paths = args.notebooks or sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        print("no notebooks to run", file=sys.stderr)
        return 1
    os.environ.pop("COURSE_FAST", None)  # full mode
    os.environ.pop("TQDM_DISABLE", None)
    os.environ["COURSE_RECORD"] = "1"  # record_result writes reports/metrics.json and asserts timing targets
    reports_dir().mkdir(parents=True, exist_ok=True)
    times_path = reports_dir() / "course_run.json"
    times: dict[str, dict] = {}
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    try:
        import torch

        if torch.cuda.is_available():
            machine += f", {torch.cuda.get_device_name(0)}"
    except Exception:
        pass
    failures = 0
    for path in tqdm(paths, desc="notebooks", unit="nb"):
        name = path.stem
        tqdm.write(f"running {name} ...")
        try:
            elapsed = execute(path.resolve(), args.timeout)
            status = "passed"
        except CellExecutionError as exc:
            elapsed, status = float("nan"), "FAILED"
            failures += 1
            tqdm.write(f"{name} failed:\n{str(exc)[-3000:]}")
        entry = {
            "wall_time_s": round(elapsed, 1),
            "status": status,
            "machine": machine,
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        with _locked(times_path):  # several `make execute` runs may share the file
            times = json.loads(times_path.read_text()) if times_path.exists() else {}
            if status == "passed":  # a failed run leaves the notebook, and so its entry, as they were
                times[name] = entry
                times_path.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tqdm.write(f"{name}: {status} in {elapsed:.0f} s")
    print()
    print(write_summary(times))
    from update_readme import main as update_readme

    update_readme()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
