"""A FlashAttention forward kernel in Triton, and the Python wrapper that launches it.

Triton (Tillet et al., 2019) writes GPU kernels in Python: one *program* computes one block
of the output, with whole tiles as values (``tl.load`` a tile, ``tl.dot`` two tiles, ``tl.store``
the result) while the compiler handles threads, shared memory and tensor cores.

The kernel is :func:`course_utils.efficient.tiled_attention` with one program per
``(query block, batch·head)``: it loads its ``BLOCK_M`` queries once, then streams the keys and
values through in blocks of ``BLOCK_N``, keeping the running max ``m_i``, the normaliser ``l_i``
and the output ``acc`` in registers (float32 even for fp16/bf16 inputs). The ``(N, N)`` scores
never exist in GPU memory — that is where FlashAttention's speed comes from on a GPU, whose
arithmetic is much faster than its memory.

On a machine without a GPU the same kernel runs in Triton's *interpreter* (``TRITON_INTERPRET=1``
set before ``triton`` is imported): slow NumPy emulation, but exact enough to test the kernel
on the CPU (in float32; NumPy has no bfloat16). The tests in
``tests/unit/test_triton_attention.py`` do that.

>>> ok, why = triton_available()
>>> isinstance(ok, bool) and isinstance(why, str)
True
"""

from __future__ import annotations

import os

import torch

from course_utils.checks import check_bool, check_one_of, check_qkv, check_shape, check_sizes

__all__ = ["HAS_TRITON", "attention_flops", "flash_attention_triton", "kernel_source",
           "triton_available"]

try:  # Triton is optional: it is not available on every platform (e.g. macOS)
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the installation
    triton = tl = None
    HAS_TRITON = False


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def triton_available() -> tuple[bool, str]:
    """``(True, how)`` if :func:`flash_attention_triton` can run here, else ``(False, why not)``."""
    if not HAS_TRITON:
        return False, ("triton is not installed (pip install triton; Linux with an NVIDIA or AMD "
                       "GPU)")
    if _interpreting():
        return True, "Triton's interpreter (TRITON_INTERPRET=1): CPU emulation, for testing only"
    if torch.cuda.is_available():
        return True, f"compiled for {torch.cuda.get_device_name()}"
    return False, ("no CUDA GPU here (set TRITON_INTERPRET=1 before importing triton to emulate "
                   "the kernel)")


if HAS_TRITON:

    @triton.jit
    def _flash_fwd_kernel(
        Q, K, V, Out,  # (BH, L, D) contiguous
        qk_scale,  # softmax scale · log2(e): the kernel works with exp2
        N_Q, N_K,  # sequence lengths
        stride_q, stride_k, stride_v, stride_o,  # BH strides (the L and D strides are D and 1)
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        CAUSAL: tl.constexpr,
    ):
        start_m = tl.program_id(0)  # which block of queries
        bh = tl.program_id(1)  # which (batch, head)
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows of this program
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)

        # the query tile, loaded once: (BLOCK_M, HEAD_DIM)
        q = tl.load(Q + bh * stride_q + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=offs_m[:, None] < N_Q, other=0.0)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running normaliser
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)  # un-normalised output

        # causal: key blocks after this program's last query are never needed
        hi = N_K
        if CAUSAL:
            hi = tl.minimum(N_K, (start_m + 1) * BLOCK_M)
        for start_n in range(0, hi, BLOCK_N):
            cols = start_n + offs_n  # key indices of this tile
            # kᵀ tile (HEAD_DIM, BLOCK_N) and v tile (BLOCK_N, HEAD_DIM)
            kt = tl.load(K + bh * stride_k + cols[None, :] * HEAD_DIM + offs_d[:, None],
                         mask=cols[None, :] < N_K, other=0.0)
            s = tl.dot(q, kt) * qk_scale  # (BLOCK_M, BLOCK_N) scores
            allowed = cols[None, :] < N_K
            if CAUSAL:
                allowed = allowed & (cols[None, :] <= offs_m[:, None])
            s = tl.where(allowed, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])  # (BLOCK_M, BLOCK_N)
            alpha = tl.math.exp2(m_i - m_new)  # rescales the old l_i and acc
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + bh * stride_v + cols[:, None] * HEAD_DIM + offs_d[None, :],
                        mask=cols[:, None] < N_K, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        acc = acc / l_i[:, None]
        tl.store(Out + bh * stride_o + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
                 acc.to(Out.dtype.element_ty), mask=offs_m[:, None] < N_Q)


def flash_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    block_m: int = 64,
    block_n: int = 64,
) -> torch.Tensor:
    """Attention ``softmax(q kᵀ · scale) v`` by the Triton kernel above (forward only).

    ``q (B, H, Lq, D)``, ``k``/``v (B, H, Lk, D)`` with the same dtype (fp16/bf16/fp32 on a GPU;
    fp32 in the interpreter), ``D`` a power of two in 16..256. ``causal=True`` is top-left
    aligned, like PyTorch's ``is_causal``, and then needs ``Lq <= Lk`` (so every query sees a key).
    """
    ok, why = triton_available()
    if not ok:
        raise RuntimeError(f"flash_attention_triton cannot run: {why}")
    check_qkv(q, k, v, dims=4)
    check_shape("k", k, (*q.shape[:2], None, q.size(3)), what="(B, H, Lk, D) with q's B, H, D")
    check_shape("v", v, tuple(k.shape), what=f"k's shape {tuple(k.shape)}")
    check_one_of("q.dtype", q.dtype, (torch.float16, torch.bfloat16, torch.float32))
    if _interpreting() and q.dtype == torch.bfloat16:
        raise TypeError("Triton's interpreter computes with NumPy, which has no bfloat16: "
                        "use fp32 or fp16 there")
    b, h, lq, d = q.shape
    lk = k.size(2)
    check_one_of("the head dim D", d, (16, 32, 64, 128, 256))
    if causal and lq > lk:
        raise ValueError(f"causal=True needs Lq <= Lk, got Lq={lq}, Lk={lk}")
    scale = d**-0.5 if scale is None else scale
    qf, kf, vf = (t.reshape(b * h, t.size(2), d).contiguous() for t in (q, k, v))
    out = torch.empty_like(qf)
    grid = (triton.cdiv(lq, block_m), b * h)
    _flash_fwd_kernel[grid](
        qf, kf, vf, out, scale * 1.4426950408889634, lq, lk,
        qf.stride(0), kf.stride(0), vf.stride(0), out.stride(0),
        HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
    )
    return out.view(b, h, lq, d)


def kernel_source() -> str:
    """The Python source of the Triton kernel (what notebook 08 prints), or why there is none.

    >>> "tl.dot" in kernel_source() or "not installed" in kernel_source()
    True
    """
    if not HAS_TRITON:
        return "triton is not installed: no kernel source to show"
    import inspect

    return inspect.getsource(_flash_fwd_kernel.fn)


def attention_flops(b: int, h: int, lq: int, lk: int, d: int, causal: bool = False) -> float:
    """Floating-point operations of one attention forward: two matmuls (``q kᵀ`` and ``P v``)
    of ``2·Lq·Lk·D`` each per head; a causal mask skips about half of them (the convention of
    FlashAttention's benchmarks). Divide by the time for FLOP/s.

    >>> attention_flops(1, 8, 4096, 4096, 64) / 1e9                  # GFLOP
    34.359738368
    """
    check_sizes(b=b, h=h, lq=lq, lk=lk, d=d)
    check_bool("causal", causal)
    f = 4.0 * b * h * lq * lk * d
    return f / 2 if causal else f

