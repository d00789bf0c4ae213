#!/usr/bin/env python
"""Weak scaling of DDP training: throughput with 1, 2, … processes at a fixed batch per process.

    python benchmarks/bench_scaling.py                 # CPU: 1 and 2 processes; GPUs: 1..N GPUs
    python benchmarks/bench_scaling.py --repeats 1     # quicker, noisier

Each configuration runs ``scripts/train_distributed.py`` under ``torchrun`` (the same code a
learner runs), as :func:`course_utils.distributed.launch_plan` says for *n* ranks on this
machine, and reads the throughput it reports (samples/s over all processes, warm-up steps left
out). On a CPU each process gets one thread (``OMP_NUM_THREADS=1``), so *n* processes use *n*
cores: weak scaling per core. On GPUs each process drives one GPU with NCCL (1..number of GPUs).

Weak-scaling efficiency with n processes = throughput(n) / (n × throughput(1)): 1.0 means n
processes do n times the work in the same time; the rest is communication and contention.

Writes ``benchmarks/results/scaling_<device>.json`` with a top-level ``"summary"``:
``throughput_1proc``, ``throughput_2proc``, ``weak_scaling_efficiency_2proc`` (and the same for
every n measured).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
from course_utils.distributed import launch_plan, run_torchrun  # noqa: E402
from course_utils.files import atomic_write_json  # noqa: E402

SCRIPT = REPO / "scripts" / "train_distributed.py"


def run_once(nproc: int, args: argparse.Namespace, measure_comm: bool) -> dict:
    plan = launch_plan(nproc, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "run.json"
        script_args = ["--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
                       "--batch-size", str(args.batch_size), "--log-every", str(args.steps), "--log-json", str(log)]
        if measure_comm:
            script_args += ["--measure-comm", "10"]
        run_torchrun(plan, SCRIPT, script_args, timeout=args.timeout, cwd=REPO)  # every process ends with it
        return json.loads(log.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64, help="per process (weak scaling)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration; the median counts")
    parser.add_argument("--max-procs", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: what launch_plan picks (the GPUs when there are any)")
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/scaling_<device>.json")
    args = parser.parse_args()

    plan = launch_plan(device=args.device)  # all GPUs, or 2 CPU processes
    device = plan.device
    if device == "cuda":  # 1..number of GPUs, one process per GPU
        max_procs = min(args.max_procs or plan.nproc, plan.nproc)
    else:  # 1 and 2 CPU processes (up to the number of cores with --max-procs)
        max_procs = max(2, min(args.max_procs or 2, os.cpu_count() or 2))
    procs = list(range(1, max_procs + 1))
    args.device = device
    print(plan)
    print(f"weak scaling on {device}: {procs} process(es), batch {args.batch_size} per process, "
          f"{args.steps} steps ({args.warmup_steps} warm-up), {args.repeats} repeat(s)", flush=True)

    runs, throughput = [], {}
    for n in procs:
        values = []
        for r in range(args.repeats):
            result = run_once(n, args, measure_comm=(n > 1 and r == 0))
            values.append(result["throughput_samples_per_s"])
            runs.append({"nproc": n, "repeat": r, "throughput_samples_per_s": result["throughput_samples_per_s"],
                         "backend": result["backend"], "threads_per_process": result["threads_per_process"],
                         "comm": result["comm"]})
            print(f"  {n} process(es), run {r + 1}: {values[-1]:.0f} samples/s", flush=True)
        throughput[n] = statistics.median(values)

    summary: dict[str, float | str] = {}
    for n in procs:
        summary[f"throughput_{n}proc"] = round(throughput[n], 1)
        if n > 1:
            summary[f"weak_scaling_efficiency_{n}proc"] = round(throughput[n] / (n * throughput[1]), 3)
    comm = next((r["comm"] for r in runs if r["comm"]), {})
    if comm:
        summary["comm_share_2proc"] = round(comm["comm_share"], 3)
    summary["unit"] = "samples/s (all processes together)"
    out = {
        "summary": summary,
        "device": device,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"
        + (f", {torch.cuda.device_count()}× {torch.cuda.get_device_name(0)}" if device == "cuda" else ""),
        "torch": str(torch.__version__),
        "model": "course ViT (dim 64, depth 2, 4 heads, patch 2) on 8×8 digits",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": runs,
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = args.output or HERE / "results" / f"scaling_{device}.json"
    atomic_write_json(path, out)
    print("\n" + "\n".join(f"{k:32s} {v}" for k, v in summary.items()))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
