#!/usr/bin/env python
"""`make bench`: run every ``benchmarks/bench_*.py`` in turn, then merge their summaries.

    python benchmarks/run_all.py                        # all
    python benchmarks/run_all.py attention inference    # only these (bench_<name>.py)
    python benchmarks/run_all.py --merge-only           # merge the results already there

Each script writes ``benchmarks/results/<name>_<device>.json`` with a ``"summary"`` dict of its
headline figures (ratios against PyTorch from the same run). The attention results file,
``attention_<device>.json``, is the one the notebooks and the README read: after the runs, the
summaries of the benchmarks listed in ``MERGE_INTO_ATTENTION`` are merged into its
``"summary"`` (their own keys, which must not collide), and ``"merged_from"`` says from which
file and run each came. A benchmark whose results file is missing is skipped with a note.

The hook for a new benchmark: write ``benchmarks/results/<name>_<device>.json`` with a
``"summary"`` and a ``"machine"`` (as ``bench_attention.py`` does) and add ``<name>`` below.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MERGE_INTO_ATTENTION = ("inference",)  # bench_inference.py: FlexAttention, paged cache, compile
sys.path.insert(0, str(HERE.parent))


def merge_summaries(device: str, names: tuple[str, ...] = MERGE_INTO_ATTENTION) -> list[str]:
    """Merge ``<name>_<device>.json``'s summary into ``attention_<device>.json``; return notes."""
    from course_utils.files import atomic_write_json

    target = RESULTS / f"attention_{device}.json"
    if not target.exists():
        return [f"no {target.name} to merge into"]
    result = json.loads(target.read_text(encoding="utf-8"))
    summary = result.setdefault("summary", {})
    for earlier in summary.pop("merged_from", {}).values():  # a merge again replaces, not clashes
        for key in earlier.get("keys", []):
            summary.pop(key, None)
    merged_from, notes = {}, []
    for name in names:
        source = RESULTS / f"{name}_{device}.json"
        if not source.exists():
            notes.append(f"{source.name} not found: run benchmarks/bench_{name}.py")
            continue
        other = json.loads(source.read_text(encoding="utf-8"))
        figures = {k: v for k, v in other.get("summary", {}).items()
                   if k not in ("targets", "met", "dtype")}
        clash = sorted(set(figures) & set(summary))
        if clash:
            raise ValueError(f"{source.name} repeats summary keys of attention_{device}.json: "
                             f"{clash}; give them their own names")
        summary.update(figures)
        merged_from[name] = {"file": source.name, "keys": sorted(figures),
                             "timestamp": other.get("machine", {}).get("timestamp")}
        notes.append(f"merged {len(figures)} summary figures of {source.name} into {target.name}")
    if merged_from:
        summary["merged_from"] = merged_from
    atomic_write_json(target, result, indent=2)
    return notes


def main(argv: list[str]) -> int:
    merge_only = "--merge-only" in argv
    wanted = {a for a in argv if not a.startswith("--")}
    scripts = sorted(p for p in HERE.glob("bench_*.py")
                     if not wanted or p.stem.removeprefix("bench_") in wanted)
    if not scripts and not merge_only:
        print(f"no benchmark scripts matched {sorted(wanted) or 'bench_*.py'} in {HERE}",
              file=sys.stderr)
        return 1
    failed = []
    for script in [] if merge_only else scripts:
        print(f"== {script.name}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"== {script.name}: {status} in {time.perf_counter() - start:.0f} s\n", flush=True)
        if rc:
            failed.append(script.name)
    for device in ("cpu", "cuda"):
        if (RESULTS / f"attention_{device}.json").exists():
            for note in merge_summaries(device):
                print(f"== {note}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
