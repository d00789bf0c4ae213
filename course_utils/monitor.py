"""Watch a run, and measure the memory of one call.

``Monitor`` samples GPU utilisation and memory (NVML) and this process's CPU and resident memory
(psutil) in a background thread while your code runs::

    with Monitor(interval=0.2) as mon:
        train()
    mon.plot()
    print(mon.summary())

On a machine without an NVIDIA GPU (or without its driver) the GPU columns are simply absent
and ``mon.gpu_status`` says so in plain words; nothing fails.

``PeakMemory`` measures the peak *extra* memory of a block of code: on CUDA from the caching
allocator (``torch.cuda.max_memory_allocated`` after a reset), on the CPU from the resident
memory of the process (RSS). On Linux the kernel keeps the peak (``VmHWM`` in
``/proc/self/status``, reset by writing 5 to ``/proc/self/clear_refs``), which is exact; where
``/proc`` is missing (macOS, Windows) a thread samples the RSS with psutil instead.
:func:`peak_memory_mb` runs one attention call in a **fresh Python process** per measurement, so
that memory freed by an earlier call cannot be reused by a later one (a process keeps freed
pages and hands them out again: measured in one process, a second call looks cheaper).

>>> with PeakMemory() as peak:
...     block = torch.ones(64, 2**20, dtype=torch.uint8)            # 64 MiB
>>> 60 < peak.extra_mb < 200
True
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import torch

from course_utils.checks import (
    check_bool,
    check_device,
    check_one_of,
    check_optional_sizes,
    check_positive_int,
    check_real,
    check_sequence_of_str,
    check_sizes,
    describe,
)

__all__ = ["Monitor", "PeakMemory", "peak_memory_mb", "peak_memory_table", "rss_mb"]

_NO_GPU = "no NVIDIA GPU"


# ---------------------------------------------------------------------------------------------
# Resident memory of this process, with and without /proc
# ---------------------------------------------------------------------------------------------


def _read_proc(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write_proc(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _proc_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``); ``None`` without /proc."""
    try:
        text = _read_proc("/proc/self/status")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def rss_mb() -> float:
    """Resident memory of this process in MiB (``/proc`` on Linux, psutil elsewhere).

    >>> rss_mb() > 10
    True
    """
    kib = _proc_kib("VmRSS")
    return kib / 1024 if kib is not None else psutil.Process().memory_info().rss / 2**20


def _reset_peak_rss() -> bool:
    """Reset the kernel's record of this process's peak RSS (Linux ≥ 4.0); False if unsupported."""
    try:
        _write_proc("/proc/self/clear_refs", "5")
    except OSError:
        return False
    return _proc_kib("VmHWM") is not None


class PeakMemory:
    """Peak extra memory (MiB) of the code inside ``with PeakMemory(device) as peak:``.

    ``peak.extra_mb`` is the peak during the block minus the memory at its start. On CUDA it
    counts the tensors of the caching allocator; on the CPU the resident memory of the whole
    process (``peak.method`` says how: ``"cuda allocator"``, ``"kernel peak RSS"`` or
    ``"sampled RSS"``). Sampling every ``interval`` seconds can miss a peak shorter than that.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.0005) -> None:
        self.device = check_device("device", device)
        check_real("interval", interval, 0.0, low_open=True)
        self.interval, self.extra_mb, self.method = interval, float("nan"), ""
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
            self.method = "cuda allocator"
            return self
        kernel = _reset_peak_rss()
        self._start = rss_mb()
        self._sampled = self._start
        self.method = "kernel peak RSS" if kernel else "sampled RSS"
        if not kernel:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self._sampled = max(self._sampled, process.memory_info().rss / 2**20)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        if self.method == "cuda allocator":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.method == "kernel peak RSS":
            peak = _proc_kib("VmHWM") / 1024
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._sampled, rss_mb())
        self.extra_mb = max(peak - self._start, 0.0)


# ---------------------------------------------------------------------------------------------
# The memory of one attention call, one fresh process per measurement
# ---------------------------------------------------------------------------------------------

_METHODS = ("naive", "tiled", "sdpa", "none")

_MEMORY_SCRIPT = r"""
import json, sys, torch
import torch.nn.functional as F
from course_utils.efficient import naive_attention, tiled_attention
from course_utils.monitor import PeakMemory
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
fns = {"naive": naive_attention, "tiled": tiled_attention, "sdpa": F.scaled_dot_product_attention,
       "none": lambda q, k, v: None}
