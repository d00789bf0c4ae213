"""The four correctness proofs of scaling out (CPU, gloo, 2 processes), and the distributed helpers.

1. after DDP training every rank holds bit-identical parameters;
2. 2 processes × batch b give the parameters of 1 process × batch 2b (float tolerance), and of
   1 process × batch b with 2 accumulated micro-batches;
3. a run that died and resumed from its checkpoint ends where an uninterrupted run ends;
4. a rank that dies makes the ``torchrun`` job fail, with the failing rank named, within the timeout.

Proofs 1–3 run ``scripts/train_distributed.py``'s ``main`` in processes forked from this one
(the environment ``torchrun`` would set: RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free
MASTER_PORT, GLOO_SOCKET_IFNAME=lo), which saves the seconds of importing torch per process;
proof 4 runs the real ``torchrun`` launcher, since its failure handling is what is tested.
Every launch has a timeout, so a hang fails the test instead of blocking CI.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sklearn.datasets  # noqa: F401  (imported once here, inherited by the forked ranks)
import sklearn.model_selection  # noqa: F401
import torch
import torch.distributed.checkpoint.state_dict  # noqa: F401  (FSDP's imports, inherited too)
import torch.distributed.fsdp  # noqa: F401
import torch.multiprocessing as tmp_mp
from conftest import REPO  # noqa: E402

from course_utils import distributed as D
from course_utils import seed_everything
from course_utils.checkpoint import load_checkpoint, save_state

SCRIPT = REPO / "scripts" / "train_distributed.py"
TIMEOUT_S = 60
STEPS, BATCH = 12, 8
MODEL = ["--dim", "32", "--depth", "1", "--heads", "2", "--mlp-dim", "32", "--patch-size", "4"]
COMMON = ["--steps", str(STEPS), "--log-every", "4", "--lr", "3e-3", "--timeout-s", "30", "--device", "cpu", *MODEL]


def _load_script():
    spec = importlib.util.spec_from_file_location("train_distributed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _worker(rank: int, world_size: int, port: int, argv: list[str]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    torch.set_num_threads(1)
    rc = _load_script().main(argv)
    if rc:
        raise SystemExit(rc)


def launch(world_size: int, argv: list[str], timeout: float = TIMEOUT_S) -> None:
    """Run ``main(argv)`` on ``world_size`` forked processes; raise if one fails or time runs out."""
    ctx = tmp_mp.start_processes(_worker, args=(world_size, D.free_port(), argv), nprocs=world_size,
                                 join=False, start_method="fork")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):  # join raises ProcessRaisedException/ProcessExitedException on failure
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError(f"{world_size} processes did not finish {argv} within {timeout} s")


def _params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The reference runs, shared by the proofs: 2 processes × b, and 1 process × 2b."""
    root = tmp_path_factory.mktemp("ddp")
    launch(2, [*COMMON, "--batch-size", str(BATCH), "--dump-params", str(root / "two"),
               "--log-json", str(root / "two.json")])
    launch(1, [*COMMON, "--batch-size", str(2 * BATCH), "--dump-params", str(root / "one")])
    launch(1, [*COMMON, "--batch-size", str(BATCH), "--grad-accum", "2", "--dump-params", str(root / "accum")])
    return root


