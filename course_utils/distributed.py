"""Scaling out: the pieces that ``scripts/train_distributed.py``, notebook 15 and the tests share.

The course does not launch processes itself: PyTorch's ``torchrun`` starts one process per
device and tells each its ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` through the environment.
This module reads them and wraps ``torch.distributed``:

* :func:`choose_backend`, :func:`init_distributed`, :func:`cleanup_distributed` — NCCL on
  GPUs, gloo on CPUs, chosen automatically; a single process without ``torchrun`` works too;
* :func:`rank_zero_print`, :func:`progress` — only rank 0 talks (one progress bar, not N);
* :func:`flat_parameters`, :func:`ranks_identical`, :func:`all_reduce_mean` — checks and
  logging across ranks;
* :func:`training_memory` — the memory arithmetic of DDP against FSDP (ZeRO stage 3);
* :func:`launch_plan` — how many processes, which backend and which device fit this machine
  (0 GPUs: CPU processes with gloo; 1 GPU: one NCCL process, or CPU processes for a multi-rank
  demo; several GPUs: one process per GPU with NCCL); ``python -m course_utils.distributed``
  prints it with the command line;
* :func:`torchrun_command` — the single-node and multi-node command lines;
* :func:`run_torchrun` — run a script under ``torchrun`` from Python (a notebook): its own
  process group, and every process ended on a timeout, an interrupt or a dead kernel;
* :func:`saved_activation_bytes` — how much memory autograd keeps for the backward pass.

Checkpoints are :mod:`course_utils.checkpoint`'s: rank 0 writes the gathered state dicts with
:func:`~course_utils.checkpoint.save_state`, and every rank reads them back with
:func:`~course_utils.checkpoint.load_checkpoint` (``weights_only=True``).
"""

from __future__ import annotations

import datetime as _dt
import os
import shlex
import socket
import sys
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .checks import (
    check_bool,
    check_callable,
    check_device,
    check_instance,
    check_one_of,
    check_path,
    check_real,
    check_sizes,
    check_str,
    describe,
)

__all__ = [
    "DistContext",
    "LaunchPlan",
    "MemoryEstimate",
    "all_reduce_mean",
    "choose_backend",
    "cleanup_distributed",
    "flat_parameters",
    "free_port",
    "init_distributed",
    "launch_plan",
    "progress",
    "rank_zero_print",
    "ranks_identical",
    "run_torchrun",
    "saved_activation_bytes",
    "torchrun_command",
    "training_memory",
    "unwrap",
]


# -- process group ---------------------------------------------------------------------------


def choose_backend(device: torch.device | str | None = None) -> str:
    """``"nccl"`` for CUDA devices (when PyTorch has NCCL), ``"gloo"`` otherwise.

    With no ``device``, the best device of this machine decides.

    >>> choose_backend("cpu")
    'gloo'
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = _parse_device("device", device)
    if device.type == "cuda" and dist.is_nccl_available():
        return "nccl"
    if not dist.is_gloo_available():
        raise RuntimeError("this PyTorch build has neither NCCL (for GPUs) nor gloo (for CPUs)")
    return "gloo"


def _parse_device(name: str, device: object) -> torch.device:
    """A device name such as ``"cpu"`` or ``"cuda:1"`` (or a ``torch.device``), whether or not this
    machine has it: a plan may be made for another machine."""
    if isinstance(device, torch.device):
        return device
    check_str(name, device, allow_empty=False)
    try:
        return torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"{name} must be a device such as 'cpu', 'cuda' or 'cuda:0', got "
                         f"{device!r}") from None


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the number of processes, its device and backend.

    >>> ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
    >>> ctx.is_main, ctx.distributed
    (True, False)
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs, writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is running (``torchrun`` with any number of processes)."""
        return dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(
    backend: str | None = None, device: str | None = None, timeout_s: float = 120.0
) -> DistContext:
    """Join the process group that ``torchrun`` set up (or run alone when there is none).

    Reads ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (set by ``torchrun``). The device is
    ``cuda:LOCAL_RANK`` when CUDA is there (each process owns one GPU), else the CPU; the backend
    follows it (:func:`choose_backend`). ``timeout_s`` bounds every collective: a rank that
    waits longer for its peers raises instead of hanging forever.

    Without ``torchrun`` (a plain ``python script.py``) this is a single process, rank 0 of 1,
    and no process group is created.

    >>> ctx = init_distributed(device="cpu")     # no torchrun here: one process
    >>> ctx.rank, ctx.world_size, ctx.distributed
    (0, 1, False)
    """
    check_real("timeout_s", timeout_s, 0.0, low_open=True)
    if backend is not None:
        check_one_of("backend", backend, ("gloo", "nccl"))
    if device is not None:
        check_device("device", device)
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)  # each process owns the GPU of its local rank
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} was requested but CUDA is not available here")
        torch.cuda.set_device(dev)
    backend = backend or choose_backend(dev)
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            timeout=_dt.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)


