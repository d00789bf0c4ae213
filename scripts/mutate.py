#!/usr/bin/env python
"""`make mutate MODULE=course_utils/attention.py`: mutation testing of one module with mutmut.

Mutation testing plants one small bug at a time in a module (a ``+`` for a ``-``, a ``<`` for a
``<=``, a constant changed, a call's argument dropped, ...) and runs the tests that cover it:
a bug the tests do not notice (a *survivor*) shows where the suite checks only that code
runs, not what it computes.

    python scripts/mutate.py course_utils/attention.py          # one module, its own tests
    python scripts/mutate.py course_utils/rl.py --tests tests/unit/test_rl.py
    python scripts/mutate.py --all                              # every teaching module
    python scripts/mutate.py course_utils/rl.py --recheck       # the last run's survivors only

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
Where a module mixes what it teaches with plumbing (argument parsing, input checks, progress
bars), ``SCOPE`` names the functions that teach, and only their mutants are run and counted;
the report section says so. A mutant that no test reaches ("not covered") counts as a survivor; one
that makes the tests run out of time (an endless loop) counts as killed, and is reported as such.

``--recheck`` re-tests only the survivors of the module's last run (kept in its scratch copy)
against the current tests, a quick check after adding a test; it prints, and writes no report.
Not part of ``make test``: a module takes minutes to an hour on 2 cores.
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
    "course_utils/datasets/translation.py": ["tests/unit/test_translation_data.py"],
    "course_utils/vit.py": ["tests/unit/test_vit.py"],
    "course_utils/inference/compiled.py": ["tests/unit/test_inference_compiled.py"],
    "course_utils/inference/flex.py": ["tests/unit/test_inference_flex.py"],
    "course_utils/inference/latent_attention.py": ["tests/unit/test_inference_latent_attention.py"],
    "course_utils/inference/linear_attention.py": ["tests/unit/test_inference_linear_attention.py"],
    "course_utils/inference/paged_cache.py": ["tests/unit/test_inference_paged_cache.py"],
    "course_utils/inference/recall.py": ["tests/unit/test_inference_recall.py"],
    "course_utils/inference/sliding_window.py": ["tests/unit/test_inference_sliding_window.py"],
    "scripts/train_distributed.py": ["tests/unit/test_train_distributed.py"],
}
# Modules where only some functions teach: their names ("function" or "Class.method"). The rest
# (argument parsing, launching, logging, corpus generation) is plumbing, not counted.
SCOPE = {
    # the data path (which samples each rank sees in each epoch) and the learning-rate schedule
    "scripts/train_distributed.py": ["rank_loader", "micro_batches", "learning_rate"],
    # tokenisation and detokenisation (the rest of the module generates and loads the corpus)
    "course_utils/datasets/translation.py": ["tokenize", "detokenize"],
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
    scope: list[str] = field(default_factory=list)  # functions run and counted; empty: all
    stale: list[dict[str, str]] = field(default_factory=list)  # listed equivalents that matched no mutant

    @property
    def kill_rate(self) -> float:
        judged = self.counts.get("killed", 0) + len(self.survivors)
        return self.counts.get("killed", 0) / judged if judged else float("nan")


def tests_for(module: str) -> list[str]:
    """The module's test files, and the ``..._behaviour.py`` file beside the first one if it exists."""
    if module in TEACHING:
        tests = list(TEACHING[module])
    else:
        tests = [f"tests/unit/test_{Path(module).stem}.py"]
        if not (REPO / tests[0]).exists():
            raise SystemExit(f"no tests known for {module}: pass --tests tests/unit/test_x.py")
    behaviour = tests[0].removesuffix(".py") + "_behaviour.py"
    if (REPO / behaviour).exists() and behaviour not in tests:
        tests.append(behaviour)
    return tests


def scratch_dir(module: str) -> Path:
    return REPO / "build" / "mutation" / module.replace("/", "_").removesuffix(".py")


def scratch_copy(module: str) -> Path:
    """A copy of the tracked source (no notebooks, reports or images) to mutate in."""
    where = scratch_dir(module)
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


