"""``torch.compile`` on the course's tiled attention: what a compiler can and cannot fuse.

``torch.compile(fn)`` traces ``fn`` into a graph (Dynamo), then generates code for it (Inductor:
C++/OpenMP on a CPU, Triton on a GPU). Element-wise operations and reductions that follow each
other are **fused** into one loop, so a tile of scores is read once instead of once per
operation; matrix multiplications stay calls to the vendor library (MKL / oneDNN / cuBLAS).

Compiling the whole :func:`~course_utils.efficient.tiled_attention` is the obvious first try, and
a poor one: Dynamo *unrolls* Python loops, so a 4096-token call with 256 × 512 tiles becomes a
graph of 128 tiles, which takes minutes to compile and must be recompiled for every new length.
The usual remedy is **regional compilation**: compile the loop *body* — one online-softmax update
of one tile, :func:`tile_update` — once, and call it from the Python loop. Every tile has the
same shape, so the kernel is compiled once and reused.

>>> q, k, v = torch.randn(3, 1, 2, 100, 16).unbind(0)
>>> out = compiled_tiled_attention(q, k, v, causal=True, block_q=32, block_k=32, compiled=False)
>>> torch.allclose(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5)
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: F401  (used by the doctests)

from course_utils.checks import (
    check_float_tensor,
    check_positive_int,
    check_qkv,
    check_same_device,
    check_same_dtype,
    check_shape,
    check_tensor,
    describe,
)

__all__ = ["compile_seconds", "compiled_tiled_attention", "inductor_cache_hits", "tile_update"]

_LOG2E = 1.4426950408889634


def tile_update(
    q_blk: torch.Tensor,
    k_blk_t: torch.Tensor,
    v_blk: torch.Tensor,
    m: torch.Tensor,
    l: torch.Tensor,  # noqa: E741
    acc: torch.Tensor,
    future: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the online softmax (notebook 08, section 3) on one tile, as a pure function.

    ``q_blk (BH, bq, D)`` already multiplied by ``scale · log2(e)``, ``k_blk_t (BH, D, bk)``,
    ``v_blk (BH, bk, Dv)``; running max ``m``, sum ``l`` (``(BH, bq, 1)``) and un-normalised output
    ``acc (BH, bq, Dv)``. ``future (bq, bk)`` bool marks keys a query may not see (causal tiles on
    the diagonal). Returns the new ``m, l, acc``.
    """
    _check_tile(q_blk, k_blk_t, v_blk, m, l, acc, future)
    return _online_softmax_step(q_blk, k_blk_t, v_blk, m, l, acc, future)


def _online_softmax_step(q_blk, k_blk_t, v_blk, m, l, acc, future=None):  # noqa: E741
    """:func:`tile_update` on checked inputs: what the loop calls, and what is compiled."""
    s = torch.bmm(q_blk, k_blk_t)  # (BH, bq, bk): scores in log2 units
    if future is not None:
        s = s.masked_fill(future, -math.inf)
    m_new = torch.maximum(m, s.amax(-1, keepdim=True))
    m_safe = torch.where(m_new == -math.inf, 0.0, m_new)  # a row that has seen no key yet
    alpha = torch.exp2(m - m_safe)  # rescales what was accumulated so far
    p = torch.exp2(s - m_safe)
    l = l * alpha + p.sum(-1, keepdim=True)  # noqa: E741
    acc = torch.baddbmm(acc * alpha, p, v_blk)
    return m_new, l, acc


def _check_tile(q_blk, k_blk_t, v_blk, m, l, acc, future) -> None:  # noqa: E741
    """The shapes of :func:`tile_update`, all of one dtype and device; ``future`` bool."""
    tiles = {"q_blk": q_blk, "k_blk_t": k_blk_t, "v_blk": v_blk, "m": m, "l": l, "acc": acc}
    for name, t in tiles.items():
        check_float_tensor(name, t, dims=3)
    (bh, bq, d), bk, dv = q_blk.shape, k_blk_t.size(-1), v_blk.size(-1)
    expected = {
        "k_blk_t": ((bh, d, None), f"(BH, D, bk) = {(bh, d, 'bk')} (BH, D from q_blk)"),
        "v_blk": ((bh, bk, None), f"(BH, bk, Dv) = {(bh, bk, 'Dv')} (BH from q_blk, bk from "
                                  "k_blk_t)"),
        "m": ((bh, bq, 1), f"(BH, bq, 1) = {(bh, bq, 1)} (from q_blk)"),
        "l": ((bh, bq, 1), f"(BH, bq, 1) = {(bh, bq, 1)} (from q_blk)"),
        "acc": ((bh, bq, dv), f"(BH, bq, Dv) = {(bh, bq, dv)} (from q_blk and v_blk)"),
    }
    for name, (shape, what) in expected.items():
        check_shape(name, tiles[name], shape, what=what)
    check_same_dtype(**tiles)
    check_same_device(**tiles)
    if future is not None:
        check_tensor("future", future)
        if future.dtype != torch.bool:
            raise TypeError(f"future must be a bool tensor (True = masked), got {describe(future)}")
        check_shape("future", future, (bq, bk), what=f"(bq, bk) = {(bq, bk)} (from q_blk and "
                    "k_blk_t)")
        check_same_device(future=future, q_blk=q_blk)


