#!/usr/bin/env python
"""Long-context inference against PyTorch: FlexAttention, compiled tiled attention, paged cache.

    python benchmarks/bench_inference.py              # or: python benchmarks/run_all.py inference
    python benchmarks/bench_inference.py --quick      # small sizes, a smoke test (*_quick.json)
    python benchmarks/bench_inference.py --device cuda

Writes ``benchmarks/results/inference_<device>.json``; ``benchmarks/run_all.py`` merges its
``"summary"`` into ``attention_<device>.json``. Every time is a median of
:func:`course_utils.timing.benchmark` (``torch.utils.benchmark``); the methods compared run in
alternating rounds (A, B, A, B, ...), so that load from another program hits them alike, and each
gets the median of its rounds. B = 1, H = 8, D = 64; float32 on a CPU, bfloat16 on a GPU.

* **FlexAttention, sliding window** (W = 256, N = 4096): the compiled ``flex_attention`` with a
  block mask against ``F.scaled_dot_product_attention`` given the same window as a dense bool
  mask, and SDPA's causal kernel (no window) for reference. The first (compiling) call is timed
  on its own.
* **Compiled tiled attention** (N = 4096): the course's tiled attention with its tile update
  compiled (:mod:`course_utils.inference.compiled`), eager, and SDPA.
* **Paged vs contiguous decoding step**: 16 sequences of ragged lengths (Python's help topics, as
  in notebook 09), one new token each: write it to the cache, read every row's keys and values,
  attend (padding masked). Contiguous: one ``(B, H, max_len, D)`` buffer per tensor; paged: blocks
  of 16 read through the block tables (:class:`~course_utils.inference.paged_cache.PagedKVCache`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from course_utils.attention import scaled_dot_product_attention  # noqa: E402
from course_utils.efficient import tiled_attention  # noqa: E402
from course_utils.files import atomic_write_json  # noqa: E402
from course_utils.inference.compiled import (  # noqa: E402
    compile_seconds,
    compiled_tiled_attention,
    inductor_cache_hits,
)
from course_utils.inference.flex import (  # noqa: E402
    block_mask,
    block_stats,
    flex,
    sliding_window_mod,
)
from course_utils.inference.paged_cache import PagedKVCache  # noqa: E402
from course_utils.inference.sliding_window import window_mask  # noqa: E402
from course_utils.timing import benchmark  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
TARGETS = {  # the course's goals on its 2-core CPU (ratios of medians from the same run)
    "flex_window_over_sdpa_time_n4096": ("<=", 0.5),
    "compiled_tiled_over_sdpa_time_n4096": ("<=", 1.05),
    "paged_over_contiguous_decode_step": ("<=", 1.5),
}


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "device": str(device),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def alternate(fns: dict, rounds: int, min_run_time: float) -> dict[str, float]:
    """Median seconds per call of each function: ``rounds`` rounds of ``benchmark`` in turn."""
    medians: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for _ in range(rounds):
            for name, fn in fns.items():
                medians[name].append(benchmark(fn, label=name, min_run_time=min_run_time).median)
    return {name: statistics.median(ms) for name, ms in medians.items()}


def bench_flex(device, dtype, n, window, rounds, min_run_time) -> dict:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 8, n, 64, device=device, dtype=dtype) for _ in range(3))
    blocks = block_mask(sliding_window_mod(window), n, n, device=device)
    dense = window_mask(n, n, window, device=device)
    before = inductor_cache_hits()
    first = compile_seconds(flex, q, k, v, block_mask=blocks)
    after = inductor_cache_hits()
    with torch.no_grad():
        err = (
            (
                flex(q, k, v, block_mask=blocks).float()
                - F.scaled_dot_product_attention(q, k, v, attn_mask=dense).float()
            )
            .abs()
            .max()
            .item()
        )
    times = alternate(
        {
            "sdpa_dense_mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense),
            "flex_window": lambda: flex(q, k, v, block_mask=blocks),
            "sdpa_causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        },
        rounds,
        min_run_time,
    )
    row = {
        "n": n,
        "window": window,
        "dtype": str(dtype).removeprefix("torch."),
        "median_s": times,
        "first_call_s": first,
        "compiled_graphs": after["misses"] - before["misses"],
        "cached_graphs": after["hits"] - before["hits"],
        "skipped_tile_fraction": block_stats(blocks)["skipped_fraction"],
        "max_abs_err_vs_sdpa": err,
    }
    print(
        f"  flex W={window} N={n}: first call {first:.1f} s; "
        + ", ".join(f"{name} {t * 1e3:.1f} ms" for name, t in times.items()),
        flush=True,
    )
    return row


def bench_compiled_tiled(device, dtype, n, rounds, min_run_time) -> dict:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 8, n, 64, device=device, dtype=dtype) for _ in range(3))
    before = inductor_cache_hits()
    first = compile_seconds(compiled_tiled_attention, q, k, v)
    after = inductor_cache_hits()
    with torch.no_grad():
        err = (
            (
                compiled_tiled_attention(q, k, v).float()
                - F.scaled_dot_product_attention(q, k, v).float()
            )
            .abs()
            .max()
            .item()
        )
    times = alternate(
        {
            "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
            "tiled_eager": lambda: tiled_attention(q, k, v),
            "tiled_compiled": lambda: compiled_tiled_attention(q, k, v),
        },
        rounds,
        min_run_time,
    )
    row = {
        "n": n,
        "dtype": str(dtype).removeprefix("torch."),
        "median_s": times,
        "first_call_s": first,
        "compiled_graphs": after["misses"] - before["misses"],
        "cached_graphs": after["hits"] - before["hits"],
        "max_abs_err_vs_sdpa": err,
    }
    print(
        f"  tiled N={n}: first call {first:.1f} s; "
        + ", ".join(f"{name} {t * 1e3:.1f} ms" for name, t in times.items()),
        flush=True,
    )
    return row


def help_topic_lengths(count: int, cap: int) -> list[int]:
    """``count`` request lengths (characters) spread over Python's help topics, cut at ``cap``."""
    from course_utils.datasets.pydoc_text import load_topics

    lengths = sorted(min(len(text), cap) for text in load_topics().values())
    step = len(lengths) / count
    return [lengths[int(i * step)] for i in range(count)]


