#!/usr/bin/env python
"""`make verify NB=14`: does this machine reproduce the course's numbers for one notebook?

    python scripts/verify.py 14                     # by number
    python scripts/verify.py notebooks/04_multi_head_attention.ipynb

Runs the notebook in full mode from a fresh kernel (its own copy of the reports: the course's
files are never touched) and prints every headline result next to the course's stored value
and the range measured across CPU kernels and thread counts (``reports/reproducibility.json``,
written by ``scripts/reproducibility.py``), with a verdict:

* **within range** — this machine behaves like the ones the course was measured on;
* **outside the measured range** — the number moved more than it did there; the target still holds;
* **target missed** — look at the setup (``make doctor``) before a workshop.

Timing results are compared with their target only: they depend on the machine by nature.
Instructors: run it on one room laptop before the day (see the instructor guide).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
import reproducibility  # noqa: E402
import update_readme  # noqa: E402


def find_notebook(which: str) -> Path:
    path = Path(which)
    if path.suffix == ".ipynb":
        if not path.is_file():
            raise SystemExit(f"no such notebook: {path}")
        return path
    matches = sorted((REPO / "notebooks").glob(f"{which.zfill(2)}_*.ipynb"))
    if len(matches) != 1:
        raise SystemExit(f"NB={which!r} names no notebook: pass its number (e.g. NB=04) or its path")
    return matches[0]


def verdict(value: float, stored: dict | None, spread: dict | None, target: float | None, higher: bool,
            timing: bool) -> str:
    if target is not None and not ((value >= target) if higher else (value <= target)):
        return "target missed"
    if timing or stored is None:
        return "target met" if target is not None else "reported"
    low = spread["min"] if spread else stored["value"]
    high = spread["max"] if spread else stored["value"]
    slack = 1e-9 + 1e-6 * max(abs(low), abs(high))  # printing rounds the last digits
    if low - slack <= value <= high + slack:
        return "within range"
    return "outside the measured range" + ("" if spread else " (only the stored run is known)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", help="a notebook number (14) or path")
    args = parser.parse_args(argv)
    path = find_notebook(args.notebook).resolve()
    name = path.stem
    stored = {m["name"]: m for m in update_readme.read_metrics() if m["notebook"] == name}
    spreads = {}
    if reproducibility.REPORT.exists():
        spreads = json.loads(reproducibility.REPORT.read_text(encoding="utf-8")).get("notebooks", {}).get(name, {}) \
            .get("results", {})
    print(f"running {name} in full mode (a fresh kernel; the course's reports are not touched) ...", flush=True)
    results, elapsed = reproducibility.rerun(path, {})
    rows = [("result", "this machine", "course's stored run", "measured range", "verdict")]
    bad = 0
    for entry in results:
        result, value = entry["name"], entry["value"]
        old, spread = stored.get(result), spreads.get(result)
        timing = entry.get("timing", False)
        text = verdict(value, old, spread, entry["target"], entry.get("higher_is_better", True), timing)
        bad += text == "target missed"
        rows.append((result, f"{value:.4g}", f"{old['value']:.4g}" if old else "—",
                     f"{spread['min']:.4g} – {spread['max']:.4g}" if spread else "—", text))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    stored_time = update_readme.read_run_times().get(name, {}).get("wall_time_s")
    ratio = f" ({elapsed / stored_time:.1f}× the course's {stored_time:.0f} s)" if stored_time and not math.isnan(elapsed) else ""
    print(f"\n{name} ran in {elapsed:.0f} s{ratio}. "
          + ("Every target met." if not bad else f"{bad} target(s) missed: run `make doctor` and compare the setup."))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
