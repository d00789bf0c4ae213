#!/usr/bin/env python
"""`make gpu-check`: everything the course does only on a CUDA GPU, in one run of at most 8 minutes.

    python scripts/gpu_check.py              # all stages
    python scripts/gpu_check.py --only tests notebooks

Stages, in order (each with its own time limit inside the 8-minute budget; no internet needed):

1. ``tests``      the tests marked ``gpu`` (``tests/gpu/``): the Triton kernel compiled for this GPU
                  against SDPA in fp16 and bf16, CUDA-event timing, one fp16 GradScaler step and
                  one bf16 autocast step, ``amp_dtype`` on this card;
2. ``notebooks``  notebooks 00, 08 and 15 in fast mode on the GPU, under nbval;
3. ``bench``      ``benchmarks/bench_attention.py --device cuda``, which writes
                  ``benchmarks/results/attention_cuda.json``; its summary must carry
                  :data:`REQUIRED_SUMMARY_KEYS`; then ``benchmarks/bench_inference.py --device
                  cuda`` in the stage's time left, merged into the same summary;
4. ``torchrun``   a 1-GPU ``torchrun`` job with NCCL (``scripts/train_distributed.py``).

Without a CUDA GPU it says so in one line and exits 0. With one, it prints a table of the stages
and writes ``reports/gpu_check.json`` and ``reports/gpu_check.md`` (the GPU section of the
reports), and exits 1 if any stage failed.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BUDGET_S = 8 * 60
NOTEBOOKS = ["notebooks/00_setup_gpu_and_timing.ipynb", "notebooks/08_efficient_attention.ipynb",
             "notebooks/15_scaling_out.ipynb"]
REQUIRED_SUMMARY_KEYS = ("triton_over_sdpa_time_n4096_fp16", "tiled_over_sdpa_time_n4096",
                         "kv_cache_speedup_1024", "sdpa_tflops_n4096_fp16")
INFERENCE_SUMMARY_KEYS = ("flex_window_over_sdpa_time_n4096", "compiled_tiled_over_sdpa_time_n4096",
                          "paged_over_contiguous_decode_step")
STAGE_LIMITS_S = {"tests": 60, "notebooks": 180, "bench": 150, "torchrun": 75}  # 465 s of the 480


@dataclass
class Stage:
    name: str
    ok: bool
    seconds: float
    detail: str
    output_tail: str = field(default="", repr=False)


def no_gpu_line() -> str | None:
    """The one line to print when there is no CUDA GPU (None when there is one)."""
    import torch

    if torch.cuda.is_available():
        return None
    build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    return f"gpu-check: no CUDA GPU on this machine (torch {torch.__version__}, {build}); nothing to check."


def missing_summary_keys(result_file: Path) -> list[str]:
    """The required summary keys that ``result_file`` (a bench_attention JSON) lacks, or names the problem.

    >>> missing_summary_keys(Path("/nonexistent.json"))
    ['/nonexistent.json was not written']
    """
    if not result_file.is_file():
        return [f"{result_file} was not written"]
    try:
        summary = json.loads(result_file.read_text(encoding="utf-8")).get("summary", {})
    except ValueError as exc:
        return [f"{result_file} is not valid JSON ({exc})"]
    return [k for k in REQUIRED_SUMMARY_KEYS if not isinstance(summary.get(k), (int, float))]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "offline"), str(REPO)]),
               MPLBACKEND="Agg", TQDM_DISABLE="1")
    env.pop("TRITON_INTERPRET", None)  # compiled kernels, not the CPU interpreter
    env.pop("COURSE_DEVICE", None)
    return env


def _run(name: str, cmd: list[str], limit_s: float, env: dict[str, str] | None = None) -> tuple[bool, str, float]:
    from course_utils.process_guard import ProcessTreeTimeout, run_process_tree

    start = time.perf_counter()
    try:
        result = run_process_tree(cmd, timeout=limit_s, env=env or _env(), cwd=REPO)
    except ProcessTreeTimeout:
        return False, f"timed out after {limit_s:.0f} s", time.perf_counter() - start
    text = (result.stdout + "\n" + result.stderr).strip()
    return result.returncode == 0, text, time.perf_counter() - start


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


def stage_tests(limit_s: float) -> Stage:
    ok, out, t = _run("tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs",
                                "tests/gpu"], limit_s)
    return Stage("tests", ok, t, _last_line(out), out[-4000:])


def stage_notebooks(limit_s: float) -> Stage:
    env = _env() | {"COURSE_FAST": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
           "--nbval-sanitize-with", "tests/nbval_sanitize.cfg", *NOTEBOOKS]
    ok, out, t = _run("notebooks", cmd, limit_s, env)
    return Stage("notebooks", ok, t, _last_line(out), out[-4000:])


def stage_bench(limit_s: float) -> Stage:
    result_file = REPO / "benchmarks" / "results" / "attention_cuda.json"
    ok, out, t = _run("bench", [sys.executable, "benchmarks/bench_attention.py", "--device", "cuda"], limit_s)
    if not ok:
        return Stage("bench", False, t, _last_line(out), out[-4000:])
    missing = missing_summary_keys(result_file)
    if missing:
        return Stage("bench", False, t, f"attention_cuda.json lacks summary keys: {', '.join(missing)}", out[-4000:])
    # the long-context benchmark (FlexAttention, compiled tiled attention, paged cache) in the time
    # left, merged into attention_cuda.json's summary as make bench does on a CPU
    ok, out2, t2 = _run("bench", [sys.executable, "benchmarks/bench_inference.py", "--device", "cuda"],
                        max(limit_s - t, 1.0))
    if not ok:
        return Stage("bench", False, t + t2, "bench_inference.py: " + _last_line(out2), out2[-4000:])
    from benchmarks.run_all import merge_summaries

    merge_summaries("cuda")
    summary = json.loads(result_file.read_text(encoding="utf-8"))["summary"]
    keys = (*REQUIRED_SUMMARY_KEYS, *INFERENCE_SUMMARY_KEYS)
    return Stage("bench", True, t + t2, ", ".join(f"{k} = {summary.get(k)}" for k in keys), (out + out2)[-4000:])


def stage_torchrun(limit_s: float) -> Stage:
    from course_utils.distributed import launch_plan, run_torchrun

    plan = launch_plan(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "run.json"
        try:
            result = run_torchrun(plan, REPO / "scripts" / "train_distributed.py",
                                  ["--steps", "60", "--batch-size", "64", "--log-every", "20", "--amp",
                                   "--log-json", str(log)], timeout=limit_s, cwd=REPO)
        except Exception as exc:
            return Stage("torchrun", False, time.perf_counter() - start, f"{type(exc).__name__}: {str(exc)[-300:]}",
                         str(exc)[-4000:])
        run = json.loads(log.read_text(encoding="utf-8"))
    ok = run["backend"] == "nccl" and run["device"] == "cuda" and run["world_size"] == 1
    detail = (f"{plan}; backend {run['backend']}, device {run['device']}, "
              f"{run['throughput_samples_per_s']:.0f} samples/s, test accuracy {run['test_accuracy']:.3f}")
    return Stage("torchrun", ok, time.perf_counter() - start, detail, result.stdout[-4000:])


STAGES = {"tests": stage_tests, "notebooks": stage_notebooks, "bench": stage_bench, "torchrun": stage_torchrun}


def write_reports(stages: list[Stage], info: dict) -> None:
    from course_utils.files import atomic_write_json, atomic_write_text

    reports = REPO / "reports"
    data = {"machine": info, "stages": [asdict(s) for s in stages]}
    atomic_write_json(reports / "gpu_check.json", data)
    lines = [
        "# GPU check",
        "",
        f"`make gpu-check` on {info['gpu']} (compute capability {info['capability']}, {info['gpu_memory_gib']} GiB), "
        f"torch {info['torch']}, CUDA {info['cuda']}, {info['timestamp']}. Total {info['total_s']:.0f} s "
        f"(budget {BUDGET_S} s).",
        "",
        "| stage | result | time | detail |",
        "|---|---|---:|---|",
        *[f"| {s.name} | {'ok' if s.ok else 'FAILED'} | {s.seconds:.0f} s | {s.detail.replace('|', '/')} |" for s in stages],
        "",
    ]
    atomic_write_text(reports / "gpu_check.md", "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(STAGES), default=list(STAGES), help="run only these stages")
    parser.add_argument("--no-reports", action="store_true", help="do not write reports/gpu_check.*")
    args = parser.parse_args(argv)
    line = no_gpu_line()
    if line is not None:
        print(line)
        return 0

    import torch

    props = torch.cuda.get_device_properties(0)
    info = {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1), "gpus": torch.cuda.device_count(),
            "torch": str(torch.__version__), "cuda": torch.version.cuda, "python": platform.python_version(),
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    print(f"gpu-check on {info['gpu']} (compute capability {info['capability']}), torch {info['torch']}; "
          f"budget {BUDGET_S} s", flush=True)
    start = time.perf_counter()
    stages: list[Stage] = []
    for name in args.only:
        left = BUDGET_S - (time.perf_counter() - start)
        if left < 20:
            stages.append(Stage(name, False, 0.0, "skipped: the 8-minute budget is spent"))
            continue
        print(f"== {name} (limit {min(STAGE_LIMITS_S[name], left):.0f} s)", flush=True)
        stage = STAGES[name](min(STAGE_LIMITS_S[name], left))
        stages.append(stage)
        print(f"   {'ok' if stage.ok else 'FAILED'} in {stage.seconds:.0f} s: {stage.detail}", flush=True)
        if not stage.ok and stage.output_tail:
            print("   " + stage.output_tail[-2500:].replace("\n", "\n   "), flush=True)
    info["total_s"] = round(time.perf_counter() - start, 1)
    width = max(len(s.name) for s in stages)
    print(f"\n{'stage':<{width}}  result  time")
    for s in stages:
        print(f"{s.name:<{width}}  {'ok' if s.ok else 'FAILED':<6}  {s.seconds:4.0f} s  {s.detail}")
    print(f"total {info['total_s']:.0f} s of {BUDGET_S} s")
    if not args.no_reports:
        write_reports(stages, info)
        print("wrote reports/gpu_check.json and reports/gpu_check.md")
    return 0 if all(s.ok for s in stages) else 1


if __name__ == "__main__":
    sys.exit(main())
