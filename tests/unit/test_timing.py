from __future__ import annotations

import math
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
    with pytest.raises(ValueError, match=r"min_run_time must be a real number in \(0.0, inf\)"):
        benchmark(lambda: None, min_run_time=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"min_run_time": math.inf}, "min_run_time"),  # Timer would time blocks forever
    ({"min_run_time": math.nan}, "min_run_time"),
    ({"warmup": -1}, "warmup"),
    ({"min_blocks": 0}, "min_blocks"),
    ({"num_threads": 0}, "num_threads"),
])
def test_benchmark_refuses_bad_settings_at_once(kwargs, message):
    with pytest.raises(ValueError, match=message):
        benchmark(lambda: None, **kwargs)


def test_benchmark_names_the_arguments_fn_failed_on():
    with pytest.raises(ValueError, match=r"args\[1\]=str 'x'") as info:
        benchmark(torch.add, torch.ones(2), "x", min_run_time=0.01)
    assert isinstance(info.value.__cause__, TypeError)  # torch's own error stays attached


def test_profile_table_checks_its_arguments():
    from course_utils.timing import profile_table

    with pytest.raises(ValueError, match="sort_by must be one of"):
        profile_table(lambda: None, sort_by="fastest")
    with pytest.raises(ValueError, match="row_limit"):
        profile_table(lambda: None, row_limit=0)
    with pytest.raises(TypeError, match="fn must be a callable"):
        profile_table("x")


def test_compare_ratios_and_baseline():
    a = BenchmarkResult("a", 1e-3, 0, 1e-3, 5, 2)
    b = BenchmarkResult("b", 3e-3, 0, 3e-3, 5, 2)
    table = compare([a, b], baseline="b")
    rows = table.splitlines()
    assert rows[0].endswith("× b")
    assert rows[1].split()[-1] == "0.33" and rows[2].split()[-1] == "1.00"
    with pytest.raises(ValueError, match="baseline 'c' is not among"):
        compare([a, b], baseline="c")
    with pytest.raises(ValueError, match="results must hold at least one"):
        compare([])
    with pytest.raises(TypeError, match="results must be a list"):
        compare("ab")
    with pytest.raises(ValueError, match="baseline '' is not among"):
        compare([a, b], baseline="")


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


class _FakeTimer:
    """Stands in for torch.utils.benchmark.Timer: each timeit(1) returns the next scripted time."""

    scripts: dict = {}

    def __init__(self, stmt, globals, num_threads):
        self.fn = globals["fn"]

    def timeit(self, number):
        from types import SimpleNamespace

        return SimpleNamespace(median=next(_FakeTimer.scripts[self.fn]))


def _scripted(monkeypatch, times_a, times_b):
    import itertools

    from course_utils import timing

    def fn_a():
        return None

    def fn_b():
        return None

    _FakeTimer.scripts = {fn_a: itertools.cycle(times_a), fn_b: itertools.cycle(times_b)}
    monkeypatch.setattr(timing.torch_benchmark, "Timer", _FakeTimer)
    return fn_a, fn_b


def test_paired_comparison_stops_as_soon_as_the_interval_separates(monkeypatch):
    from course_utils.timing import compare_until_separated

    fn_a, fn_b = _scripted(monkeypatch, [1.0, 1.1, 0.9, 1.05], [0.8, 0.88, 0.72, 0.84])
    result = compare_until_separated(fn_a, fn_b, "fp32", "bf16", min_rounds=10, max_rounds=100, warmup=0)
    assert result.rounds == 10 and result.separated and result.ratio == pytest.approx(0.8)
    assert result.verdict.startswith("bf16 is faster") and "excludes 1" in str(result)


def test_paired_comparison_says_within_noise_when_it_never_separates(monkeypatch):
    from course_utils.timing import compare_until_separated

    # b is faster in half the rounds and slower in the other half by the same factor
    fn_a, fn_b = _scripted(monkeypatch, [1.0, 1.0, 1.0, 1.0], [0.7, 1.3, 1.3, 0.7])
    result = compare_until_separated(fn_a, fn_b, "fp32", "bf16", min_rounds=10, max_rounds=40, warmup=0)
    assert result.rounds == 40 and not result.separated
    assert result.low < 1 < result.high and result.verdict.startswith("within noise")


def test_paired_comparison_checks_its_arguments():
    from course_utils.timing import compare_until_separated

    with pytest.raises(TypeError, match="fn_b must be a callable"):
        compare_until_separated(lambda: None, 3)
    with pytest.raises(ValueError, match="max_rounds must be an int >= min_rounds"):
        compare_until_separated(lambda: None, lambda: None, min_rounds=10, max_rounds=5)
