"""What only a CUDA GPU can show: run by `make gpu-check`, skipped everywhere else.

* the Triton kernel, compiled for this GPU (not Triton's CPU interpreter), equals PyTorch's SDPA
  in float16 and bfloat16;
* CUDA-event timing (``CudaTimer``) measures the work, and grows with it;
* one float16 step with a ``GradScaler`` and one bfloat16 autocast step train a model;
* ``amp_dtype`` picks what this card computes natively.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_triton_kernel_compiled_natively_equals_sdpa(dtype, causal):
    from course_utils.triton_attention import flash_attention_triton, triton_available

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.fail("TRITON_INTERPRET=1 is set: the kernel would run in the CPU interpreter, not compiled")
    ok, why = triton_available()
    if not ok:
        pytest.skip(why)
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("bfloat16 tensor-core dots need compute capability 8.0+")
    assert why.startswith("compiled for"), why
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 512, 64, device="cuda", dtype=dtype, generator=gen) for _ in range(3))
    ours = flash_attention_triton(q, k, v, causal=causal)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert ours.dtype == dtype and ours.device.type == "cuda"
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(ours.float(), ref.float(), atol=tol, rtol=tol)


def test_cuda_event_timing_measures_the_work():
    from course_utils.timing import CudaTimer

    x_small = torch.randn(512, 512, device="cuda")
    x_big = torch.randn(4096, 4096, device="cuda")
    for x in (x_small, x_big):  # warm up both sizes (cuBLAS picks its kernels on first use)
        x @ x
    torch.cuda.synchronize()
    times = {}
    for name, x in (("small", x_small), ("big", x_big)):
        with CudaTimer() as t:
            for _ in range(5):
                x @ x
        times[name] = t.elapsed_ms
    assert times["small"] > 0
    # 4096³ is 512× the work of 512³: the event timing must see much of that, a launch time would not
    assert times["big"] > 20 * times["small"], times


def test_fp16_step_with_grad_scaler_trains():
    from course_utils.precision import MixedPrecision

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 10)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mp = MixedPrecision("cuda", dtype=torch.float16)
    assert mp.needs_grad_scaler and mp.scaler.is_enabled()
    x, y = torch.randn(128, 64, device="cuda"), torch.randint(0, 10, (128,), device="cuda")
    before = [p.detach().clone() for p in model.parameters()]
    with mp.autocast():
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    assert logits.dtype == torch.float16
    scale = mp.scaler.get_scale()
    mp.step(loss, opt, clip_grad_norm=1.0, parameters=model.parameters())
    assert scale > 1.0  # the loss really was scaled before backward
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_bf16_autocast_step_trains():
    from course_utils.precision import MixedPrecision, cuda_bf16_native

    if not cuda_bf16_native("cuda"):
        pytest.skip("this GPU has no native bfloat16")
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mp = MixedPrecision("cuda", dtype=torch.bfloat16)
    assert not mp.needs_grad_scaler
    x, y = torch.randn(256, 64, device="cuda"), torch.randint(0, 10, (256,), device="cuda")
    losses = []
    for _ in range(20):
        with mp.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        assert logits.dtype == torch.bfloat16
        mp.step(loss, opt)
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_amp_dtype_matches_this_card():
    from course_utils.precision import amp_dtype, precision_report

    major, minor = torch.cuda.get_device_capability()
    expected = torch.bfloat16 if (major >= 8 or torch.version.hip) else torch.float16
    assert amp_dtype("cuda") == expected
    report = precision_report("cuda")
    assert report.grad_scaler == (expected == torch.float16)
    assert report.capability == f"{major}.{minor}"
    print(f"\n{torch.cuda.get_device_name()}: compute capability {major}.{minor}, autocast {expected}")