def test_ranks_hold_bit_identical_parameters(runs):
    rank0, rank1 = _params(runs / "two" / "rank0.pt"), _params(runs / "two" / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    differ = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert not differ, f"ranks differ in {differ}"
    # the parameters really moved: the test is not comparing two untouched initialisations
    script = _load_script()
    seed_everything(0)
    init = script.build_model(script.parse_args(COMMON)).state_dict()
    moved = max((init[k] - rank0[k]).abs().max().item() for k in init)
    assert moved > 1e-3, f"training barely moved the parameters ({moved:.2g}); the test would prove nothing"


def test_two_processes_equal_one_process_with_twice_the_batch(runs):
    two = _params(runs / "two" / "rank0.pt")
    # The key projection's bias has an exactly zero gradient (adding the same vector to every key
    # shifts a query's scores by a constant; softmax ignores it), so its "gradient" is float noise,
    # which Adam normalises into real updates: no run can reproduce another's noise. Skip it.
    compared = [k for k in two if not k.endswith("k_proj.bias")]
    # 1 process × batch 2b, and 1 process × batch b × 2 accumulated micro-batches: the same global batches
    for other in ("one", "accum"):
        ref = _params(runs / other / "rank0.pt")
        for name in compared:
            # same maths, different summation order: float32 rounding only
            torch.testing.assert_close(two[name], ref[name], rtol=1e-4, atol=2e-5,
                                       msg=lambda m, n=name, o=other: f"{o}, {n}: {m}")


def test_resume_after_a_crash_equals_the_uninterrupted_run(runs, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    half = STEPS // 2
    crashed = [*COMMON, "--batch-size", str(BATCH), "--checkpoint", str(ckpt), "--save-every", str(half),
               "--simulate-failure", f"1:{half + 2}"]
    with pytest.raises(tmp_mp.ProcessExitedException, match="SIGKILL"):
        launch(2, crashed)
    saved = load_checkpoint(ckpt)
    assert saved["step"] == half and saved["config"]["world_size"] == 2
    launch(2, [*COMMON, "--batch-size", str(BATCH), "--checkpoint", str(ckpt), "--resume",
               "--dump-params", str(tmp_path / "resumed")])
    resumed, straight = _params(tmp_path / "resumed" / "rank0.pt"), _params(runs / "two" / "rank0.pt")
    differ = [k for k in straight if not torch.equal(resumed[k], straight[k])]
    assert not differ, f"resumed run differs from the uninterrupted one in {differ}"
    assert load_checkpoint(ckpt)["step"] == STEPS


def test_a_dying_rank_fails_the_torchrun_job_quickly(tmp_path):
    port = D.free_port()
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", TQDM_DISABLE="1",
               MASTER_ADDR="127.0.0.1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--max-restarts=0",
           "--monitor-interval=0.1", str(SCRIPT), *COMMON, "--steps", "100000", "--batch-size", str(BATCH),
           "--simulate-failure", "1:3"]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"the job should fail when a rank dies; output:\n{out[-2000:]}"
    assert "ChildFailedError" in out and "SIGKILL" in out, out[-2000:]
    assert "local_rank: 1" in out, f"the error should name the rank that died:\n{out[-2000:]}"
    assert "done: step" not in out  # the survivor did not carry on alone
    assert elapsed < TIMEOUT_S


def test_fsdp_trains_to_the_ddp_parameters_and_resumes(runs, tmp_path):
    """FSDP2 (fully_shard) runs on CPU/gloo here: sharding changes memory, not the maths."""
    ckpt = tmp_path / "fsdp.pt"
    half = STEPS // 2
    launch(2, [*COMMON, "--stop-at", str(half), "--batch-size", str(BATCH), "--fsdp", "--checkpoint", str(ckpt)])
    assert load_checkpoint(ckpt)["step"] == half
    launch(2, [*COMMON, "--batch-size", str(BATCH), "--fsdp", "--checkpoint", str(ckpt), "--resume",
               "--dump-params", str(tmp_path / "fsdp")])
    fsdp, ddp = _params(tmp_path / "fsdp" / "rank0.pt"), _params(runs / "two" / "rank0.pt")
    assert fsdp.keys() == ddp.keys()
    for name in (k for k in ddp if not k.endswith("k_proj.bias")):  # see the test above
        torch.testing.assert_close(fsdp[name], ddp[name], rtol=1e-4, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_mixed_precision_with_accumulation_keeps_ranks_identical(tmp_path):
    """--amp (bf16 autocast on CPU) and --grad-accum (no_sync) under DDP: the run ends with identical ranks."""
    launch(2, [*COMMON, "--steps", "4", "--batch-size", str(BATCH), "--amp", "--grad-accum", "2",
               "--dump-params", str(tmp_path / "amp")])
    rank0, rank1 = _params(tmp_path / "amp" / "rank0.pt"), _params(tmp_path / "amp" / "rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert all(v.dtype == torch.float32 for v in rank0.values())  # autocast leaves the weights in float32


def test_runs_stay_equal_across_an_epoch_boundary_and_a_resume_inside_the_second_epoch(tmp_path):
    """Batches of 64 per rank: 718 samples a rank, 11 steps an epoch, so 14 steps reach into epoch 1
    (a new shuffle, drawn alike by every rank). 2 processes × 64 equal 1 process × 128 there too, and
    a run stopped at step 12 (one micro-batch into epoch 1) resumes to the uninterrupted run's end."""
    common = [*COMMON, "--steps", "14", "--log-every", "7"]
    launch(2, [*common, "--batch-size", "64", "--dump-params", str(tmp_path / "two")])
    launch(1, [*common, "--batch-size", "128", "--dump-params", str(tmp_path / "one")])
    ckpt = tmp_path / "ckpt.pt"
    launch(2, [*common, "--batch-size", "64", "--stop-at", "12", "--checkpoint", str(ckpt)])
    assert load_checkpoint(ckpt)["step"] == 12
    launch(2, [*common, "--batch-size", "64", "--checkpoint", str(ckpt), "--resume",
               "--dump-params", str(tmp_path / "resumed")])
    two, one = _params(tmp_path / "two" / "rank0.pt"), _params(tmp_path / "one" / "rank0.pt")
    resumed = _params(tmp_path / "resumed" / "rank0.pt")
    assert not [k for k in two if not torch.equal(resumed[k], two[k])], "the resumed run differs"
    for name in (k for k in two if not k.endswith("k_proj.bias")):  # see the test above
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")


# -- helpers ------------------------------------------------------------------------------------


def test_single_process_context_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = D.init_distributed(device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main, ctx.distributed) == (0, 1, "gloo", True, False)
    with pytest.raises(ValueError, match="timeout_s"):
        D.init_distributed(device="cpu", timeout_s=0)


def test_checkpoint_roundtrip_is_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = save_state(tmp_path / "c.pt", model_state=model.state_dict(), optimizer_state=opt.state_dict(),
                      step=3, config={"lr": 1e-3, "name": "x"}, extra={"rng": torch.get_rng_state()})
    ckpt = torch.load(path, weights_only=True)  # loads under the safe unpickler
    assert ckpt["versions"]["torch"] == str(torch.__version__)
    fresh = torch.nn.Linear(3, 2)
    fresh.load_state_dict(ckpt["model"])
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters(), strict=True))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="step"):
        save_state(tmp_path / "d.pt", model_state={}, optimizer_state={}, step=-1, config={})