def bench_paged(device, dtype, lengths, rounds, min_run_time) -> dict:
    """One decoding step for a ragged batch, through a paged and through a contiguous cache."""
    torch.manual_seed(0)
    b, h, d, block = len(lengths), 8, 64, 16
    max_len = max(lengths) + 1
    paged = PagedKVCache(
        1,
        h,
        d,
        num_blocks=sum(-(-(n + 1) // block) for n in lengths),
        block_size=block,
        dtype=dtype,
        device=device,
    )
    k_buf = torch.zeros(b, h, max_len, d, dtype=dtype, device=device)  # contiguous: (B, H, max, D)
    v_buf = torch.zeros_like(k_buf)
    for row, n in enumerate(lengths):  # the prompts, not timed
        k, v = (torch.randn(1, h, n, d, dtype=dtype, device=device) for _ in range(2))
        paged.add(row)
        paged.set_batch([row])
        paged.update(0, k, v)
        k_buf[row, :, :n], v_buf[row, :, :n] = k[0], v[0]
    ids = list(range(b))
    paged.set_batch(ids)
    pos = torch.tensor(lengths, device=device)  # each row's new token goes to its own position
    q, k_new, v_new = (torch.randn(b, h, 1, d, dtype=dtype, device=device) for _ in range(3))
    rows = torch.arange(b, device=device)

    def contiguous_step():
        k_buf[rows, :, pos] = k_new[:, :, 0]
        v_buf[rows, :, pos] = v_new[:, :, 0]
        keep = torch.arange(max_len, device=device)[None, :] <= pos[:, None]  # (B, L)
        return scaled_dot_product_attention(q, k_buf, v_buf, attn_mask=keep[:, None, None, :])

    def paged_step():
        k, v = paged.update(0, k_new, v_new)
        out = scaled_dot_product_attention(
            q, k, v, attn_mask=~paged.key_padding_mask()[:, None, None, :]
        )
        for row, n in zip(ids, lengths, strict=True):  # roll back: time the same step again
            paged.crop(row, n)
        return out

    with torch.no_grad():
        err = (paged_step() - contiguous_step()).abs().max().item()
    times = alternate({"contiguous": contiguous_step, "paged": paged_step}, rounds, min_run_time)
    row = {
        "batch": b,
        "lengths": lengths,
        "heads": h,
        "head_dim": d,
        "block_size": block,
        "dtype": str(dtype).removeprefix("torch."),
        "median_s": times,
        "max_abs_err_paged_vs_contiguous": err,
    }
    print(
        f"  decode step, {b} ragged sequences: "
        + ", ".join(f"{name} {t * 1e3:.2f} ms" for name, t in times.items()),
        flush=True,
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke test)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    n = 1024 if args.quick else 4096
    rounds, min_run_time = (1, 0.05) if args.quick else (3, 0.5)
    started = time.perf_counter()
    info = machine_info(device)
    print(
        f"inference benchmark on {info['device']} ({info['cpu']}, {info['torch_threads']} threads, "
        f"torch {info['torch']})",
        flush=True,
    )
    flex_row = bench_flex(device, dtype, n, 256, rounds, min_run_time)
    tiled_row = bench_compiled_tiled(device, dtype, n, rounds, min_run_time)
    paged_row = bench_paged(
        device, dtype, help_topic_lengths(16, 1024 if args.quick else 4096), rounds, min_run_time
    )
    f, t, p = flex_row["median_s"], tiled_row["median_s"], paged_row["median_s"]
    summary = {
        "dtype": str(dtype).removeprefix("torch."),
        "flex_window_over_sdpa_time_n4096": round(f["flex_window"] / f["sdpa_dense_mask"], 3),
        "flex_window_over_sdpa_causal_time_n4096": round(f["flex_window"] / f["sdpa_causal"], 3),
        "flex_window_skipped_tile_fraction": round(flex_row["skipped_tile_fraction"], 4),
        "compiled_tiled_over_sdpa_time_n4096": round(t["tiled_compiled"] / t["sdpa"], 3),
        "eager_tiled_over_sdpa_time_n4096": round(t["tiled_eager"] / t["sdpa"], 3),
        "paged_over_contiguous_decode_step": round(p["paged"] / p["contiguous"], 3),
    }
    if args.quick:  # the keys say N = 4096; a quick run measures N = 1024
        summary = {k.replace("_n4096", "_n1024"): v for k, v in summary.items()}
    summary["targets"] = {k: f"{op} {v}" for k, (op, v) in TARGETS.items()}
    summary["met"] = {
        k: (summary[k] <= v if op == "<=" else summary[k] >= v)
        for k, (op, v) in TARGETS.items()
        if k in summary
    }
    info["wall_time_s"] = round(time.perf_counter() - started, 1)
    result = {
        "machine": info,
        "summary": summary,
        "flex": flex_row,
        "compiled_tiled": tiled_row,
        "paged_decode": paged_row,
        "config": {
            "B": 1,
            "H": 8,
            "D": 64,
            "N": n,
            "window": 256,
            "rounds": rounds,
            "min_run_time_s": min_run_time,
        },
    }
    path = RESULTS / f"inference_{device.type}{'_quick' if args.quick else ''}.json"
    atomic_write_json(path, result, indent=2)
    print({k: v for k, v in summary.items() if k != "targets"})
    print(f"wrote {path} in {info['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
