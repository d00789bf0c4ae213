from __future__ import annotations

import ast
import warnings
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO  # noqa: E402

from course_utils import precision
from course_utils.precision import (
    MixedPrecision,
    _has_emulation_argument,
    amp_dtype,
    cuda_bf16_native,
    enable_tf32,
    precision_report,
)


def test_cpu_uses_bf16_without_scaler():
    mp = MixedPrecision("cpu")
    assert mp.dtype == torch.bfloat16 and not mp.scaler.is_enabled()
    report = precision_report("cpu")
    assert report.autocast_dtype == "bfloat16" and report.bf16 and not report.grad_scaler
    assert "GradScaler needed      no" in str(report)


def fake_gpu(monkeypatch, capability: tuple[int, int], emulated_bf16: bool = True) -> None:
    """Pretend this machine has one CUDA GPU of the given compute capability.

    PyTorch's own ``torch.cuda.is_bf16_supported`` runs unchanged against the fake: it reads
    the capability, and (asked about emulation) tries a bf16 tensor, which on a pre-Ampere GPU
    succeeds through emulation (``emulated_bf16``).
    """
    major, minor = capability
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(major=major, minor=minor, name=f"fake sm_{major}{minor}"))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: emulated_bf16, raising=False)
    monkeypatch.setattr(torch.version, "hip", None)


# V100 (7.0) and T4 / RTX 20xx (7.5): float16 with a GradScaler; A100 (8.0) and H100 (9.0): bf16.
@pytest.mark.parametrize("capability,dtype", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                              ((8, 0), torch.bfloat16), ((8, 6), torch.bfloat16),
                                              ((9, 0), torch.bfloat16)])
def test_amp_dtype_on_every_gpu_generation(monkeypatch, capability, dtype):
    fake_gpu(monkeypatch, capability)
    assert amp_dtype("cuda") == dtype
    assert amp_dtype("cuda:0") == dtype
    mp = MixedPrecision("cuda")
    assert mp.dtype == dtype
    assert mp.needs_grad_scaler == (dtype == torch.float16)
    report = precision_report("cuda")
    assert report.autocast_dtype == str(dtype).removeprefix("torch.")
    assert report.grad_scaler == (dtype == torch.float16)
    assert report.bf16 == (dtype == torch.bfloat16)  # native bf16 only
    assert report.tf32 == (capability[0] >= 8)
    assert f"compute capability     {capability[0]}.{capability[1]}" in str(report)


def test_emulated_bf16_does_not_count(monkeypatch):
    """Current PyTorch says bf16 is 'supported' on a T4 (emulated): the course must not take it."""
    fake_gpu(monkeypatch, (7, 5), emulated_bf16=True)
    if _has_emulation_argument():
        assert torch.cuda.is_bf16_supported()  # the trap: emulation counts by default
    assert amp_dtype("cuda") == torch.float16


def test_older_torch_without_including_emulation_uses_the_capability(monkeypatch):
    fake_gpu(monkeypatch, (7, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # an old signature, emulation counted
    assert not precision._has_emulation_argument()
    assert amp_dtype("cuda") == torch.float16
    fake_gpu(monkeypatch, (8, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert amp_dtype("cuda") == torch.bfloat16


def test_rocm_has_bf16(monkeypatch):
    fake_gpu(monkeypatch, (9, 0))
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert cuda_bf16_native("cuda") and amp_dtype("cuda") == torch.bfloat16


def test_no_gpu_means_no_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not cuda_bf16_native("cuda") and amp_dtype("cuda") == torch.float16
    assert not cuda_bf16_native("cpu")


def test_enable_tf32_switches_float32_matmuls_to_high(monkeypatch):
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        enable_tf32()
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_tf32_is_set_in_one_place():
    """Only precision.enable_tf32 touches the float32 matmul precision; everyone else calls it."""
    places = []
    for folder in ("course_utils", "scripts", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                called = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "set_float32_matmul_precision"
                assigned = isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Attribute) and t.attr in ("allow_tf32", "fp32_precision") for t in node.targets)
                if called or assigned:
                    places.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert places == [places[0]] and places[0].startswith("course_utils/precision.py"), places


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


def test_step_refuses_bad_input_before_touching_the_weights():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mp = MixedPrecision("cpu")
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.ones(2, 3)).sum()
    with pytest.raises(ValueError, match="loss must be a single number"):
        mp.step(model(torch.ones(2, 3)).squeeze(-1), opt)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.optimizer.Optimizer"):
        mp.step(loss, "sgd")
    with pytest.raises(ValueError, match=r"clip_grad_norm must be a real number in \(0.0, inf\)"):
        mp.step(loss, opt, clip_grad_norm=-1.0, parameters=model.parameters())
    with pytest.raises(ValueError, match="parameters must hold the model's parameters"):
        mp.step(loss, opt, clip_grad_norm=1.0, parameters=[])
    assert all(p.grad is None for p in model.parameters())  # no backward ran
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(TypeError, match="enabled must be True or False"):
        MixedPrecision("cpu", enabled="no")