def test_training_memory_matches_the_zero_paper():
    # ZeRO (Rajbhandari et al., 2020), section 3: 7.5B parameters, 64 GPUs: 120 GB with DDP, 1.9 GB with stage 3
    assert D.training_memory(7_500_000_000, 64, "ddp").total == pytest.approx(120e9)
    assert D.training_memory(7_500_000_000, 64, "fsdp").total == pytest.approx(1.875e9)
    with pytest.raises(ValueError, match="strategy"):
        D.training_memory(10, 2, "zero")


def test_torchrun_command_lines():
    single = D.torchrun_command("t.py", ["--steps", "5"], nproc_per_node=4)
    assert single == ["torchrun", "--standalone", "--nproc_per_node=4", "t.py", "--steps", "5"]
    multi = D.torchrun_command("t.py", nnodes=2, rdzv_endpoint="h:29500")
    assert "--rdzv-backend=c10d" in multi and "--rdzv-endpoint=h:29500" in multi and "--nnodes=2" in multi
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        D.torchrun_command("t.py", nnodes=2)


def test_saved_activation_bytes_counts_activations_not_parameters():
    lin = torch.nn.Linear(64, 64)
    x = torch.randn(10, 64)
    # relu saves its output (10×64 floats); linear saves its input x (10×64): 2 × 2560 bytes
    assert D.saved_activation_bytes(lambda: torch.relu(lin(x)).sum()) == 2 * 10 * 64 * 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = D.saved_activation_bytes(lambda: torch.relu(lin(x)).sum())
    assert bf16 < 2 * 10 * 64 * 4 + lin.weight.numel() * 2 + 1


@pytest.mark.slow
def test_a_torchrun_timeout_leaves_no_process_behind(tmp_path):
    """The notebook's launcher: on a timeout the launcher and both ranks end (they are in sessions of their own)."""
    import threading

    import psutil

    from course_utils.process_guard import ProcessTreeTimeout

    plan = D.launch_plan(2, device="cpu")
    seen: dict[int, tuple[psutil.Process, str]] = {}
    # processes this test process had already (another test's resource tracker) are not the job's
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    stop = threading.Event()

    def watch() -> None:  # every process below this one while the job runs, as `ps` would show them
        while not stop.is_set():
            for p in psutil.Process().children(recursive=True):
                if p.pid in before:
                    continue
                # read the command line again each time: a launcher may exec() into torchrun
                # after it was first seen
                cmd = " ".join(_cmdline(p))
                if p.pid not in seen:
                    seen[p.pid] = (p, cmd)
                elif cmd:
                    seen[p.pid] = (seen[p.pid][0], cmd)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with pytest.raises(ProcessTreeTimeout, match="every process it started were ended"):
            D.run_torchrun(plan, SCRIPT, [*COMMON, "--steps", "1000000", "--batch-size", str(BATCH)],
                           timeout=25, cwd=tmp_path)
    finally:
        stop.set()
        watcher.join()
    workers = [cmd for _, cmd in seen.values() if "train_distributed" in cmd]
    assert len(workers) >= 3, f"expected the launcher and 2 ranks among {[cmd for _, cmd in seen.values()]}"
    # a helper that ends on its own once its parent is gone (multiprocessing's resource tracker
    # reads its pipe until EOF) gets a few seconds on a loaded machine
    psutil.wait_procs([p for p, _ in seen.values()], timeout=5)
    survivors = []
    for p, cmd in seen.values():
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                survivors.append(cmd)
        except psutil.NoSuchProcess:
            pass
    assert survivors == [], f"processes outlived the timeout: {survivors}"


def _cmdline(p) -> list[str]:
    import psutil

    try:
        return p.cmdline()
    except psutil.Error:
        return []
