"""Timing done right: warm up, synchronise the GPU, repeat, report the median and spread.

``benchmark`` wraps ``torch.utils.benchmark.Timer``, which already does the hard parts
(it synchronises CUDA around each measurement, runs blocks of calls so the timer's own
cost disappears, and fixes the thread count). We add a warm-up, a result with median and
interquartile range (IQR), and a side-by-side table with ratios.

Why not ``time.time()`` around a call? On a GPU, kernels are launched asynchronously: the
call returns as soon as the work is *queued*, so the clock measures the launch, not the
work. Notebook 00 shows the mistake and its fix.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .checks import (
    check_callable,
    check_device,
    check_instance,
    check_one_of,
    check_optional_sizes,
    check_real,
    check_sizes,
    describe,
)

# torch.utils.benchmark imports torch.utils.cpp_extension, which logs a warning on machines that
# have a CUDA toolkit installed but no GPU. It says nothing about timing, so keep it out of the
# notebooks' outputs; real errors still show.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
import torch.utils.benchmark as torch_benchmark  # noqa: E402


def _format_seconds(seconds: float) -> str:
    """Seconds in the unit that reads best.

    >>> _format_seconds(0.0000123), _format_seconds(0.0123), _format_seconds(12.3)
    ('12.3 µs', '12.3 ms', '12.3 s')
    """
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


@dataclass(frozen=True)
class BenchmarkResult:
    """The outcome of ``benchmark``: times in seconds, and the measurement it came from."""

    label: str
    median: float
    iqr: float
    mean: float
    runs: int
    num_threads: int
    measurement: torch_benchmark.Measurement | None = None

    def __repr__(self) -> str:
        return (
            f"{self.label}: median {_format_seconds(self.median)} "
            f"(IQR {_format_seconds(self.iqr)}, {self.runs} runs, {self.num_threads} threads)"
        )


def _call(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """``fn(*args, **kwargs)``; if that fails, a ``ValueError`` that shows what ``fn`` was given
    (the original error stays attached as its cause)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        given = ", ".join([*(f"args[{i}]={describe(a)}" for i, a in enumerate(args)),
                           *(f"{k}={describe(v)}" for k, v in kwargs.items())])
        name = getattr(fn, "__name__", type(fn).__name__)
        raise _first_call_error(exc, f"fn(*args, **kwargs) failed on its first call, before any "
                                     f"timing: {name}({given}) raised {type(exc).__name__}: {exc}") from exc


def _first_call_error(exc: Exception, message: str) -> ValueError:
    """A ``ValueError`` that is also of ``exc``'s type when the two combine, so that code which
    catches what ``fn`` raises (``except RuntimeError`` around an unavailable kernel) still does."""
    try:
        return type(f"FirstCall{type(exc).__name__}", (ValueError, type(exc)), {})(message)
    except TypeError:  # exc is a ValueError already, or a type that cannot be combined
        return ValueError(message)


def benchmark(
    fn: Callable[..., Any],
    *args: Any,
    label: str | None = None,
    num_threads: int | None = None,
    min_run_time: float = 0.2,
    warmup: int = 2,
    min_blocks: int = 7,
    **kwargs: Any,
) -> BenchmarkResult:
    """Time ``fn(*args, **kwargs)``: warm-up calls, then ``torch.utils.benchmark.Timer``.

    ``num_threads`` defaults to ``torch.get_num_threads()`` (``Timer`` alone would use 1).
    CUDA work is synchronised by ``Timer`` itself. ``Timer`` times blocks of calls; the median
    and IQR are over at least ``min_blocks`` blocks (``runs`` counts them). When the first
    warm-up call fails, a ``ValueError`` shows what ``fn`` was given (the error as its cause).

    >>> x = torch.randn(64, 64)
    >>> result = benchmark(torch.mm, x, x, label="matmul 64", min_run_time=0.01)
    >>> result.label, result.median > 0
    ('matmul 64', True)
    """
    check_callable("fn", fn)
    check_real("min_run_time", min_run_time, 0.0, low_open=True)
    check_sizes(0, warmup=warmup)
    check_sizes(min_blocks=min_blocks)
    check_optional_sizes(num_threads=num_threads)
    threads = num_threads if num_threads is not None else torch.get_num_threads()
    label = label or getattr(fn, "__name__", "fn")
    if warmup:
        _call(fn, args, kwargs)  # the first call: if it fails, say what fn was given
    for _ in range(warmup - 1):
        fn(*args, **kwargs)
    timer = torch_benchmark.Timer(
        stmt="fn(*args, **kwargs)",
        globals={"fn": fn, "args": args, "kwargs": kwargs},
        num_threads=threads,
        label=label,
    )
    m = timer.blocked_autorange(min_run_time=min_run_time)
    # A median and an IQR need several blocks: slow functions fill min_run_time with one or two,
    # so time more blocks of the same size until there are min_blocks.
    extra = [timer.timeit(m.number_per_run) for _ in range(max(0, min_blocks - len(m.times)))]
    if extra:
        m = torch_benchmark.Measurement.merge([m, *extra])[0]
    return BenchmarkResult(
        label=label,
        median=m.median,
        iqr=m.iqr,
        mean=m.mean,
        runs=len(m.times),
        num_threads=threads,
        measurement=m,
    )


