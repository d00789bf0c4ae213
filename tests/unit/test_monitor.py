"""course_utils.monitor: the Monitor, its plot, and the memory probes with and without /proc."""

from __future__ import annotations

import json
import sys
import time
import types

import pytest
import torch

from course_utils import monitor as monitor_module
from course_utils.monitor import Monitor, PeakMemory, peak_memory_mb, peak_memory_table, rss_mb


def test_samples_cpu_and_memory_without_gpu(monkeypatch):
    monkeypatch.setattr(monitor_module, "_open_nvml", lambda: (None, [], "no GPU (test)"))
    with Monitor(interval=0.02) as mon:
        data = bytearray(30 * 2**20)  # ~30 MB, visible in RSS
        # Busy until the sampler has seen enough (a loaded CI runner may starve its thread).
        end = time.perf_counter() + 5.0
        while time.perf_counter() < end and len(mon.samples["time_s"]) < 8:
            sum(range(1000))
    del data
    assert mon.gpu_status == "no GPU (test)"
    assert set(mon.samples) == {"time_s", "cpu_percent", "rss_mb"}
    assert len(mon.samples["time_s"]) >= 5
    assert mon.samples["time_s"] == sorted(mon.samples["time_s"])
    summary = mon.summary()
    assert summary["cpu_percent_peak"] > 10  # it saw the busy loop
    assert summary["rss_mb_peak"] > 30
    fig = mon.plot()
    assert "no GPU (test)" in fig._suptitle.get_text()


def test_real_nvml_degrades_cleanly_here():
    mon = Monitor(interval=0.1)
    assert isinstance(mon.gpu_status, str) and mon.gpu_status


def test_nvml_failure_says_no_gpu_plainly(monkeypatch):
    """The raw NVML error ("NVMLError_LibraryNotFound: NVML Shared Library Not Found") is not
    shown to a learner: the status and the plot title say "no NVIDIA GPU"."""
    class NVMLError_LibraryNotFound(Exception):  # noqa: N801  (pynvml's name)
        pass

    def init():
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=init))
    mon = Monitor(interval=0.1)
    assert mon.gpu_status == "no NVIDIA GPU"
    mon.samples = {"time_s": [0.0, 1.0], "cpu_percent": [50.0, 60.0], "rss_mb": [300.0, 300.4]}
    title = mon.plot()._suptitle.get_text()
    assert "no NVIDIA GPU" in title and "NVML" not in title.replace("NVIDIA", "")


def test_plot_keeps_a_small_drift_small(monkeypatch):
    monkeypatch.setattr(monitor_module, "_open_nvml", lambda: (None, [], "no NVIDIA GPU"))
    mon = Monitor(interval=0.1)
    mon.samples = {"time_s": [0.0, 1.0, 2.0, 3.0], "cpu_percent": [90.0, 95.0, 92.0, 99.0],
                   "rss_mb": [300.0, 300.1, 300.3, 300.4]}
    fig = mon.plot()
    by_label = {ax.get_ylabel(): ax for ax in fig.axes}
    assert set(by_label) == {"CPU (%)", "RSS (MiB)"}
    low, high = by_label["RSS (MiB)"].get_ylim()
    assert low == 0 and high >= 300.4
    assert 0.4 / (high - low) < 0.01  # a 0.4 MiB drift takes under 1 % of the axis
    low, high = by_label["CPU (%)"].get_ylim()
    assert low == 0 and high >= 100


def test_bad_interval():
    with pytest.raises(ValueError, match=r"interval must be a real number in \(0.0, inf\), got 0.0"):
        Monitor(interval=0)
    with pytest.raises(TypeError, match=r"interval must be a real number, got str"):
        PeakMemory(interval="1")


# ---------------------------------------------------------------------------------------------
# Memory probes
# ---------------------------------------------------------------------------------------------


def _hold(mib: int) -> None:
    block = torch.ones(mib, 2**20, dtype=torch.uint8)
    time.sleep(0.05)  # long enough for the sampling thread to see it
    del block


def test_peak_memory_with_proc():
    if monitor_module._proc_kib("VmHWM") is None or not monitor_module._reset_peak_rss():
        pytest.skip("no /proc here: the fallback test below covers this machine")
    with PeakMemory() as peak:
        _hold(64)
    assert peak.method == "kernel peak RSS" and 60 < peak.extra_mb < 200


def test_peak_memory_without_proc_falls_back_to_psutil(monkeypatch):
    def no_proc(*args):
        raise FileNotFoundError("/proc is not here (macOS, Windows)")

    monkeypatch.setattr(monitor_module, "_read_proc", no_proc)
    monkeypatch.setattr(monitor_module, "_write_proc", no_proc)
    import psutil

    assert abs(rss_mb() - psutil.Process().memory_info().rss / 2**20) < 50
    with PeakMemory() as peak:
        _hold(64)
    assert peak.method == "sampled RSS" and 60 < peak.extra_mb < 200


def test_one_fresh_process_per_method_and_length(monkeypatch):
    """peak_memory_table starts one process per (method, N): memory one call freed cannot be
    handed to the next (in one process tiled attention looked cheaper at larger N)."""
    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(json.loads(cmd[-1]))
        return types.SimpleNamespace(returncode=0, stdout=json.dumps({"extra_mb": 1.0}) + "\n",
                                     stderr="")

    monkeypatch.setattr(monitor_module.subprocess, "run", fake_run)
    table = peak_memory_table(["naive", "tiled"], [256, 512, 1024])
    assert table == {"naive": [1.0] * 3, "tiled": [1.0] * 3}
    assert [(c["method"], c["n"]) for c in seen] == [
        (m, n) for m in ("naive", "tiled") for n in (256, 512, 1024)]


@pytest.mark.slow
def test_measured_memory_is_at_least_what_the_call_must_hold():
    """Tiled attention must at least hold its output; naive attention its (N, N) scores and
    weights. (The stored figure that was smaller than the output came from one process.)"""
    b, h, n, d = 1, 4, 2048, 64
    out_mib = b * h * n * d * 4 / 2**20  # 2 MiB
    scores_mib = b * h * n * n * 4 / 2**20  # 64 MiB
    tiled = peak_memory_mb("tiled", n, b=b, h=h, d=d, threads=1)
    naive = peak_memory_mb("naive", n, b=b, h=h, d=d, threads=1)
    assert tiled >= 0.9 * out_mib
    assert naive >= 0.9 * scores_mib and naive > 5 * tiled


def test_probe_bad_input():
    with pytest.raises(ValueError, match=r"method must be one of 'naive', 'tiled', 'sdpa', 'none', "
                                         r"got 'flash'"):
        peak_memory_mb("flash", 128)
    with pytest.raises(ValueError, match=r"n must be a positive int, got 0"):
        peak_memory_mb("naive", 0)