def cleanup_distributed() -> None:
    """Leave the process group (a no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (for ``--rdzv-endpoint`` in tests).

    >>> 0 < free_port() < 65536
    True
    """
    check_str("host", host, allow_empty=False)
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        try:
            s.bind((host, 0))
        except (OSError, UnicodeError) as exc:
            raise ValueError(f"host must be an IPv4 address or name of this machine, such as "
                             f"'127.0.0.1', got {host!r} ({exc})") from None
        return s.getsockname()[1]


# -- rank-aware logging ------------------------------------------------------------------------


def _is_main() -> bool:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return _env_int("RANK", 0) == 0


def rank_zero_print(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only (every rank runs the same code; one of them should talk).

    >>> rank_zero_print("hello from rank 0")
    hello from rank 0
    """
    if _is_main():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any):
    """A ``tqdm`` progress bar shown on rank 0 only (``disable`` on the other ranks).

    >>> sum(progress(range(3), disable=True))
    3
    """
    from tqdm.auto import tqdm

    if kwargs.get("disable") is not None:  # None: tqdm's own choice (off when not a terminal)
        check_bool("disable", kwargs["disable"])
    if not _is_main():
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)


# -- model state across ranks ----------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` (or ``torch.compile``) wrapper.

    >>> m = nn.Linear(2, 2)
    >>> unwrap(m) is m
    True
    """
    check_instance("model", model, nn.Module)
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """Every parameter of ``model``, flattened into one float32 CPU vector (in ``named_parameters`` order).

    >>> flat_parameters(nn.Linear(3, 2)).shape     # 3·2 weights + 2 biases
    torch.Size([8])
    """
    check_instance("model", model, nn.Module)
    params = [p.detach().reshape(-1).to("cpu", torch.float32) for p in unwrap(model).parameters()]
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameters")
    return torch.cat(params)


def ranks_identical(model: nn.Module) -> bool:
    """True when every rank holds bit-identical parameters (a collective: call it on all ranks).

    Each rank gathers everybody's parameters and compares them with ``torch.equal``: exact
    equality, not a tolerance. With a single process it is trivially True.

    >>> ranks_identical(nn.Linear(2, 2))
    True
    """
    check_instance("model", model, nn.Module)
    if not (dist.is_available() and dist.is_initialized()):
        return True
    mine = flat_parameters(model)
    backend_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    mine = mine.to(backend_device)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    same = torch.tensor([all(torch.equal(gathered[0], g) for g in gathered[1:])], device=backend_device)
    return bool(same.item())


def all_reduce_mean(value: float, device: torch.device | str = "cpu") -> float:
    """The mean of ``value`` over all ranks (its own value with a single process).

    >>> all_reduce_mean(2.5)
    2.5
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # NaN and inf pass: a mean
        raise TypeError(f"value must be a number, got {describe(value)}")
    check_device("device", device)
    if not (dist.is_available() and dist.is_initialized()):
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / dist.get_world_size()


# -- memory arithmetic -------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU for the model states of mixed-precision Adam training (activations not included)."""

    strategy: str
    world_size: int
    params: float
    grads: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer

    def __str__(self) -> str:
        gb = 1e9
        return (f"{self.strategy} on {self.world_size} GPU(s): params {self.params / gb:.1f} GB + grads "
                f"{self.grads / gb:.1f} GB + optimizer {self.optimizer / gb:.1f} GB = {self.total / gb:.1f} GB per GPU")


def training_memory(num_params: int, world_size: int = 1, strategy: str = "ddp") -> MemoryEstimate:
    """Per-GPU memory of the *model states* for mixed-precision Adam, as in the ZeRO paper.

    Per parameter: 2 bytes of 16-bit weights, 2 bytes of 16-bit gradients, and 12 bytes of
    optimizer state (a float32 master copy of the weight, Adam's first and second moments):
    16 bytes. ``"ddp"`` keeps all of it on every GPU; ``"fsdp"`` (ZeRO stage 3, PyTorch's
    ``FULL_SHARD``) splits all three over ``world_size`` GPUs, gathering one layer's weights at
    a time only while that layer runs (not counted here).

    >>> print(training_memory(7_000_000_000, 1, "ddp"))
    ddp on 1 GPU(s): params 14.0 GB + grads 14.0 GB + optimizer 84.0 GB = 112.0 GB per GPU
    >>> print(training_memory(7_000_000_000, 8, "fsdp"))
    fsdp on 8 GPU(s): params 1.8 GB + grads 1.8 GB + optimizer 10.5 GB = 14.0 GB per GPU
    """
    if isinstance(num_params, bool) or not isinstance(num_params, int) or num_params <= 0:
        raise ValueError(f"num_params must be a positive int, got {num_params!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size <= 0:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}")
    share = 1.0 / world_size if strategy == "fsdp" else 1.0
    return MemoryEstimate(strategy, world_size, params=2.0 * num_params * share,
                          grads=2.0 * num_params * share, optimizer=12.0 * num_params * share)


# -- command lines -----------------------------------------------------------------------------


def torchrun_command(script: str, script_args: Iterable[str] = (), nproc_per_node: int = 2, nnodes: int = 1,
                     rdzv_endpoint: str | None = None, rdzv_id: str = "course-job") -> list[str]:
    """The ``torchrun`` command line: ``--standalone`` on one machine, c10d rendezvous on several.

    Run the same multi-node command on every node; they meet at ``rdzv_endpoint`` (host:port
    of any one of them, reachable from all).

    >>> print(shlex.join(torchrun_command("scripts/train_distributed.py", ["--steps", "100"])))
    torchrun --standalone --nproc_per_node=2 scripts/train_distributed.py --steps 100
    >>> print(shlex.join(torchrun_command("train.py", nproc_per_node=8, nnodes=2,
    ...                                   rdzv_endpoint="node0.example.org:29500")))
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=node0.example.org:29500 --rdzv-id=course-job train.py
    """
    check_path("script", script)
    _check_script_args("script_args", script_args)
    check_sizes(nproc_per_node=nproc_per_node, nnodes=nnodes)
    if rdzv_endpoint is not None:
        _check_endpoint(rdzv_endpoint)
    check_str("rdzv_id", rdzv_id, allow_empty=False)
    script = os.fspath(script)
    if nnodes == 1 and rdzv_endpoint is None:
        launcher = ["torchrun", "--standalone", f"--nproc_per_node={nproc_per_node}"]
    else:
        if rdzv_endpoint is None:
            raise ValueError("a multi-node job needs rdzv_endpoint='host:port' (a node every node can reach)")
        launcher = ["torchrun", f"--nnodes={nnodes}", f"--nproc_per_node={nproc_per_node}", "--rdzv-backend=c10d",
                    f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id}"]
    return [*launcher, script, *script_args]


def _check_script_args(name: str, args: object) -> None:
    """A list (or tuple) of str: a bare string would be split into its characters."""
    if isinstance(args, str) or not isinstance(args, (list, tuple)):
        raise TypeError(f"{name} must be a list of str (the script's arguments), got {describe(args)}")
    for i, arg in enumerate(args):
        check_instance(f"{name}[{i}]", arg, str)


def _check_endpoint(endpoint: object) -> None:
    """``host:port``, with a port in 1..65535."""
    check_str("rdzv_endpoint", endpoint, allow_empty=False)
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"rdzv_endpoint must be 'host:port' with a port in 1..65535, got {endpoint!r}")