def compare(results: Sequence[BenchmarkResult], baseline: str | None = None) -> str:
    """A side-by-side table of results, with each one's time as a ratio of the baseline's.

    The baseline is the result labelled ``baseline`` (default: the first).

    >>> a = BenchmarkResult("torch", median=1e-3, iqr=1e-5, mean=1e-3, runs=10, num_threads=2)
    >>> b = BenchmarkResult("ours", median=2e-3, iqr=2e-5, mean=2e-3, runs=10, num_threads=2)
    >>> print(compare([a, b]))
    name   median    IQR       runs  × torch
    torch  1 ms      10 µs       10     1.00
    ours   2 ms      20 µs       10     2.00
    """
    _check_results(results)
    by_label = {r.label: r for r in results}
    base_label = results[0].label if baseline is None else baseline
    if base_label not in by_label:
        raise ValueError(f"baseline {base_label!r} is not among the labels {list(by_label)}")
    base = by_label[base_label].median
    width = max(len("name"), *(len(r.label) for r in results))
    lines = [f"{'name':<{width}}  {'median':<8}  {'IQR':<8}  {'runs':>4}  × {base_label}"]
    for r in results:
        lines.append(
            f"{r.label:<{width}}  {_format_seconds(r.median):<8}  {_format_seconds(r.iqr):<8}  "
            f"{r.runs:>4}  {r.median / base:>7.2f}"
        )
    return "\n".join(lines)


def _check_results(results: Any) -> None:
    """A non-empty list of ``BenchmarkResult``."""
    if isinstance(results, (str, bytes)) or not isinstance(results, Sequence):
        raise TypeError(f"results must be a list of BenchmarkResult (from benchmark), got "
                        f"{describe(results)}")
    if not results:
        raise ValueError("results must hold at least one BenchmarkResult, got an empty list")
    for i, r in enumerate(results):
        check_instance(f"results[{i}]", r, BenchmarkResult)


@dataclass(frozen=True)
class PairedComparison:
    """Two functions timed in alternating rounds: the ratio of their times and how sure we are of it.

    ``ratio`` is the median over rounds of ``time(b) / time(a)`` (each round times both, so load
    that comes and goes hits them alike); ``low``/``high`` bound it with 95 % confidence (a
    bootstrap over the rounds). ``separated`` says whether the interval excludes 1.
    """

    label_a: str
    label_b: str
    ratio: float
    low: float
    high: float
    rounds: int
    median_a: float
    median_b: float

    @property
    def separated(self) -> bool:
        return self.high < 1.0 or self.low > 1.0

    @property
    def verdict(self) -> str:
        if not self.separated:
            return f"within noise: the 95 % interval [{self.low:.2f}, {self.high:.2f}] contains 1"
        faster = self.label_b if self.ratio < 1 else self.label_a
        return f"{faster} is faster: the 95 % interval [{self.low:.2f}, {self.high:.2f}] excludes 1"

    def __str__(self) -> str:
        return (f"{self.label_a}: median {_format_seconds(self.median_a)}, {self.label_b}: median "
                f"{_format_seconds(self.median_b)}; {self.label_b} / {self.label_a} = {self.ratio:.2f} over "
                f"{self.rounds} paired rounds — {self.verdict}")


