#!/usr/bin/env python
"""How much the course's numbers move from one machine to another, measured on this one.

    python scripts/reproducibility.py notebooks/14_attention_rl_agent.ipynb   # one notebook
    python scripts/reproducibility.py --trained                                # every notebook that trains

Seeds make a run repeatable on one machine, not across CPUs, BLAS builds, thread counts or
GPUs: a different kernel or a different order of a floating-point sum changes the last bits,
and training amplifies them. This script re-runs a notebook in full mode under the settings
that differ between learners' machines and that can be changed here:

* ``native-1thread`` — PyTorch's own CPU kernels for this machine (e.g. AVX-512), one thread;
* ``avx2-2threads`` — the kernels of a CPU with AVX2 but no AVX-512 (``ATEN_CPU_CAPABILITY=avx2``,
  and the same limit for MKL and oneDNN), two threads: most laptops;
* ``default-2threads`` — the portable kernels a CPU without AVX2 gets
  (``ATEN_CPU_CAPABILITY=default``, MKL and oneDNN held to SSE4), two threads.

(The stored outputs are the fourth setting: native kernels, two threads.) Each run executes the
whole notebook from a fresh kernel with its own copy of the reports, so ``reports/`` and the
notebook are never touched; its recorded results are collected. ``reports/reproducibility.json``
keeps, per notebook and result, the stored value, the value under each setting, the range
(min, max over all of them) and whether every one meets the target. ``make verify NB=..``
(``scripts/verify.py``) compares a learner's run with that range.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
import execute_notebooks  # noqa: E402
import update_readme  # noqa: E402

from course_utils.files import atomic_write_json  # noqa: E402

REPORT = REPO / "reports" / "reproducibility.json"
SETTINGS: dict[str, dict[str, str]] = {
    "native-1thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "avx2-2threads": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                      "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
    "default-2threads": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                         "ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
}
STORED_SETTING = "native-2threads (stored run)"
# Notebooks whose headline results come from training (the ones whose numbers can move).
TRAINED = ["00_setup_gpu_and_timing", "03_self_attention_and_positions", "06_transformer_blocks",
           "07_gpt_from_scratch", "09_long_context_and_inference", "10_translation", "11_vision_transformer",
           "12_image_captioning", "13_visual_question_answering", "14_attention_rl_agent", "15_scaling_out"]


def rerun(path: Path, env: dict[str, str], timeout: int = 3600) -> tuple[list[dict], float]:
    """Run ``path`` in full mode under ``env``; return its recorded results and its wall time.

    ``COURSE_RECORD=measure``: every result is recorded, to a private copy of the reports, and a
    missed target does not stop the run (it is a finding about this setting).
    """
    with tempfile.TemporaryDirectory(prefix="course-repro-") as reports:
        full_env = {"COURSE_REPORTS_DIR": reports, "COURSE_RECORD": "measure", **env}
        for var in ("COURSE_FAST", "TQDM_DISABLE"):
            os.environ.pop(var, None)
        nb, elapsed = execute_notebooks.execute(path, timeout, full_env)
        metrics = update_readme.read_metrics(Path(reports) / "metrics.json")
        del nb
    return [m for m in metrics if m["notebook"] == path.stem], elapsed


def summarise(stored: list[dict], runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per result: the stored value, each setting's value, the range and the target verdict."""
    out: dict[str, dict] = {}
    for entry in stored:
        name = entry["name"]
        values = {STORED_SETTING: entry["value"]}
        for setting, metrics in runs.items():
            found = [m["value"] for m in metrics if m["name"] == name]
            if found:
                values[setting] = found[0]
        target, higher = entry.get("target"), entry.get("higher_is_better", True)
        met = None if target is None else all((v >= target) if higher else (v <= target) for v in values.values())
        out[name] = {
            "stored": entry["value"],
            "by_setting": values,
            "min": min(values.values()),
            "max": max(values.values()),
            "target": target,
            "higher_is_better": higher,
            "target_met_in_every_setting": met,
            "unit": entry.get("unit", ""),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--trained", action="store_true", help="every notebook whose headline results come from training")
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=sorted(SETTINGS))
    args = parser.parse_args()
    paths = args.notebooks or ([REPO / "notebooks" / f"{n}.ipynb" for n in TRAINED] if args.trained else [])
    paths = [p for p in paths if p.exists()]
    if not paths:
        parser.error("name a notebook, or pass --trained")
    stored_metrics = update_readme.read_metrics()
    report = json.loads(REPORT.read_text(encoding="utf-8")) if REPORT.exists() else {"notebooks": {}}
    for path in paths:
        name = path.stem
        stored = [m for m in stored_metrics if m["notebook"] == name]
        if not stored:
            print(f"{name}: no stored results (run `make execute` first); skipped", file=sys.stderr)
            continue
        runs: dict[str, list[dict]] = {}
        times: dict[str, float] = {}
        for setting in args.settings:
            start = time.perf_counter()
            print(f"{name}: {setting} ...", flush=True)
            runs[setting], times[setting] = rerun(path.resolve(), SETTINGS[setting])
            print(f"{name}: {setting} done in {time.perf_counter() - start:.0f} s", flush=True)
        report["notebooks"][name] = {
            "results": summarise(stored, runs),
            "settings": {s: SETTINGS[s] for s in args.settings} | {STORED_SETTING: {}},
            "wall_time_s": {s: round(t, 1) for s, t in times.items()},
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(REPORT, report)  # after each notebook: a long run keeps what it measured
        for result, s in report["notebooks"][name]["results"].items():
            verdict = {True: "target met in every setting", False: "TARGET MISSED in some setting",
                       None: "no target"}[s["target_met_in_every_setting"]]
            print(f"  {result}: stored {s['stored']:.4g}, range {s['min']:.4g} – {s['max']:.4g} ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
