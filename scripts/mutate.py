#!/usr/bin/env python
"""`make mutate MODULE=course_utils/attention.py`: mutation testing of one module with mutmut.

Mutation testing plants one small bug at a time in a module (a ``+`` for a ``-``, a ``<`` for a
``<=``, a constant changed, a call's argument dropped, ...) and runs the tests that cover it:
a bug the tests do not notice (a *survivor*) shows where the suite checks only that code
runs, not what it computes.

    python scripts/mutate.py course_utils/attention.py          # one module, its own tests
    python scripts/mutate.py course_utils/rl.py --tests tests/unit/test_rl.py
    python scripts/mutate.py --all                              # every teaching module

The tool is mutmut (3.x): it runs under pytest, mutates a copy of the code (never the working
tree), runs only the tests that reach the mutated function, forks a child per mutant (no
re-import of torch for each), and works with this layout as it is. pytest-xdist is not used
inside a mutant run: mutmut's ``--max-children`` parallelises over mutants instead, which on
2 cores is the better split. Each module runs in a scratch copy of the repository
(``build/mutation/<module>/``), so the working tree is never touched.

The results go to ``reports/mutation.md``: per module the kill rate (killed / all mutants,
equivalent mutants excluded) and every survivor with its diff. A mutant that cannot change
behaviour (an *equivalent* mutant) is listed in ``tests/mutation_equivalents.toml`` with a one-line
reason, keyed by its function and the changed line; it is reported as such, never hidden.
Not part of ``make test``: a module takes minutes, the whole list about an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from course_utils.files import atomic_write_text  # noqa: E402

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

# The modules that teach, and the tests that pin down what they compute.
TEACHING = {
    "course_utils/attention.py": ["tests/unit/test_attention.py"],
    "course_utils/positional.py": ["tests/unit/test_positional.py"],
    "course_utils/efficient.py": ["tests/unit/test_efficient.py"],
    "course_utils/kv_cache.py": ["tests/unit/test_kv_cache.py"],
    "course_utils/decoding.py": ["tests/unit/test_decoding.py"],
    "course_utils/transformer.py": ["tests/unit/test_transformer.py"],
    "course_utils/rl.py": ["tests/unit/test_rl.py"],
    "course_utils/captioning.py": ["tests/unit/test_captioning.py"],
    "course_utils/seq2seq.py": ["tests/unit/test_seq2seq.py"],
    "course_utils/vit.py": ["tests/unit/test_vit.py"],
    "scripts/train_distributed.py": ["tests/e2e/test_distributed.py"],
}
REPORT = REPO / "reports" / "mutation.md"
EQUIVALENTS = REPO / "tests" / "mutation_equivalents.toml"
START, END = "<!-- mutation:{module}:start -->", "<!-- mutation:{module}:end -->"


@dataclass
class ModuleResult:
    module: str
    tests: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    survivors: list[tuple[str, str]] = field(default_factory=list)  # (name, diff)
    equivalents: list[tuple[str, str, str]] = field(default_factory=list)  # (name, diff, reason)
    seconds: float = 0.0

    @property
    def kill_rate(self) -> float:
        judged = self.counts.get("killed", 0) + len(self.survivors)
        return self.counts.get("killed", 0) / judged if judged else float("nan")


def tests_for(module: str) -> list[str]:
    if module in TEACHING:
        return TEACHING[module]
    guess = f"tests/unit/test_{Path(module).stem}.py"
    if not (REPO / guess).exists():
        raise SystemExit(f"no tests known for {module}: pass --tests tests/unit/test_x.py")
    return [guess]


def scratch_copy(module: str) -> Path:
    """A copy of the tracked source (no notebooks, reports or images) to mutate in."""
    where = REPO / "build" / "mutation" / Path(module).stem
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if name.startswith(("notebooks/", "reports/")) or name.endswith((".png", ".ipynb")):
            continue
        src = REPO / name
        if src.is_file():
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, where / name)
    return where


def configure(where: Path, module: str, tests: list[str]) -> None:
    source_root = module.split("/", 1)[0]
    config = (
        "\n[tool.mutmut]\n"
        f'source_paths = ["{source_root}"]\n'
        f'only_mutate = ["{module}"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x", "-p", "no:randomly"]\n'
    )
    with open(where / "pyproject.toml", "a", encoding="utf-8") as f:
        f.write(config)


def load_equivalents() -> list[dict[str, str]]:
    if not EQUIVALENTS.exists():
        return []
    return tomllib.loads(EQUIVALENTS.read_text(encoding="utf-8")).get("equivalent", [])


def _changed_lines(diff: str) -> tuple[str, str]:
    minus = "\n".join(line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---"))
    plus = "\n".join(line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++"))
    return minus, plus


def _function_of(name: str) -> str:
    # course_utils.attention.x_causal_mask__mutmut_3 -> causal_mask; xǁClassǁmethod__mutmut_1 -> Class.method
    short = name.rsplit(".", 1)[-1].split("__mutmut_")[0]
    if short.startswith("xǁ"):
        return short[2:].replace("ǁ", ".")
    return short[2:] if short.startswith("x_") else short


def run_module(module: str, tests: list[str], children: int) -> ModuleResult:
    import time

    start = time.perf_counter()
    where = scratch_copy(module)
    configure(where, module, tests)
    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or "mutmut"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    env.pop("COURSE_FAST", None)
    print(f"mutating {module} with {', '.join(tests)} ({children} children) in {where.relative_to(REPO)} ...", flush=True)
    subprocess.run([mutmut, "run", "--max-children", str(children)], cwd=where, env=env,
                   stdout=subprocess.DEVNULL, check=False)
    listing = subprocess.run([mutmut, "results", "--all", "true"], cwd=where, env=env, capture_output=True,
                             text=True, check=False).stdout
    result = ModuleResult(module, tests)
    equivalents = [e for e in load_equivalents() if e.get("module") == module]
    for line in listing.splitlines():
        found = re.match(r"\s*(\S+): (.+)$", line)
        if not found:
            continue
        name, status = found.group(1), found.group(2).strip()
        status = {"no tests": "not covered", "timeout": "timeout", "suspicious": "suspicious"}.get(status, status)
        if status == "killed":
            result.counts["killed"] = result.counts.get("killed", 0) + 1
            continue
        diff = subprocess.run([mutmut, "show", name], cwd=where, env=env, capture_output=True, text=True,
                              check=False).stdout
        minus, plus = _changed_lines(diff)
        match = next((e for e in equivalents if e.get("function") == _function_of(name)
                      and e.get("before", "").strip() == minus and e.get("after", "").strip() == plus), None)
        if match is not None:
            result.equivalents.append((name, diff, match["reason"]))
        else:
            result.survivors.append((f"{name} ({status})", diff))
    result.counts["total"] = len([line for line in listing.splitlines() if re.match(r"\s*\S+: ", line)])
    result.seconds = time.perf_counter() - start
    return result


def section(r: ModuleResult) -> str:
    killed = r.counts.get("killed", 0)
    lines = [
        START.format(module=r.module),
        f"## `{r.module}`",
        "",
        f"Tests: {', '.join(f'`{t}`' for t in r.tests)}. Mutants: {r.counts.get('total', 0)}; killed {killed}; "
        f"equivalent {len(r.equivalents)}; surviving {len(r.survivors)}. **Kill rate "
        f"{r.kill_rate:.1%}** (killed / (killed + surviving), equivalents excluded). "
        f"Run on {dt.date.today().isoformat()} in {r.seconds / 60:.1f} min.",
        "",
    ]
    if r.survivors:
        lines += ["Surviving mutants:", ""]
        for name, diff in r.survivors:
            lines += [f"<details><summary>{name}</summary>", "", "```diff", diff.strip(), "```", "", "</details>", ""]
    if r.equivalents:
        lines += ["Equivalent mutants (cannot change behaviour):", ""]
        for name, diff, reason in r.equivalents:
            minus, plus = _changed_lines(diff)
            lines.append(f"- `{name}`: `{minus}` → `{plus}` — {reason}")
        lines.append("")
    lines.append(END.format(module=r.module))
    return "\n".join(lines)


def write_report(results: list[ModuleResult]) -> None:
    text = REPORT.read_text(encoding="utf-8") if REPORT.exists() else (
        "# Mutation testing\n\nWritten by `make mutate` (scripts/mutate.py, mutmut). Each module's section is "
        "replaced when that module is run again.\n\n<!-- mutation:summary:start -->\n<!-- mutation:summary:end -->\n\n")
    for r in results:
        start, end = START.format(module=r.module), END.format(module=r.module)
        if start in text:
            head, rest = text.split(start, 1)
            text = head + section(r) + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + section(r) + "\n"
    rows = ["| module | mutants | killed | equivalent | surviving | kill rate |", "|---|---:|---:|---:|---:|---:|"]
    for match in re.finditer(r"## `(\S+)`\n\nTests: .*? Mutants: (\d+); killed (\d+); equivalent (\d+); surviving (\d+)\. "
                             r"\*\*Kill rate ([\d.]+%|nan%)\*\*", text):
        rows.append(f"| `{match.group(1)}` | {match.group(2)} | {match.group(3)} | {match.group(4)} | "
                    f"{match.group(5)} | {match.group(6)} |")
    head, rest = text.split("<!-- mutation:summary:start -->", 1)
    text = head + "<!-- mutation:summary:start -->\n" + "\n".join(rows) + "\n<!-- mutation:summary:end -->" + \
        rest.split("<!-- mutation:summary:end -->", 1)[1]
    atomic_write_text(REPORT, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="files to mutate, e.g. course_utils/attention.py")
    parser.add_argument("--all", action="store_true", help="every teaching module")
    parser.add_argument("--tests", nargs="+", help="the test files to run (default: the module's own)")
    parser.add_argument("--children", type=int, default=max(1, (os.cpu_count() or 2)),
                        help="mutants tested at once")
    args = parser.parse_args()
    modules = list(TEACHING) if args.all else args.modules
    if not modules:
        parser.error("name a module (e.g. course_utils/attention.py) or pass --all")
    for module in modules:
        if not (REPO / module).is_file():
            parser.error(f"no such file: {module}")
    results = []
    for module in modules:
        result = run_module(module, args.tests or tests_for(module), args.children)
        print(f"{module}: kill rate {result.kill_rate:.1%} ({result.counts.get('killed', 0)} killed, "
              f"{len(result.survivors)} surviving, {len(result.equivalents)} equivalent)")
        results.append(result)
        write_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