def _module_name(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def scope_globs(module: str, scope: list[str]) -> list[str]:
    """mutmut's names of the mutants of ``scope``'s functions (``f`` or ``Class.method``)."""
    name = _module_name(module)
    globs = []
    for function in scope:
        cls, _, method = function.rpartition(".")
        mangled = f"xǁ{cls}ǁ{method}" if cls else f"x_{method}"
        globs.append(f"{name}.{mangled}__mutmut_*")
    return globs


def configure(where: Path, module: str, tests: list[str]) -> None:
    source_root = module.split("/", 1)[0]
    # mutmut's copy (mutants/) holds the source root and tests/; the data, scripts and the rest
    # that tests read go with them, so that no test reaches back into the working tree.
    others = sorted(p.name for p in where.iterdir() if p.is_dir() and p.name not in (source_root, "tests"))
    config = (
        "\n[tool.mutmut]\n"
        f'source_paths = ["{source_root}"]\n'
        f'only_mutate = ["{module}"]\n'
        f"also_copy = {json.dumps(others)}\n"
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


def _mutmut() -> str:
    return shutil.which("mutmut", path=str(Path(sys.executable).parent)) or "mutmut"


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    env.pop("COURSE_FAST", None)
    return env


def _statuses(where: Path, scope: list[str]) -> list[tuple[str, str]]:
    """(mutant, status) of every mutant in scope, as mutmut recorded them."""
    listing = subprocess.run([_mutmut(), "results", "--all", "true"], cwd=where, env=_env(), capture_output=True,
                             text=True, check=False).stdout
    out = []
    for line in listing.splitlines():
        found = re.match(r"\s*(\S+): (.+)$", line)
        if found and (not scope or _function_of(found.group(1)) in scope):
            out.append((found.group(1), found.group(2).strip()))
    return out


def run_module(module: str, tests: list[str], children: int) -> ModuleResult:
    import time

    start = time.perf_counter()
    scope = SCOPE.get(module, [])
    where = scratch_copy(module)
    configure(where, module, tests)
    env = _env()
    print(f"mutating {module}{' (' + ', '.join(scope) + ')' if scope else ''} with {', '.join(tests)} "
          f"({children} children) in {where.relative_to(REPO)}; mutmut's output: "
          f"{(where / 'mutmut.log').relative_to(REPO)} ...", flush=True)
    with open(where / "mutmut.log", "w", encoding="utf-8") as log:
        subprocess.run([_mutmut(), "run", "--max-children", str(children), *scope_globs(module, scope)],
                       cwd=where, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    result = ModuleResult(module, tests, scope=scope)
    equivalents = [e for e in load_equivalents() if e.get("module") == module]
    statuses = _statuses(where, scope)
    used: list[dict[str, str]] = []
    for name, status in statuses:
        status = {"no tests": "not covered"}.get(status, status)
        if status in ("killed", "timeout"):
            result.counts["killed"] = result.counts.get("killed", 0) + 1
            if status == "timeout":
                result.counts["timeout"] = result.counts.get("timeout", 0) + 1
            continue
        diff = subprocess.run([_mutmut(), "show", name], cwd=where, env=env, capture_output=True, text=True,
                              check=False).stdout
        minus, plus = _changed_lines(diff)
        match = next((e for e in equivalents if e.get("function") == _function_of(name)
                      and e.get("before", "").strip() == minus and e.get("after", "").strip() == plus), None)
        if match is not None and status == "survived":
            result.equivalents.append((name, diff, match["reason"]))
            used.append(match)
        else:
            result.survivors.append((f"{name} ({status})", diff))
    result.counts["total"] = len(statuses)
    result.stale = [e for e in equivalents if not any(e is u for u in used)
                    and (not scope or e.get("function") in scope)]
    result.seconds = time.perf_counter() - start
    return result


def recheck(module: str, tests: list[str]) -> int:
    """Re-test the last run's survivors of ``module`` against the current tests; print what still survives."""
    where = scratch_dir(module)
    mutated = where / "mutants" / module
    if not mutated.is_file():
        raise SystemExit(f"no earlier run of {module} in {where.relative_to(REPO)}: run it without --recheck first")
    if (where / module).read_bytes() != (REPO / module).read_bytes():
        raise SystemExit(f"{module} changed since its last run: run it again without --recheck")
    shutil.copytree(REPO / "tests", where / "mutants" / "tests", dirs_exist_ok=True)
    env = _env()
    survivors = [name for name, status in _statuses(where, SCOPE.get(module, [])) if status not in ("killed", "timeout")]
    equivalents = [e for e in load_equivalents() if e.get("module") == module]
    left = []
    for name in survivors:
        diff = subprocess.run([_mutmut(), "show", name], cwd=where, env=env, capture_output=True, text=True,
                              check=False).stdout
        minus, plus = _changed_lines(diff)
        if any(e.get("function") == _function_of(name) and e.get("before", "").strip() == minus
               and e.get("after", "").strip() == plus for e in equivalents):
            continue
        rc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                             *tests], cwd=where / "mutants", env={**env, "MUTANT_UNDER_TEST": name},
                            capture_output=True, check=False).returncode
        print(f"{'killed  ' if rc else 'SURVIVES'} {name}: {minus!r} -> {plus!r}", flush=True)
        if not rc:
            left.append(name)
    print(f"{module}: {len(survivors) - len(left)} of {len(survivors)} earlier survivors killed now "
          f"(equivalents listed are skipped); {len(left)} left")
    return 0


def _one_line(code: str) -> str:
    return " ⏎ ".join(code.splitlines())


def section(r: ModuleResult) -> str:
    killed = r.counts.get("killed", 0)
    timeouts = r.counts.get("timeout", 0)
    scope = (f"Scope: {', '.join(f'`{f}`' for f in r.scope)} (the functions that teach; the rest of the module "
             "is not mutated). " if r.scope else "")
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
    if scope or timeouts:
        lines += [scope + (f"{timeouts} of the killed mutants made the tests run out of time (counted as killed)."
                           if timeouts else ""), ""]
    if r.survivors:
        lines += ["Surviving mutants:", ""]
        for name, diff in r.survivors:
            lines += [f"<details><summary>{name}</summary>", "", "```diff", diff.strip(), "```", "", "</details>", ""]
    if r.equivalents:
        lines += ["Equivalent mutants (cannot change behaviour):", ""]
        for name, diff, reason in r.equivalents:
            minus, plus = _changed_lines(diff)
            lines.append(f"- `{name}`: `{_one_line(minus)}` → `{_one_line(plus)}` — {reason}")
        lines.append("")
    if r.stale:
        lines += ["Listed as equivalent in `tests/mutation_equivalents.toml` but matched by no surviving mutant "
                  "(killed now, or the line changed): remove or update these entries.", ""]
        lines += [f"- `{e['function']}`: `{_one_line(e['before'])}` → `{_one_line(e['after'])}`"
                  for e in r.stale] + [""]
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
    rows = ["| module | mutants | killed | equivalent | surviving | kill rate | run time |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for match in re.finditer(r"## `(\S+)`\n\nTests: .*? Mutants: (\d+); killed (\d+); equivalent (\d+); surviving (\d+)\. "
                             r"\*\*Kill rate ([\d.]+%|nan%)\*\*.*? in ([\d.]+ min)\.", text):
        rows.append(f"| `{match.group(1)}` | {match.group(2)} | {match.group(3)} | {match.group(4)} | "
                    f"{match.group(5)} | {match.group(6)} | {match.group(7)} |")
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
    parser.add_argument("--recheck", action="store_true",
                        help="re-test only the last run's survivors against the current tests (no report)")
    args = parser.parse_args()
    modules = list(TEACHING) if args.all else args.modules
    if not modules:
        parser.error("name a module (e.g. course_utils/attention.py) or pass --all")
    for module in modules:
        if not (REPO / module).is_file():
            parser.error(f"no such file: {module}")
    if args.recheck:
        for module in modules:
            recheck(module, args.tests or tests_for(module))
        return 0
    results = []
    for module in modules:
        result = run_module(module, args.tests or tests_for(module), args.children)
        print(f"{module}: kill rate {result.kill_rate:.1%} ({result.counts.get('killed', 0)} killed, "
              f"{len(result.survivors)} surviving, {len(result.equivalents)} equivalent) "
              f"in {result.seconds / 60:.1f} min")
        results.append(result)
        write_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