def _ratio_interval(ratios: Sequence[float], seed: int = 0, resamples: int = 2000) -> tuple[float, float]:
    """95 % bootstrap interval of the median of ``ratios`` (seeded: the same data give the same interval)."""
    import numpy as np

    r = np.asarray(ratios, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(r[rng.integers(0, len(r), size=(resamples, len(r)))], axis=1)
    low, high = np.quantile(medians, [0.025, 0.975])
    return float(low), float(high)


def compare_until_separated(
    fn_a: Callable[[], Any],
    fn_b: Callable[[], Any],
    label_a: str = "a",
    label_b: str = "b",
    min_rounds: int = 10,
    max_rounds: int = 200,
    max_seconds: float = 60.0,
    warmup: int = 2,
) -> PairedComparison:
    """Time ``fn_a`` and ``fn_b`` in alternating rounds until the ratio's 95 % interval excludes 1.

    Each round times one call of each (``torch.utils.benchmark.Timer``, which synchronises CUDA),
    in alternating order (a b, b a, ...) so that a slow drift of the machine cancels. After
    ``min_rounds`` the interval is recomputed every 5 rounds; the comparison stops as soon as it
    separates, or at ``max_rounds`` / ``max_seconds``, whichever comes first — then the answer
    may well be "within noise", which is an answer too.

    >>> cheap = lambda: torch.ones(64, 64) @ torch.ones(64, 64)
    >>> dear = lambda: torch.ones(256, 256) @ torch.ones(256, 256)
    >>> result = compare_until_separated(cheap, dear, "64", "256", min_rounds=10, max_seconds=5)
    >>> result.separated and result.ratio > 1
    True
    """
    for name, fn in (("fn_a", fn_a), ("fn_b", fn_b)):
        if not callable(fn):
            raise TypeError(f"{name} must be a callable taking no arguments, got {type(fn).__name__}")
    if isinstance(min_rounds, bool) or not isinstance(min_rounds, int) or min_rounds < 3:
        raise ValueError(f"min_rounds must be an int >= 3, got {min_rounds!r}")
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < min_rounds:
        raise ValueError(f"max_rounds must be an int >= min_rounds ({min_rounds}), got {max_rounds!r}")
    check_real("max_seconds", max_seconds, 0.0, low_open=True)
    check_sizes(0, warmup=warmup)
    for _ in range(warmup):
        fn_a()
        fn_b()
    timers = {
        "a": torch_benchmark.Timer(stmt="fn()", globals={"fn": fn_a}, num_threads=torch.get_num_threads()),
        "b": torch_benchmark.Timer(stmt="fn()", globals={"fn": fn_b}, num_threads=torch.get_num_threads()),
    }
    times: dict[str, list[float]] = {"a": [], "b": []}
    ratios: list[float] = []
    start = time.perf_counter()
    while len(ratios) < max_rounds:
        order = ("a", "b") if len(ratios) % 2 == 0 else ("b", "a")
        measured = {key: timers[key].timeit(1).median for key in order}
        times["a"].append(measured["a"])
        times["b"].append(measured["b"])
        ratios.append(measured["b"] / measured["a"])
        rounds = len(ratios)
        if rounds >= min_rounds and (rounds - min_rounds) % 5 == 0:
            low, high = _ratio_interval(ratios)
            if high < 1.0 or low > 1.0 or time.perf_counter() - start > max_seconds:
                break
    low, high = _ratio_interval(ratios)  # over every round measured
    return PairedComparison(label_a, label_b, statistics.median(ratios), low, high, len(ratios),
                            statistics.median(times["a"]), statistics.median(times["b"]))


class CudaTimer:
    """Time a block of GPU work with CUDA events (recorded on the stream, so no host clock).

    Use it inside a loop that is already warmed up::

        with CudaTimer() as t:
            y = model(x)
        print(t.elapsed_ms)

    Without a CUDA device it raises a ``RuntimeError`` that says to use ``benchmark``.
    """

    def __init__(self) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError(
                "CudaTimer needs a CUDA GPU and none is available here; "
                "time CPU code with course_utils.benchmark instead"
            )
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self.elapsed_ms: float | None = None

    def __enter__(self) -> CudaTimer:
        self._start.record()
        return self

    def __exit__(self, *exc: object) -> None:
        self._end.record()
        self._end.synchronize()  # wait for the GPU to reach the end event
        self.elapsed_ms = self._start.elapsed_time(self._end)


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for all queued work on ``device`` (a no-op on the CPU).

    >>> synchronize("cpu")
    """
    if device is not None:
        device = check_device("device", device)
    if device is None or device.type == "cuda":
        if torch.cuda.is_available():
            torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# Lines that PyTorch's Kineto profiler backend prints straight to the process's stderr (not through
# Python) on every run: stage markers, and a CUDA probe that fails on machines without a GPU.
_KINETO_CHATTER = ("USDT:", "STAGE:", "gpuGetDeviceCount failed")


PROFILE_SORT_KEYS = tuple(
    f"{self_}{unit}_{what}" for what in ("time_total", "memory_usage") for self_ in ("", "self_")
    for unit in ("cpu", "cuda", "xpu", "device")) + ("cpu_time", "cuda_time", "xpu_time",
                                                    "device_time", "count")
"""The columns ``profile_table`` can sort by (``torch.profiler``'s ``key_averages().table``)."""


@contextmanager
def _filtered_stderr():
    """Capture file descriptor 2 during the block and re-emit every line except Kineto's chatter."""
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                if line.strip() and not any(marker in line for marker in _KINETO_CHATTER):
                    print(line, file=sys.stderr)


def profile_table(
    fn: Callable[[], Any],
    steps: int = 3,
    sort_by: str = "self_cpu_time_total",
    row_limit: int = 8,
    device: torch.device | str | None = None,
) -> str:
    """Run ``fn()`` ``steps`` times under ``torch.profiler`` and return its operator table.

    CPU activity is always recorded, CUDA activity too on a GPU. Kineto's start/stop log lines
    are kept out of the output; everything else it prints still shows.

    >>> table = profile_table(lambda: torch.ones(8, 8) @ torch.ones(8, 8), steps=1, row_limit=3)
    >>> "aten::mm" in table
    True
    """
    from torch.profiler import ProfilerActivity, profile

    check_callable("fn", fn)
    check_sizes(steps=steps, row_limit=row_limit)
    if sort_by is not None:
        check_one_of("sort_by", sort_by, PROFILE_SORT_KEYS)
    device = check_device("device", device) if device is not None else torch.device("cpu")
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with _filtered_stderr():
        with profile(activities=activities) as prof:
            for _ in range(steps):
                fn()
            synchronize(device)
    return prof.key_averages().table(sort_by=sort_by, row_limit=row_limit, max_name_column_width=28)
