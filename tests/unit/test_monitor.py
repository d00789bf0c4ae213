from __future__ import annotations

import time

import pytest

from course_utils import monitor as monitor_module
from course_utils.monitor import Monitor


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


def test_bad_interval():
    with pytest.raises(ValueError, match=r"interval must be a real number in \(0.0, inf\), got 0.0"):
        Monitor(interval=0)
