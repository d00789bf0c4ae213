"""Tune the visual-question-answering models of `course_utils.vqa` on the validation splits
(never on test), over several seeds.

The tuning table for notebook 13 (visual question answering): every model (the blind and pooled
baselines included) is trained with the notebook's budget (:data:`course_utils.vqa.SETTINGS`)
at each learning rate, for each seed, and scored on the validation split of its dataset
(easy-VQA: every tenth training image; relational: a generated split of its own). The table
gives the mean ± standard deviation over the seeds, and the learning rate each model keeps
(the best mean). Two trainings run at a time, one process and one thread per core, as in the
notebook.

    python scripts/tune_vqa_baselines.py                          # the whole table
    python scripts/tune_vqa_baselines.py --dataset relational --models concat product attention-2
    python scripts/tune_vqa_baselines.py --lrs 1e-3 2e-3 3e-3 --seeds 0 1 2
    python scripts/tune_vqa_baselines.py --dataset relational --models attention-2 --lrs 3e-3 \
        --steps 4000 --per-kind                                   # twice the budget, per kind
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from course_utils.vqa import (  # noqa: E402
    SETTINGS,
    VQAJob,
    evaluate,
    load_datasets,
    settings_job,
    train_jobs,
)

LRS = (1e-3, 3e-3)
SEEDS = (0, 1)


def jobs_for(dataset: str, models: list[str], lrs: list[float], seeds: list[int],
             steps: int | None = None) -> list[VQAJob]:
    """One job per (model, learning rate, seed), with the notebook's settings otherwise."""
    return [dataclasses.replace(settings_job(dataset, name, seed=seed, lr=lr, steps=steps),
                                name=f"{dataset}|{name}|{lr:g}|{seed}")
            for name in models for lr in lrs for seed in seeds]


def table(results: dict[str, float]) -> str:
    """``model  lr  mean ± sd (n seeds)`` rows, and each model's best learning rate."""
    groups: dict[tuple[str, str, float], list[float]] = {}
    for key, acc in results.items():
        dataset, name, lr, _ = key.split("|")
        groups.setdefault((dataset, name, float(lr)), []).append(acc)
    lines, best = [], {}
    for (dataset, name, lr), accs in sorted(groups.items()):
        mean = statistics.mean(accs)
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"{dataset:11s} {name:18s} lr {lr:<7g} valid accuracy {100 * mean:5.1f} ± {100 * sd:4.1f} %"
                     f"  ({len(accs)} seeds)")
        if mean > best.get((dataset, name), (None, -1.0))[1]:
            best[(dataset, name)] = (lr, mean)
    lines.append("")
    lines += [f"best: {dataset:11s} {name:18s} lr {lr:g} ({100 * mean:.1f} %)"
              for (dataset, name), (lr, mean) in sorted(best.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=[*SETTINGS, "both"], default="both")
    parser.add_argument("--models", nargs="*", default=None, help="default: every model of the notebook")
    parser.add_argument("--lrs", nargs="*", type=float, default=list(LRS))
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None,
                        help="default: the notebook's budget (another budget: a smoke test, or a longer run)")
    parser.add_argument("--per-kind", action="store_true", help="also print each run's accuracy per question kind")
    args = parser.parse_args(argv)
    datasets = list(SETTINGS) if args.dataset == "both" else [args.dataset]
    torch.set_num_threads(1)
    start = time.perf_counter()
    splits = {name: load_datasets(name) for name in datasets}
    jobs = [job for name in datasets
            for job in jobs_for(name, args.models or list(SETTINGS[name]["models"]), args.lrs, args.seeds,
                            args.steps)]
    print(f"{len(jobs)} trainings on {', '.join(datasets)}", flush=True)
    trained = train_jobs(jobs, {name: s["train"] for name, s in splits.items()}, workers=args.processes)
    scores = {key: evaluate(t.model, splits[key.split("|")[0]]["valid"], keep_maps=False)
              for key, t in trained.items()}
    print(table({key: r["accuracy"] for key, r in scores.items()}))
    if args.per_kind:
        print()
        for key, r in scores.items():
            print(f"{key:40s} valid " + ", ".join(f"{k} {100 * a:.1f} %" for k, a in r["per_kind"].items()))
    print(f"\n{time.perf_counter() - start:.0f} s in all", flush=True)


if __name__ == "__main__":
    main()
