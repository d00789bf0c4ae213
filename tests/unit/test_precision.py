from __future__ import annotations

import warnings

import pytest
import torch

from course_utils.precision import MixedPrecision, amp_dtype, precision_report


def test_cpu_uses_bf16_without_scaler():
    mp = MixedPrecision("cpu")
    assert mp.dtype == torch.bfloat16 and not mp.scaler.is_enabled()
    report = precision_report("cpu")
    assert report.autocast_dtype == "bfloat16" and report.bf16 and not report.grad_scaler
    assert "GradScaler needed      no" in str(report)


def test_cuda_dtype_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype("cuda") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype("cuda") == torch.bfloat16


def test_bad_dtype_and_device_are_named():
    with pytest.raises(ValueError, match="float16 or torch.bfloat16, got torch.float32"):
        MixedPrecision("cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="no mixed-precision rule for device type 'meta'"):
        amp_dtype("meta")


def test_autocast_changes_matmul_dtype_and_disabled_does_not():
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with MixedPrecision("cpu").autocast():
        assert layer(x).dtype == torch.bfloat16
    with MixedPrecision("cpu", enabled=False).autocast():
        assert layer(x).dtype == torch.float32


def test_step_trains_and_clips_without_future_warnings():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mp = MixedPrecision("cpu")
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        losses = []
        for _ in range(20):
            with mp.autocast():
                loss = torch.nn.functional.mse_loss(model(x).float(), y)
            mp.step(loss, opt, clip_grad_norm=1.0, parameters=model.parameters())
            losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in model.parameters())  # step zeroes the gradients
    with pytest.raises(ValueError, match="pass parameters=model.parameters"):
        with mp.autocast():
            loss = model(x).float().sum()
        mp.step(loss, opt, clip_grad_norm=1.0)
