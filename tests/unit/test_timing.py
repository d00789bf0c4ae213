from __future__ import annotations

import time

import pytest
import torch

from course_utils import benchmark, compare
from course_utils.timing import BenchmarkResult, CudaTimer, _format_seconds


def test_benchmark_measures_a_known_sleep():
    result = benchmark(time.sleep, 0.002, label="sleep 2 ms", min_run_time=0.05, warmup=1)
    assert 0.0019 < result.median < 0.01  # sleep never returns early; the upper bound is generous
    assert result.runs >= 7 and result.iqr >= 0  # at least min_blocks blocks, even for a slow call
    assert "sleep 2 ms: median" in repr(result)


def test_benchmark_uses_all_threads_by_default():
    result = benchmark(torch.mm, torch.ones(8, 8), torch.ones(8, 8), min_run_time=0.01)
    assert result.num_threads == torch.get_num_threads()
    assert benchmark(torch.mm, torch.ones(8, 8), torch.ones(8, 8), num_threads=1, min_run_time=0.01).num_threads == 1


def test_benchmark_warms_up_before_timing():
    calls = []
    benchmark(lambda: calls.append(1), warmup=3, min_run_time=0.01)
    assert len(calls) > 3


def test_benchmark_rejects_bad_input():
    with pytest.raises(TypeError, match="callable"):
        benchmark(42)
    with pytest.raises(ValueError, match="min_run_time must be > 0"):
        benchmark(lambda: None, min_run_time=0)


def test_compare_ratios_and_baseline():
    a = BenchmarkResult("a", 1e-3, 0, 1e-3, 5, 2)
    b = BenchmarkResult("b", 3e-3, 0, 3e-3, 5, 2)
    table = compare([a, b], baseline="b")
    rows = table.splitlines()
    assert rows[0].endswith("× b")
    assert rows[1].split()[-1] == "0.33" and rows[2].split()[-1] == "1.00"
    with pytest.raises(ValueError, match="baseline 'c' is not among"):
        compare([a, b], baseline="c")
    with pytest.raises(ValueError, match="empty"):
        compare([])


def test_format_seconds():
    assert _format_seconds(2.5e-9) == "2.5 ns"
    assert _format_seconds(1.0) == "1 s"


def test_cuda_timer_without_gpu_explains(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU.*benchmark"):
        CudaTimer()


def test_slow_function_still_gets_enough_blocks():
    result = benchmark(time.sleep, 0.03, min_run_time=0.01, warmup=0, min_blocks=5)
    assert result.runs == 5 and result.median >= 0.03
