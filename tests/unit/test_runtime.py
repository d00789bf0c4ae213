from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from course_utils import by_mode, fast_mode, get_device, seed_everything, setup_notebook
from course_utils.runtime import current_run


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("YES", True), ("0", False), ("", False), ("no", False)])
def test_fast_mode_reads_env(monkeypatch, value, expected):
    monkeypatch.setenv("COURSE_FAST", value)
    assert fast_mode() is expected


def test_by_mode_picks_by_env(monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    assert by_mode(full=100, fast=3) == 3
    monkeypatch.setenv("COURSE_FAST", "0")
    assert by_mode(full=100, fast=3) == 100


def test_seed_everything_makes_all_generators_repeat():
    seed_everything(123)
    first = (random.random(), np.random.rand(), torch.rand(3))
    seed_everything(123)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2])
    seed_everything(124)
    assert not torch.equal(torch.rand(3), first[2])


def test_seed_rejects_non_int():
    with pytest.raises(TypeError, match="seed must be an int, got float"):
        seed_everything(1.5)


def test_get_device_without_gpu_is_cpu(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert get_device() == torch.device("cpu")


def test_get_device_prefers_cuda_when_present(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device() == torch.device("cuda")


def test_requesting_missing_cuda_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        get_device("cuda")


def test_setup_notebook_reports_and_remembers(capsys, monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    run = setup_notebook("42_test", seed=7, device="cpu")
    out = capsys.readouterr().out
    assert "42_test: fast mode on cpu" in out and "seed 7" in out
    assert current_run() is run and run.fast and run.elapsed() >= 0


def test_setup_notebook_turns_tf32_on_for_cuda_only(monkeypatch, capsys):
    previous = torch.get_float32_matmul_precision()
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    try:
        torch.set_float32_matmul_precision("highest")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
        setup_notebook("99_cpu")
        assert torch.get_float32_matmul_precision() == "highest"  # the CPU's numerics stay untouched
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
        setup_notebook("99_gpu")
        assert torch.get_float32_matmul_precision() == "high"
        assert "on cuda (Fake GPU, TF32 matmuls on)" in capsys.readouterr().out
    finally:
        torch.set_float32_matmul_precision(previous)


def test_empty_device_names_and_non_bool_flags_are_refused(capsys):
    with pytest.raises(ValueError, match="prefer must be a device such as"):
        get_device("")
    with pytest.raises(ValueError, match="device must be a device such as"):
        setup_notebook("99_x", device="")
    with pytest.raises(TypeError, match="quiet must be True or False"):
        setup_notebook("99_x", quiet="yes")
    with pytest.raises(TypeError, match="deterministic must be True or False"):
        seed_everything(0, deterministic="no")
