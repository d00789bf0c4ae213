"""The bad-input census of ``course_utils``: every public function and class, fed bad input.

For each public name, ``tests/properties/census_registry.py`` holds one valid call; the census
(``tests/properties/census_engine.py``) derives the bad calls from it (wrong types, integer and
float64 dtypes, NaN/inf, empty inputs, zero and negative sizes, the ``meta`` device, wrong
shapes), runs each in a worker process with a time limit and classifies it:

* **clear**: ``ValueError``/``TypeError`` (or a documented subclass) naming the argument;
* **obscure**: any other exception, or a message that does not name the argument;
* **silent**: returned although the input is invalid (or another answer than a reference);
* **hang**: no answer within the time limit.

Calls whose input turns out to be valid (listed with a reason, or judged automatically) are
counted apart as *accepted*: *bad inputs tried* = clear + obscure + silent + hang.

Usage::

    python scripts/bad_input_census.py                  # the whole census; writes the report
    python scripts/bad_input_census.py --only course_utils.rl course_utils.vit
    python scripts/bad_input_census.py --update-known   # drop fixed failures from the known list

It also runs the fault-injection census (``tests/e2e/fault_census.py``: every writer of a
file the course keeps, failed at every step; ``--no-faults`` leaves it out) and prints both
sets of counts. It writes ``reports/bad_input_census.md`` (atomically).
Failures in modules whose owners are still at work are listed in
``tests/properties/census_known.json``; ``--record-known`` rewrites that list from this run.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "properties"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(REPO / "tests" / "e2e"))

import census_engine as E  # noqa: E402
import fault_census as FC  # noqa: E402
from census_owners import OPEN, owner  # noqa: E402

from course_utils.files import atomic_write_json, atomic_write_text  # noqa: E402

COLUMNS = ("tried", "clear", "obscure", "silent", "hang", "accepted")


def run(names: list[str], jobs: int) -> tuple[list[E.Outcome], list[str]]:
    """Every bad call of ``names``, over ``jobs`` worker processes; and the broken entries."""
    chunks = [names[i::jobs] for i in range(jobs)]
    broken: list[str] = []

    def work(chunk: list[str]) -> list[E.Outcome]:
        out: list[E.Outcome] = []
        with E.Census() as census:
            for name in chunk:
                try:
                    out += census.run(name)
                except RuntimeError as exc:
                    broken.append(f"{name}: {exc}")
        return out

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(work, chunks))
    return [o for r in results for o in r], broken


def counts(outcomes: list[E.Outcome]) -> collections.Counter:
    c = collections.Counter(o.outcome for o in outcomes)
    c["tried"] = sum(c[k] for k in E.OUTCOMES)
    return c


def table(rows: list[tuple[str, collections.Counter]]) -> list[str]:
    head = f"| {'module':<36} | " + " | ".join(f"{k:>8}" for k in COLUMNS) + " |"
    lines = [head, "|" + "-" * 38 + "|" + "|".join("-" * 10 for _ in COLUMNS) + "|"]
    for name, c in rows:
        lines.append(f"| {name:<36} | " + " | ".join(f"{c[k]:>8}" for k in COLUMNS) + " |")
    return lines


def report(outcomes: list[E.Outcome], names: list[str], broken: list[str], seconds: float,
           command: str) -> str:
    by_module: dict[str, list[E.Outcome]] = collections.defaultdict(list)
    for o in outcomes:
        by_module[E.REGISTRY[o.entry].module].append(o)
    total = counts(outcomes)
    records = sum(1 for n in names if E.REGISTRY[n].factory is None)
    lines = [
        "# Bad-input census of course_utils",
        "",
        f"Measured by `{command}` ({seconds:.0f} s). Every public function and class of every "
        "`course_utils` module has one valid call in `tests/properties/census_registry.py`; the "
        "census derives the bad calls from it and classifies each (see "
        "`scripts/bad_input_census.py`). *Accepted* calls turned out to be valid input (a "
        "listed reason, or judged automatically) and are not counted as bad inputs.",
        "",
        f"**Bad inputs tried: {total['tried']} — clear {total['clear']}, obscure "
        f"{total['obscure']}, silent {total['silent']}, hangs {total['hang']}** "
        f"(accepted as valid: {total['accepted']}; {len(names)} names and methods, {records} of "
        "them without a bad input to derive: no arguments, exception classes, result records).",
        "",
    ]
    lines += table([(m.removeprefix("course_utils."), counts(os_)) for m, os_ in
                    sorted(by_module.items())] + [("total", total)])
    if broken:
        lines += ["", "## Entries whose valid call failed", ""] + [f"* {b}" for b in broken]
    failures = [o for o in outcomes if o.outcome in E.FAILURES]
    if failures:
        lines += ["", "## Failures, by owner", "",
                  "| owner | function | bad input | outcome | what happened |",
                  "|---|---|---|---|---|"]
        for o in sorted(failures, key=lambda o: (owner(o.entry), o.entry, o.arg, o.mutation)):
            detail = " ".join(o.detail.split())[:160].replace("|", "\\|")
            lines.append(f"| {owner(o.entry)} | `{o.entry.removeprefix('course_utils.')}` | "
                         f"`{o.arg}`: {o.mutation} | {o.outcome} | {detail} |")
    return "\n".join(lines) + "\n"


def fault_report(results: list[FC.Result]) -> str:
    c = FC.counts(results)
    sites = FC.write_sites()
    lines = [
        "", "# Fault-injection census", "",
        f"**Faults injected: {c['injected']} — survived {c['survived']}, data lost "
        f"{c['data lost']}** (other outcomes: {c['other']}). A fault is injected when the write "
        "reached the failing step; it is survived when the error reached the caller and every "
        "file of the writer's folder is byte for byte as before (`tests/e2e/fault_census.py`).",
        "",
        f"Every call in `course_utils`, `scripts` and `benchmarks` that writes a file goes through "
        f"`course_utils.files`, or is one of the {len(sites)} places listed with its reason "
        "(the atomic writers themselves, scratch folders, build output, /proc).",
        "", "| writer | " + " | ".join(FC.FAULTS) + " | file-size limit |",
        "|---|" + "---|" * (len(FC.FAULTS) + 1),
    ]
    by_writer: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for r in results:
        by_writer[r.writer]["limit" if r.fault.startswith("file-size") else r.fault] = r.outcome
    for writer, outcomes in by_writer.items():
        cells = [outcomes.get(f, "") for f in FC.FAULTS] + [outcomes.get("limit", "not run")]
        lines.append(f"| {writer} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=None, metavar="PREFIX",
                        help="census only the names that start with these prefixes")
    parser.add_argument("--fast", action="store_true", help="leave out the entries marked slow")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--report", type=Path, default=REPO / "reports" / "bad_input_census.md",
                        help="where to write the report (default reports/bad_input_census.md)")
    parser.add_argument("--json", type=Path, default=None, help="also write every outcome here")
    parser.add_argument("--no-faults", action="store_true",
                        help="leave out the fault-injection census")
    parser.add_argument("--update-known", action="store_true",
                        help="drop the failures that are fixed from census_known.json")
    parser.add_argument("--record-known", action="store_true",
                        help="rewrite census_known.json with this run's failures in the modules "
                             "of owners still at work (never those of the others)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be a positive int, got {args.jobs}")
    os.environ["CENSUS_RUN_KNOWN_HANGS"] = "1"  # measure them again, every one
    E.load_registry()
    names = [n for n in E.REGISTRY
             if (args.only is None or any(n.startswith(p) for p in args.only))
             and not (args.fast and E.REGISTRY[n].slow)]
    if not names:
        parser.error(f"no census entry starts with {args.only}")
    start = time.perf_counter()
    outcomes, broken = run(names, args.jobs)
    seconds = time.perf_counter() - start
    command = "python scripts/bad_input_census.py" + (" " + " ".join(argv or sys.argv[1:])
                                                       if (argv or sys.argv[1:]) else "")
    text = report(outcomes, names, broken, seconds, command.strip())
    faults: list[FC.Result] = []
    if not args.no_faults:
        with tempfile.TemporaryDirectory(prefix="fault-census-") as tmp:
            faults = FC.run_census(Path(tmp))
        text += fault_report(faults)
    total = counts(outcomes)
    print("\n".join(table([("total", total)])))
    print(f"\nbad inputs tried {total['tried']} / clear {total['clear']} / obscure "
          f"{total['obscure']} / silent {total['silent']} / hangs {total['hang']} "
          f"(accepted as valid: {total['accepted']}; {seconds:.0f} s)")
    if faults:
        fc = FC.counts(faults)
        print(f"faults injected {fc['injected']} / survived {fc['survived']} / data lost "
              f"{fc['data lost']} (other: {fc['other']})")
    atomic_write_text(args.report, text)
    print(f"report: {args.report}")
    if args.json:
        atomic_write_json(args.json, [o.__dict__ for o in outcomes])
    if args.update_known or args.record_known:
        _write_known(outcomes, names, record=args.record_known)
    return 1 if broken else 0


def _write_known(outcomes: list[E.Outcome], names: list[str], record: bool) -> None:
    known = E.load_known()
    now = {(o.entry, f"{o.arg}:{o.mutation}"): o.outcome for o in outcomes}
    ran = set(names)
    for entry in list(known):
        if entry not in ran:
            continue
        for key in list(known[entry]):
            if now.get((entry, key)) not in E.FAILURES:
                del known[entry][key]  # fixed (or no longer derived): off the list
    if record:
        for (entry, key), outcome in now.items():
            if outcome in E.FAILURES and owner(entry) in OPEN:
                known.setdefault(entry, {})[key] = outcome
    known = {e: dict(sorted(k.items())) for e, k in sorted(known.items()) if k}
    atomic_write_json(E.KNOWN_PATH, known)
    print(f"{E.KNOWN_PATH.relative_to(REPO)}: {sum(map(len, known.values()))} known failures")


if __name__ == "__main__":
    sys.exit(main())
