"""Watch a run: GPU utilisation and memory (NVML), process CPU and memory (psutil).

``Monitor`` samples in a background thread while your code runs::

    with Monitor(interval=0.2) as mon:
        train()
    mon.plot()
    print(mon.summary())

On a machine without an NVIDIA GPU (or without its driver) the GPU columns are simply
absent and ``mon.gpu_status`` says why; nothing fails.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil


def _open_nvml() -> tuple[Any, list[Any], str]:
    """Initialise NVML; returns (module, device handles, status text)."""
    try:
        import pynvml  # from the nvidia-ml-py package
    except ImportError:
        return None, [], "no GPU monitoring (nvidia-ml-py is not installed)"
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception as exc:  # pynvml raises NVMLError subclasses without a driver
        return None, [], f"no GPU ({type(exc).__name__}: {exc})"
    if not handles:
        return None, [], "no GPU (NVML found no device)"
    names = [pynvml.nvmlDeviceGetName(h) for h in handles]
    return pynvml, handles, f"{len(handles)} GPU(s): {', '.join(map(str, names))}"


class Monitor:
    """Sample CPU/RSS of this process and GPU utilisation/memory every ``interval`` seconds.

    >>> with Monitor(interval=0.01) as mon:
    ...     _ = sum(i * i for i in range(100_000))
    >>> len(mon.samples["time_s"]) >= 1 and "rss_mb" in mon.samples
    True
    """

    def __init__(self, interval: float = 0.5) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
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
        out: dict[str, float] = {"duration_s": self.samples["time_s"][-1] if self.samples["time_s"] else 0.0}
        for key, values in self.samples.items():
            if key == "time_s" or not values:
                continue
            out[f"{key}_mean"] = sum(values) / len(values)
            out[f"{key}_peak"] = max(values)
        return out

    def plot(self, title: str = "Resource use during the run"):
        """Line plots of CPU, memory and (if present) GPU series against time."""
        from .plotting import plot_time_series

        return plot_time_series(self.samples, x="time_s", title=title, note=self.gpu_status)