_COMPILED: dict[str, Callable] = {}


def _step(compiled: bool) -> Callable:
    if not compiled:
        return _online_softmax_step
    if "tile" not in _COMPILED:
        _COMPILED["tile"] = torch.compile(_online_softmax_step, dynamic=False)
    return _COMPILED["tile"]


def compiled_tiled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    block_q: int = 256,
    block_k: int = 512,
    compiled: bool = True,
) -> torch.Tensor:
    """Tiled attention whose per-tile update is compiled once (``compiled=False``: eager).

    ``q (..., Lq, D)``, ``k (..., Lk, D)``, ``v (..., Lk, Dv)``; ``causal`` skips the key blocks in
    the future and masks the tiles on the diagonal, as
    :func:`~course_utils.efficient.tiled_attention`. A tile at the ragged end of a sequence has
    another shape and compiles its own kernel once.
    """
    check_qkv(q, k, v, broadcast=False, scale=scale, causal=causal, compiled=compiled)
    _check_blocks(q, k, v, block_q, block_k)
    lead, lq, d = q.shape[:-2], q.size(-2), q.size(-1)
    lk, dv = k.size(-2), v.size(-1)
    scale = d**-0.5 if scale is None else scale
    out_dtype = q.dtype
    if q.dtype in (torch.float16, torch.bfloat16):  # accumulate in float32, as tiled_attention
        q, k, v = q.float(), k.float(), v.float()
    bh = math.prod(lead)
    qf = q.reshape(bh, lq, d) * (scale * _LOG2E)  # fold the scale and log2(e) into q once
    kt = k.reshape(bh, lk, d).transpose(1, 2)  # (BH, D, Lk)
    vf = v.reshape(bh, lk, dv)
    step = _step(compiled)
    out = torch.empty(bh, lq, dv, dtype=q.dtype, device=q.device)
    for i0 in range(0, lq, block_q):
        i1 = min(i0 + block_q, lq)
        m = torch.full((bh, i1 - i0, 1), -math.inf, dtype=q.dtype, device=q.device)
        l = torch.zeros(bh, i1 - i0, 1, dtype=q.dtype, device=q.device)  # noqa: E741
        acc = torch.zeros(bh, i1 - i0, dv, dtype=q.dtype, device=q.device)
        k_end = min(lk, i1) if causal else lk
        for j0 in range(0, k_end, block_k):
            j1 = min(j0 + block_k, k_end)
            future = None
            if causal and j1 - 1 > i0:  # a tile on the diagonal
                future = (
                    torch.arange(j0, j1, device=q.device)
                    > torch.arange(i0, i1, device=q.device)[:, None]
                )
            m, l, acc = step(  # noqa: E741
                qf[:, i0:i1], kt[:, :, j0:j1], vf[:, j0:j1], m, l, acc, future
            )
        out[:, i0:i1] = acc / torch.where(l == 0, 1.0, l)
    return out.reshape(*lead, lq, dv).to(out_dtype)


def _check_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_q: int,
                  block_k: int) -> None:
    """``k`` and ``v`` with the leading (batch, head) dims of ``q``; positive tile sizes."""
    lead = tuple(q.shape[:-2])
    for name, t in (("k", k), ("v", v)):
        check_shape(name, t, (*lead, None, None), what=f"(..., Lk, D) with the leading dims "
                    f"{lead} of q")
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)


def compile_seconds(fn: Callable, *args: Any, **kwargs: Any) -> float:
    """Wall-clock seconds of the first call of a compiled ``fn`` (tracing + code generation +
    C++ compilation, or a load from Inductor's on-disk cache), under ``torch.no_grad``."""
    if not callable(fn):
        raise TypeError(f"fn must be a function (the compiled one to time), got {describe(fn)}")
    start = time.perf_counter()
    with torch.no_grad():
        fn(*args, **kwargs)
    return time.perf_counter() - start


def inductor_cache_hits() -> dict[str, int]:
    """How many compiled graphs Inductor loaded from its on-disk cache (``hits``) and how many it
    had to generate and compile (``misses``) so far in this process.

    >>> sorted(inductor_cache_hits())
    ['hits', 'misses']
    """
    try:  # Dynamo's counters are internal: a PyTorch without them reports nothing, not an error
        from torch._dynamo.utils import counters

        inductor = counters["inductor"]
        return {
            "hits": int(inductor["fxgraph_cache_hit"]),
            "misses": int(inductor["fxgraph_cache_miss"]),
        }
    except (ImportError, KeyError, TypeError):
        return {"hits": 0, "misses": 0}
