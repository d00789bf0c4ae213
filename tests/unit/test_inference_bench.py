"""benchmarks/bench_inference.py: its paged-vs-contiguous step computes the same attention, and its
summary keys never collide with bench_attention's (run_all.py merges them into one file)."""

from __future__ import annotations

import importlib.util

import torch
from conftest import REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paged_and_contiguous_steps_agree_and_are_timed():
    bench = _load("bench_inference")
    lengths = bench.help_topic_lengths(5, cap=300)
    assert len(lengths) == 5 and lengths == sorted(lengths) and max(lengths) <= 300
    row = bench.bench_paged(torch.device("cpu"), torch.float32, lengths, rounds=1, min_run_time=0.01)
    assert row["max_abs_err_paged_vs_contiguous"] <= 1e-6
    assert set(row["median_s"]) == {"contiguous", "paged"} and min(row["median_s"].values()) > 0


def test_summary_keys_are_its_own():
    inference, attention = _load("bench_inference"), _load("bench_attention")
    assert not set(inference.TARGETS) & set(attention.TARGETS)
    run_all = _load("run_all")
    assert "inference" in run_all.MERGE_INTO_ATTENTION
