"""The Triton flash-attention kernel, run on the CPU by Triton's interpreter (TRITON_INTERPRET=1).

The interpreter is chosen when ``triton`` is imported, so the check runs in a fresh Python
process with the variable set; it is kept to small sizes (a few seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

_SCRIPT = textwrap.dedent(
    """
    import json, os
    assert os.environ["TRITON_INTERPRET"] == "1"
    import torch
    import torch.nn.functional as F
    from course_utils.triton_attention import flash_attention_triton, triton_available
    torch.manual_seed(0)
    results = {"available": triton_available()[0], "errors": {}}
    cases = [  # (B, H, Lq, Lk, D, causal, block_m, block_n, dtype)
        (2, 2, 40, 40, 16, False, 16, 16, "float32"),
        (2, 2, 40, 40, 16, True, 16, 16, "float32"),
        (1, 3, 17, 50, 32, False, 16, 32, "float32"),   # lengths that blocks do not divide
        (1, 3, 17, 50, 32, True, 16, 32, "float32"),
        (1, 2, 33, 33, 16, True, 16, 16, "float16"),
    ]
    for b, h, lq, lk, d, causal, bm, bn, dt in cases:
        dtype = getattr(torch, dt)
        q, k, v = torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, d)
        out = flash_attention_triton(q.to(dtype), k.to(dtype), v.to(dtype), causal=causal, block_m=bm, block_n=bn)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        key = f"{b},{h},{lq},{lk},{d},{causal},{dt}"
        results["errors"][key] = [out.dtype == dtype, list(out.shape) == list(ref.shape),
                                  (out.float() - ref).abs().max().item()]
    try:
        flash_attention_triton(torch.randn(1, 1, 16, 12), torch.randn(1, 1, 16, 12), torch.randn(1, 1, 16, 12))
        results["bad_head_dim"] = "no error"
    except ValueError as e:
        results["bad_head_dim"] = str(e)
    print(json.dumps(results))
    """
)


def test_triton_kernel_in_interpreter_equals_reference():
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["available"]
    for key, (dtype_ok, shape_ok, err) in out["errors"].items():
        assert dtype_ok and shape_ok, key
        tol = 2e-3 if key.endswith("float16") else 1e-5
        assert err < tol, f"{key}: max error {err:.3g} > {tol}"
    assert "head dim" in out["bad_head_dim"]


def test_triton_available_says_why():
    from course_utils.triton_attention import flash_attention_triton, triton_available

    ok, why = triton_available()
    assert isinstance(why, str) and why
    if not ok:  # no GPU and no interpreter in this process: a clear error, not a crash inside Triton
        with pytest.raises(RuntimeError, match="cannot run"):
            flash_attention_triton(*(torch.randn(1, 1, 16, 16) for _ in range(3)))