# -- launch plan -------------------------------------------------------------------------------


def loopback_interface() -> str | None:
    """The name of the network interface that carries 127.0.0.1 (``lo`` on Linux, ``lo0`` on macOS).

    gloo needs it (``GLOO_SOCKET_IFNAME``) to keep single-machine traffic off the real network;
    None where no interface reports the loopback address (gloo then picks one itself).

    >>> loopback_interface() in (None, "lo", "lo0") or isinstance(loopback_interface(), str)
    True
    """
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addresses):
            return name
    return None


@dataclass(frozen=True)
class LaunchPlan:
    """What ``torchrun`` should start on this machine: processes, backend, device, and why.

    >>> plan = LaunchPlan(nproc=2, backend="gloo", device="cpu", gpus=0, reason="no GPU: 2 CPU processes")
    >>> print(shlex.join(plan.torchrun("scripts/train_distributed.py", ["--steps", "10"])))
    torchrun --standalone --nproc_per_node=2 scripts/train_distributed.py --steps 10 --device cpu
    """

    nproc: int
    backend: str
    device: str
    gpus: int
    reason: str

    def __post_init__(self) -> None:
        check_sizes(nproc=self.nproc)
        check_sizes(0, gpus=self.gpus)
        check_one_of("backend", self.backend, ("gloo", "nccl"))
        check_one_of("device", self.device, ("cpu", "cuda"))
        check_str("reason", self.reason)

    def devices(self) -> list[str]:
        """The device of each local rank (``cuda:LOCAL_RANK`` on GPUs, ``cpu`` otherwise)."""
        if self.device == "cuda":
            return [f"cuda:{rank}" for rank in range(self.nproc)]
        return ["cpu"] * self.nproc

    def script_args(self, args: Iterable[str] = ()) -> list[str]:
        """``args`` plus ``--device`` for the training script, so every rank uses the planned device."""
        _check_script_args("args", args)
        return [*args, "--device", self.device]

    def torchrun(self, script: str, args: Iterable[str] = ()) -> list[str]:
        """The ``torchrun`` command line to type for this plan."""
        return torchrun_command(script, self.script_args(args), nproc_per_node=self.nproc)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for the launcher: one thread per CPU rank, gloo on the loopback interface."""
        env = dict(os.environ if base is None else base)
        if self.device == "cpu":
            env["OMP_NUM_THREADS"] = "1"  # W processes on W cores, not W × all cores
            interface = loopback_interface()
            if interface is not None:
                env.setdefault("GLOO_SOCKET_IFNAME", interface)
        return env

    def __str__(self) -> str:
        return f"launch plan: {_count(self.nproc, 'process')}, backend {self.backend}, device {self.device}. {self.reason}"


def _count(n: int, noun: str) -> str:
    """``1 process``, ``2 processes``, ``1 GPU``, ``8 GPUs``."""
    return f"{n} {noun}" + ("" if n == 1 else ("es" if noun.endswith("s") else "s"))


def launch_plan(nproc: int | None = None, device: str | None = None) -> LaunchPlan:
    """Processes, backend and device for a ``torchrun`` job on this machine.

    * no GPU: ``nproc`` CPU processes (default 2) with gloo, one thread each;
    * one GPU: one process with NCCL on it, or — when ``nproc`` asks for more ranks than there
      are GPUs, as a 2-rank demo does — ``nproc`` CPU processes with gloo: NCCL refuses two
      ranks on one GPU, and rank 1 would look for a ``cuda:1`` that does not exist;
    * several GPUs: one process per GPU (default: all of them) with NCCL.

    ``device="cpu"`` (or ``COURSE_DEVICE=cpu``) plans CPU processes whatever the machine has.
    The plan says in one sentence which case applied (``print(plan)``).

    >>> plan = launch_plan(2, device="cpu")
    >>> plan.nproc, plan.backend, plan.device
    (2, 'gloo', 'cpu')
    """
    if nproc is not None and (isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1):
        raise ValueError(f"nproc must be a positive int (the number of ranks on this machine) or None, got {nproc!r}")
    if device is not None:
        _parse_device("device", device)
    forced = device or os.environ.get("COURSE_DEVICE") or None
    if forced is not None and torch.device(forced).type not in ("cpu", "cuda"):
        if device is not None:
            raise ValueError(f"device must be 'cpu', 'cuda' or None, got {device!r}")
        forced = "cpu"  # COURSE_DEVICE=mps: torch.distributed has no MPS backend; CPU processes
    gpus = torch.cuda.device_count()
    gpu_backend = "nccl" if dist.is_nccl_available() else "gloo"  # no NCCL on Windows: gloo drives GPUs there
    if forced is not None and torch.device(forced).type == "cpu":
        n = nproc or 2
        return LaunchPlan(n, "gloo", "cpu", gpus, f"CPU requested: {_count(n, 'CPU process')} with gloo, one thread each.")
    if forced is not None and gpus == 0:
        raise RuntimeError(f"device {forced!r} was requested but this machine has no CUDA GPU")
    if gpus == 0:
        n = nproc or 2
        return LaunchPlan(n, "gloo", "cpu", 0, f"No GPU here: {_count(n, 'CPU process')} with gloo, one thread each.")
    if nproc is None:
        return LaunchPlan(gpus, gpu_backend, "cuda", gpus,
                          f"{_count(gpus, 'GPU')}: one process per GPU with {gpu_backend}.")
    if nproc <= gpus:
        return LaunchPlan(nproc, gpu_backend, "cuda", gpus,
                          f"{_count(gpus, 'GPU')}: {_count(nproc, 'process')}, one per GPU, with {gpu_backend}.")
    return LaunchPlan(nproc, "gloo", "cpu", gpus,
                      f"{_count(gpus, 'GPU')} but {nproc} ranks asked for: a GPU takes one rank (NCCL refuses two), so "
                      f"the {nproc}-rank demo runs as {nproc} CPU processes with gloo; "
                      f"launch_plan({gpus}) trains on the GPU(s) instead.")


def run_torchrun(plan: LaunchPlan, script: str | os.PathLike, args: Iterable[str] = (), timeout: float = 300.0,
                 cwd: str | os.PathLike | None = None):
    """Run ``script`` under ``torchrun`` as ``plan`` says, from Python; return the finished process.

    The launcher runs in a process group of its own, and the launcher and every worker are
    ended on a timeout, an interrupt (the notebook's stop button) or when the calling kernel
    dies (:func:`course_utils.process_guard.run_process_tree`). A non-zero exit raises a
    ``RuntimeError`` with the end of the output.
    """
    from .process_guard import run_process_tree

    if not isinstance(plan, LaunchPlan):
        raise TypeError(f"plan must be a LaunchPlan (from launch_plan()), got {type(plan).__name__}")
    check_real("timeout", timeout, 0.0, low_open=True)
    if cwd is not None:
        check_path("cwd", cwd)
    # the command a learner would type, with torchrun run by this Python (no PATH lookup)
    cmd = [sys.executable, "-m", "torch.distributed.run", *plan.torchrun(script, args)[1:]]
    env = plan.env()
    env.setdefault("TQDM_DISABLE", "1")
    result = run_process_tree(cmd, timeout=timeout, env=env, cwd=cwd)
    if result.returncode:
        raise RuntimeError(f"torchrun failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


# -- activation memory -------------------------------------------------------------------------


def saved_activation_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for the backward pass while ``fn()`` runs.

    This is the activation memory of training, measured the same way on every device (via
    ``torch.autograd.graph.saved_tensors_hooks``); a tensor saved twice is counted once, and the
    parameters themselves (which exist anyway) are not counted.

    >>> w = torch.randn(100, 100, requires_grad=True)
    >>> saved_activation_bytes(lambda: (torch.randn(8, 100) @ w).sum())   # the (8, 100) input
    3200
    """
    check_callable("fn", fn)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.is_leaf and t.requires_grad:  # a parameter, kept anyway: not an activation
            return t
        key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def format_bytes(n: float) -> str:
    """Bytes in the unit that reads best.

    >>> format_bytes(3200), format_bytes(5 * 2**20)
    ('3.1 KiB', '5.0 MiB')
    """
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def shlex_join(command: Iterable[str]) -> str:
    """A command line, quoted for a shell (for printing what a notebook runs)."""
    return shlex.join([str(c) for c in command])


def main(argv: list[str] | None = None) -> int:
    """``python -m course_utils.distributed [--nproc N] [--device cpu]``: this machine's plan and command."""
    import argparse

    parser = argparse.ArgumentParser(description="Print the torchrun launch plan that fits this machine.")
    parser.add_argument("--nproc", type=int, default=None, help="ranks on this machine (default: one per GPU, or 2 CPU processes)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--script", default="scripts/train_distributed.py")
    parser.add_argument("script_args", nargs="*", help="arguments for the script (after --)")
    args = parser.parse_args(argv)
    plan = launch_plan(args.nproc, device=args.device)
    print(plan)
    env = " ".join(f"{k}={plan.env({})[k]}" for k in ("OMP_NUM_THREADS", "GLOO_SOCKET_IFNAME") if k in plan.env({}))
    print((env + " " if env else "") + shlex.join(plan.torchrun(args.script, args.script_args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
