"""benchmarks/run_all.py merges the other benchmarks' summaries into attention_<device>.json;
bench_attention.py summarises ratios against SDPA per dtype."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_merge_summaries_is_repeatable(tmp_path, monkeypatch):
    run_all = _load("run_all")
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    (tmp_path / "attention_cpu.json").write_text(json.dumps(
        {"summary": {"tiled_over_sdpa_time_n4096": 1.2}, "attention": []}))
    (tmp_path / "inference_cpu.json").write_text(json.dumps(
        {"machine": {"timestamp": "t1"}, "summary": {"flex_over_sdpa_time_window256": 0.4,
                                                     "targets": {}, "met": {}}}))
    notes = run_all.merge_summaries("cpu")
    assert notes == ["merged 1 summary figures of inference_cpu.json into attention_cpu.json"]
    merged = json.loads((tmp_path / "attention_cpu.json").read_text())["summary"]
    assert merged["flex_over_sdpa_time_window256"] == 0.4 and merged["tiled_over_sdpa_time_n4096"]
    assert merged["merged_from"]["inference"]["keys"] == ["flex_over_sdpa_time_window256"]
    # a new inference run replaces its figures instead of clashing with the old ones
    (tmp_path / "inference_cpu.json").write_text(json.dumps(
        {"summary": {"paged_kv_waste_fraction": 0.03}}))
    run_all.merge_summaries("cpu")
    merged = json.loads((tmp_path / "attention_cpu.json").read_text())["summary"]
    assert "flex_over_sdpa_time_window256" not in merged and merged["paged_kv_waste_fraction"]
    # a key the attention benchmark owns may not be overwritten
    (tmp_path / "inference_cpu.json").write_text(json.dumps(
        {"summary": {"tiled_over_sdpa_time_n4096": 9.0}}))
    with pytest.raises(ValueError, match=r"repeats summary keys .*tiled_over_sdpa_time_n4096"):
        run_all.merge_summaries("cpu")
    assert run_all.merge_summaries("cuda") == ["no attention_cuda.json to merge into"]
    (tmp_path / "inference_cpu.json").unlink()
    assert "not found" in run_all.merge_summaries("cpu")[0]


def test_bench_attention_summary_per_dtype():
    bench = _load("bench_attention")
    rows = []
    for dtype in ("float16", "bfloat16"):
        for method, t in (("naive", 4.0), ("tiled", 3.0), ("sdpa", 1.0), ("triton", 1.5)):
            rows.append({"n": 4096, "method": method, "dtype": dtype, "median_s": t * 1e-3,
                         "tflops": 34.36 / t, "peak_extra_mb": {"naive": 100.0}.get(method, 2.0)})
    kv = [{"tokens": 1024, "speedup": 40.0, "same_tokens": True}]
    summary = bench.summarise(rows, kv, torch.device("cuda"))
    assert summary["triton_over_sdpa_time_n4096_fp16"] == 1.5
    assert summary["triton_over_sdpa_time_n4096_bf16"] == 1.5
    assert summary["tiled_over_sdpa_time_n4096"] == 3.0
    assert summary["sdpa_tflops_n4096_fp16"] == 34.36
    assert summary["tiled_over_naive_memory_n4096"] == 0.02
    assert summary["met"] == {"kv_cache_speedup_1024": True}
    cpu_rows = [dict(r, dtype="float32") for r in rows[:4]]
    cpu = bench.summarise(cpu_rows, kv, torch.device("cpu"))
    assert cpu["tiled_over_sdpa_time_n4096"] == 3.0
    assert cpu["met"]["tiled_over_sdpa_time_n4096"] is False