fn = fns[cfg["method"]]
with torch.no_grad():
    q, k, v = (torch.randn(cfg["b"], cfg["h"], cfg["n"], cfg["d"]) for _ in range(3))
    fn(q[..., :8, :], k[..., :8, :], v[..., :8, :])   # load the code paths (libraries, kernels)
    with PeakMemory("cpu") as peak:
        out = fn(q, k, v)
print(json.dumps({"extra_mb": peak.extra_mb, "method": peak.method}))
"""


def peak_memory_mb(
    method: str, n: int, b: int = 1, h: int = 8, d: int = 64, threads: int | None = None,
    device: torch.device | str = "cpu",
) -> float:
    """Peak extra memory (MiB) of one attention call on ``q, k, v (b, h, n, d)`` float32.

    ``method`` is ``"naive"``, ``"tiled"`` or ``"sdpa"`` (``"none"`` measures nothing, the
    floor of the method). On the CPU the call runs in a fresh Python process that creates the
    inputs, runs a tiny warm-up call (so that libraries and kernels are loaded), then measures
    the call with :class:`PeakMemory`: the inputs are excluded, the output is included. On CUDA
    it runs here, measured by the allocator (which never hands one tensor's memory to another
    without counting it).
    """
    check_one_of("method", method, _METHODS)
    check_sizes(n=n, b=b, h=h, d=d)
    check_optional_sizes(threads=threads)
    device = check_device("device", device)
    if device.type == "cuda":
        return _peak_memory_cuda(method, n, b, h, d, device)
    cfg = {"method": method, "n": n, "b": b, "h": h, "d": d,
           "threads": threads or torch.get_num_threads()}
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, json.dumps(cfg)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement {cfg} failed:\n{proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["extra_mb"])


def _peak_memory_cuda(method: str, n: int, b: int, h: int, d: int, device: torch.device) -> float:
    from course_utils.efficient import naive_attention, tiled_attention

    fn = {"naive": naive_attention, "tiled": tiled_attention, "none": lambda q, k, v: None,
          "sdpa": torch.nn.functional.scaled_dot_product_attention}[method]
    with torch.no_grad():
        q, k, v = (torch.randn(b, h, n, d, device=device) for _ in range(3))
        fn(q[..., :8, :], k[..., :8, :], v[..., :8, :])
        with PeakMemory(device) as peak:
            fn(q, k, v)
    return peak.extra_mb


def peak_memory_table(
    methods: list[str], ns: list[int], b: int = 1, h: int = 8, d: int = 64,
    threads: int | None = None, device: torch.device | str = "cpu", progress: bool = False,
    parallel: int = 1,
) -> dict[str, list[float]]:
    """:func:`peak_memory_mb` for every ``(method, n)``, each in its own fresh process on the
    CPU: ``{method: [MiB for each n]}``. ``parallel`` processes run side by side (each measures
    only its own memory); ``progress=True`` shows a progress bar.

    >>> table = peak_memory_table(["naive", "tiled"], [256], parallel=2)
    >>> sorted(table), len(table["naive"])
    (['naive', 'tiled'], 1)
    """
    check_sequence_of_str("methods", methods)
    for method in methods:
        check_one_of("method in methods", method, _METHODS)
    if isinstance(ns, str) or not isinstance(ns, (list, tuple)) or not ns:
        raise TypeError(f"ns must be a non-empty list of sequence lengths, got {describe(ns)}")
    for i, n in enumerate(ns):
        check_positive_int(f"ns[{i}]", n)
    check_bool("progress", progress)
    check_positive_int("parallel", parallel)
    check_optional_sizes(threads=threads)
    jobs = [(m, n) for m in methods for n in ns]
    cuda = check_device("device", device).type == "cuda"  # one process: the allocator counts
    with ThreadPoolExecutor(1 if cuda else parallel) as pool:
        results = pool.map(lambda job: peak_memory_mb(*job, b, h, d, threads, device), jobs)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(jobs), desc="memory, one process per (method, N)")
        measured = dict(zip(jobs, results, strict=True))
    return {m: [measured[m, n] for n in ns] for m in methods}


# ---------------------------------------------------------------------------------------------
# Monitor
# ---------------------------------------------------------------------------------------------


def _open_nvml() -> tuple[Any, list[Any], str]:
    """Initialise NVML; returns (module, device handles, status text in plain words)."""
    try:
        import pynvml  # from the nvidia-ml-py package
    except ImportError:
        return None, [], "GPU not monitored (nvidia-ml-py is not installed)"
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # pynvml raises NVMLError subclasses without a driver: no GPU to watch
        return None, [], _NO_GPU
    if not handles:
        return None, [], _NO_GPU
    names = [pynvml.nvmlDeviceGetName(h) for h in handles]
    return pynvml, handles, f"{len(handles)} GPU(s): {', '.join(map(str, names))}"


# readable axis labels, and the unit that decides each axis's scale
_LABELS = {"cpu_percent": "CPU (%)", "rss_mb": "RSS (MiB)"}


class Monitor:
    """Sample CPU/RSS of this process and GPU utilisation/memory every ``interval`` seconds.

    >>> with Monitor(interval=0.01) as mon:
    ...     _ = sum(i * i for i in range(100_000))
    >>> len(mon.samples["time_s"]) >= 1 and "rss_mb" in mon.samples
    True
    """

    def __init__(self, interval: float = 0.5) -> None:
        check_real("interval", interval, 0.0, low_open=True)
        self.interval = interval
        self.samples: dict[str, list[float]] = {"time_s": [], "cpu_percent": [], "rss_mb": []}
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml, self._handles, self.gpu_status = _open_nvml()
        for i in range(len(self._handles)):
            self.samples[f"gpu{i}_util_percent"] = []
            self.samples[f"gpu{i}_mem_mb"] = []

    def _sample(self, t0: float) -> None:
        self.samples["time_s"].append(time.perf_counter() - t0)
        self.samples["cpu_percent"].append(self._process.cpu_percent(None))
        self.samples["rss_mb"].append(self._process.memory_info().rss / 2**20)
        for i, handle in enumerate(self._handles):
            util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            self.samples[f"gpu{i}_util_percent"].append(float(util.gpu))
            self.samples[f"gpu{i}_mem_mb"].append(mem.used / 2**20)

    def _loop(self, t0: float) -> None:
        while not self._stop.wait(self.interval):
            self._sample(t0)

    def __enter__(self) -> Monitor:
        t0 = time.perf_counter()
        self._process.cpu_percent(None)  # the first call only sets psutil's reference point
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(t0,), daemon=True)
        self._thread.start()
        self._t0 = t0
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample(self._t0)  # always at least one sample, even for a short block

    def summary(self) -> dict[str, float]:
        """Mean and peak of every sampled series."""
        times = self.samples["time_s"]
        out: dict[str, float] = {"duration_s": times[-1] if times else 0.0}
        for key, values in self.samples.items():
            if key == "time_s" or not values:
                continue
            out[f"{key}_mean"] = sum(values) / len(values)
            out[f"{key}_peak"] = max(values)
        return out

    def plot(self, title: str = "Resource use during the run"):
        """Line plots of CPU, memory and (if present) GPU series against time.

        Every axis starts at zero, percentages run to at least 100 % and memory to its peak
        plus a margin: a drift of a few MiB on a process of hundreds shows as the small
        change it is, instead of filling the axis.
        """
        from course_utils.plotting import plot_time_series

        series = {_label(key): values for key, values in self.samples.items()}
        fig = plot_time_series(series, x="time_s", title=title, note=self.gpu_status)
        for ax in fig.axes:
            top = max(max(line.get_ydata(), default=0.0) for line in ax.get_lines())
            floor = 100.0 if "%" in ax.get_ylabel() else 1.0
            ax.set_ylim(0.0, max(1.15 * top, floor))
        return fig


def _label(key: str) -> str:
    """``gpu0_mem_mb`` -> ``GPU 0 memory (MiB)``; the time axis keeps its key."""
    if key in _LABELS:
        return _LABELS[key]
    if key.startswith("gpu") and key.endswith("_util_percent"):
        return f"GPU {key[3:-13]} use (%)"
    if key.startswith("gpu") and key.endswith("_mem_mb"):
        return f"GPU {key[3:-7]} memory (MiB)"
    return key
