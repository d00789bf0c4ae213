"""Resuming `scripts/train_distributed.py` never rewrites a checkpoint it did not advance, and
refuses options that differ from the checkpoint's (a different model or trajectory)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO  # noqa: E402

pytestmark = pytest.mark.slow  # each test trains a small ViT for a few steps, in a subprocess

SCRIPT = REPO / "scripts" / "train_distributed.py"
BASE = ["--device", "cpu", "--batch-size", "16", "--log-every", "2", "--dim", "32", "--depth", "1",
        "--heads", "2", "--mlp-dim", "32"]


def _train(*args: str) -> subprocess.CompletedProcess:
    env_threads = {"OMP_NUM_THREADS": "1"}
    import os

    return subprocess.run([sys.executable, str(SCRIPT), *BASE, *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env_threads})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("resume") / "finished.pt"
    result = _train("--steps", "4", "--checkpoint", str(ckpt))
    assert result.returncode == 0, result.stderr[-2000:]
    return ckpt


@pytest.fixture(scope="module")
def preempted(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("resume") / "preempted.pt"
    result = _train("--steps", "6", "--stop-at", "2", "--checkpoint", str(ckpt))
    assert result.returncode == 0, result.stderr[-2000:]
    return ckpt


@pytest.mark.parametrize("steps", ["4", "3"])
def test_resuming_a_finished_run_says_so_and_leaves_the_checkpoint(finished, steps):
    before = finished.read_bytes()
    result = _train("--steps", steps, "--checkpoint", str(finished), "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "is already finished: it holds step 4" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert finished.read_bytes() == before


@pytest.mark.parametrize("option, value, named", [
    ("--heads", "4", "--heads: checkpoint 2, this run 4"),          # same tensor shapes, other model
    ("--lr", "0.01", "--lr: checkpoint 0.003, this run 0.01"),
    ("--steps", "8", "--steps: checkpoint 6, this run 8"),          # the schedule spans --steps
])
def test_resuming_with_other_options_is_refused_by_name(preempted, option, value, named):
    before = preempted.read_bytes()
    args = ["--steps", "6", "--checkpoint", str(preempted), "--resume"]
    if option == "--steps":
        args[1] = value
    result = _train(*args, option, value) if option != "--steps" else _train(*args)
    assert result.returncode != 0
    assert "cannot resume from" in result.stderr and named in result.stderr, result.stderr[-2000:]
    assert preempted.read_bytes() == before


def test_a_stop_at_before_the_checkpoint_does_nothing(preempted):
    before = preempted.read_bytes()
    result = _train("--steps", "6", "--stop-at", "1", "--checkpoint", str(preempted), "--resume")
    assert result.returncode == 0 and "nothing to do" in result.stdout + result.stderr
    assert preempted.read_bytes() == before


def test_resuming_with_the_same_options_advances_the_checkpoint(tmp_path):
    ckpt = tmp_path / "k.pt"
    assert _train("--steps", "4", "--stop-at", "2", "--checkpoint", str(ckpt)).returncode == 0
    result = _train("--steps", "4", "--checkpoint", str(ckpt), "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in result.stdout + result.stderr
    import torch

    assert torch.load(ckpt, weights_only=True)["step"] == 4
