"""The launch plan fits the machine: 0, 1, 2 and 8 GPUs (``torch.cuda.device_count`` mocked)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
from conftest import REPO  # noqa: E402

from course_utils import distributed as D
from course_utils.distributed import LaunchPlan, launch_plan


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has ``n`` GPUs (and NCCL)."""
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)

    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)

    return set_count


@pytest.mark.parametrize("count,nproc,expected", [
    (0, None, (2, "gloo", "cpu")),
    (0, 4, (4, "gloo", "cpu")),
    (1, None, (1, "nccl", "cuda")),
    (1, 1, (1, "nccl", "cuda")),
    (1, 2, (2, "gloo", "cpu")),   # the 2-rank demo on one GPU: CPU processes, never cuda:1
    (2, None, (2, "nccl", "cuda")),
    (2, 2, (2, "nccl", "cuda")),
    (2, 3, (3, "gloo", "cpu")),
    (8, None, (8, "nccl", "cuda")),
    (8, 2, (2, "nccl", "cuda")),
])
def test_plan_for_each_machine(gpus, count, nproc, expected):
    gpus(count)
    plan = launch_plan(nproc)
    assert (plan.nproc, plan.backend, plan.device) == expected
    assert plan.gpus == count
    assert str(plan).startswith(f"launch plan: {expected[0]} process")


def test_every_planned_rank_has_a_device_of_its_own(gpus):
    for count in range(9):
        gpus(count)
        for nproc in (None, *range(1, 11)):
            plan = launch_plan(nproc)
            devices = plan.devices()
            assert len(devices) == plan.nproc
            cuda = [d for d in devices if d.startswith("cuda")]
            assert len(set(cuda)) == len(cuda), f"two ranks share a GPU: {plan}"
            assert all(int(d.split(":")[1]) < count for d in cuda), f"a rank got a GPU that is not there: {plan}"
            assert (plan.backend == "nccl") == (plan.device == "cuda")


def test_one_gpu_says_why_the_demo_runs_on_the_cpu(gpus):
    gpus(1)
    plan = launch_plan(2)
    assert "NCCL refuses two" in plan.reason and "2 CPU processes with gloo" in plan.reason
    assert "launch_plan(1)" in plan.reason  # and how to train on the GPU instead
    assert plan.script_args(["--steps", "5"]) == ["--steps", "5", "--device", "cpu"]
    assert plan.env({})["OMP_NUM_THREADS"] == "1"


def test_notebook_15_on_one_gpu_would_run(gpus, monkeypatch):
    """Notebook 15 launches its 2-rank runs with launch_plan(2) and run_torchrun; on one GPU every
    rank then joins on the CPU: the training script's init_distributed, given the plan's --device,
    never touches cuda:1 (which would fail in set_device, and NCCL would refuse two ranks on one GPU)."""
    gpus(1)
    plan = launch_plan(2)
    source = "".join("".join(c["source"]) for c in json.loads(
        (REPO / "notebooks" / "15_scaling_out.ipynb").read_text(encoding="utf-8"))["cells"])
    assert "launch_plan(2)" in source and "run_torchrun(" in source
    set_device_calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: set_device_calls.append(device))
    for rank, device in enumerate(plan.devices()):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.delenv("WORLD_SIZE", raising=False)  # no process group here; only the device choice
        argv = plan.script_args([])
        ctx = D.init_distributed(device=argv[argv.index("--device") + 1])
        assert ctx.device == torch.device(device) == torch.device("cpu") and ctx.backend == "gloo"
    assert set_device_calls == []


def test_the_benchmark_and_readme_use_the_plan():
    assert "launch_plan(" in (REPO / "benchmarks" / "bench_scaling.py").read_text(encoding="utf-8")
    assert "python -m course_utils.distributed" in (REPO / "README.md").read_text(encoding="utf-8")


def test_cpu_can_be_forced(gpus, monkeypatch):
    gpus(8)
    assert launch_plan(device="cpu").device == "cpu"
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    plan = launch_plan(4)
    assert (plan.nproc, plan.backend, plan.device) == (4, "gloo", "cpu") and "CPU requested" in plan.reason
    monkeypatch.setenv("COURSE_DEVICE", "mps")  # torch.distributed has no MPS backend
    assert launch_plan(2).device == "cpu"


def test_windows_without_nccl_drives_gpus_with_gloo(gpus, monkeypatch):
    gpus(2)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    plan = launch_plan()
    assert (plan.nproc, plan.backend, plan.device) == (2, "gloo", "cuda")


def test_bad_requests_are_named(gpus):
    gpus(0)
    with pytest.raises(ValueError, match="nproc must be a positive int .* got 0"):
        launch_plan(0)
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or None, got 'mps'"):
        launch_plan(2, device="mps")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        launch_plan(2, device="cuda")
    with pytest.raises(TypeError, match="plan must be a LaunchPlan"):
        D.run_torchrun("cpu", "script.py")


def test_command_line_prints_plan_and_command(gpus, capsys):
    gpus(0)
    assert D.main(["--nproc", "2", "--", "--steps", "800"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("launch plan: 2 processes, backend gloo, device cpu.")
    assert out[1].endswith("torchrun --standalone --nproc_per_node=2 scripts/train_distributed.py --steps 800 --device cpu")
    assert "OMP_NUM_THREADS=1" in out[1]


def test_plan_prints_the_torchrun_line():
    plan = LaunchPlan(nproc=8, backend="nccl", device="cuda", gpus=8, reason="8 GPUs")
    assert plan.torchrun("train.py") == ["torchrun", "--standalone", "--nproc_per_node=8", "train.py", "--device", "cuda"]
    assert plan.devices()[-1] == "cuda:7"
    assert "OMP_NUM_THREADS" not in plan.env({})


def test_plans_and_command_lines_name_bad_arguments():
    with pytest.raises(ValueError, match="backend must be one of 'gloo', 'nccl'"):
        LaunchPlan(nproc=2, backend="mpi", device="cpu", gpus=0, reason="x")
    with pytest.raises(ValueError, match="nproc must be a positive int"):
        LaunchPlan(nproc=0, backend="gloo", device="cpu", gpus=0, reason="x")
    with pytest.raises(ValueError, match="device must be a device such as"):
        launch_plan(2, device="gpu0")
    with pytest.raises(TypeError, match="script_args must be a list of str"):
        D.torchrun_command("train.py", "--steps 3")
    with pytest.raises(ValueError, match="rdzv_endpoint must be 'host:port'"):
        D.torchrun_command("train.py", nnodes=2, rdzv_endpoint="node0")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        D.unwrap("model")
    with pytest.raises(TypeError, match="value must be a number"):
        D.all_reduce_mean("2.5")
    with pytest.raises(ValueError, match=r"timeout_s must be a real number in \(0.0, inf\)"):
        D.init_distributed(device="cpu", timeout_s=float("inf"))
    with pytest.raises(ValueError, match="host must be an IPv4 address or name of this machine"):
        D.free_port("no such host.invalid")
    assert D.torchrun_command("./t.py", ["--x"])[-2:] == ["./t.py", "--x"]  # the path as given
