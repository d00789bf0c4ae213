#!/usr/bin/env python
"""Train the course's ViT on scikit-learn's digits with DistributedDataParallel (or FSDP) under torchrun.

One machine, 2 processes (gloo on CPUs, NCCL on GPUs, chosen automatically)::

    torchrun --standalone --nproc_per_node=2 scripts/train_distributed.py --steps 200

Several machines (run the same line on every node; they meet at the rendezvous endpoint)::

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d \\
        --rdzv-endpoint=node0.example.org:29500 --rdzv-id=vit-digits \\
        scripts/train_distributed.py --steps 200

A plain ``python scripts/train_distributed.py`` runs one process without a process group.

What it does, in order: join the process group (``course_utils.distributed``), seed, build the
ViT, wrap it in ``DistributedDataParallel`` (``--fsdp``: ``fully_shard`` from
``torch.distributed.fsdp``, one shard group per encoder layer), shard the data with
``DistributedSampler``, train with mixed precision (``--amp``, ``course_utils.precision``) and
gradient accumulation (``--grad-accum``; the all-reduce runs once per optimizer step thanks to
``no_sync``), log from rank 0 only with a progress bar, save checkpoints (``--checkpoint``,
``--save-every``) and resume from them (``--resume``).

``--log-json`` (rank 0) receives the loss history, throughput, test accuracy, whether the
ranks hold identical parameters and, with ``--measure-comm``, the communication share of a step.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from course_utils import seed_everything  # noqa: E402
from course_utils.checkpoint import load_checkpoint, save_state  # noqa: E402
from course_utils.datasets.digits import load_digits_split  # noqa: E402
from course_utils.distributed import (  # noqa: E402
    DistContext,
    all_reduce_mean,
    cleanup_distributed,
    init_distributed,
    progress,
    rank_zero_print,
    ranks_identical,
    unwrap,
)
from course_utils.files import atomic_open, atomic_write_json  # noqa: E402
from course_utils.precision import MixedPrecision, enable_tf32  # noqa: E402
from course_utils.vit import ViT  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=200, help="optimizer steps in total (a resumed run continues to this)")
    g.add_argument("--batch-size", type=int, default=32, help="samples per micro-batch *per process*")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=3e-3)
    g.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps with a linear learning-rate warm-up")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--amp", action="store_true", help="mixed precision (bf16 on CPU, bf16/fp16 on GPU)")
    g.add_argument("--fsdp", action="store_true", help="shard parameters, gradients and optimizer state (FSDP2)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per rank")
    g.add_argument("--device", default=None, help="cpu or cuda (None: cuda:LOCAL_RANK when there is a GPU, else cpu)")
    g.add_argument("--timeout-s", type=float, default=120.0, help="collectives give up after this long")
    m = p.add_argument_group("model (the ViT of notebook 11)")
    m.add_argument("--patch-size", type=int, default=2)
    m.add_argument("--dim", type=int, default=64)
    m.add_argument("--depth", type=int, default=2)
    m.add_argument("--heads", type=int, default=4)
    m.add_argument("--mlp-dim", type=int, default=128)
    o = p.add_argument_group("checkpoints and logs")
    o.add_argument("--checkpoint", default=None, help="where to save the checkpoint (rank 0 writes it)")
    o.add_argument("--save-every", type=int, default=0, help="also save every N steps (0: only at the end)")
    o.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    o.add_argument("--stop-at", type=int, default=0,
                   help="stop after this step and save, as a preempted job would (the schedule still spans --steps)")
    o.add_argument("--log-every", type=int, default=10)
    o.add_argument("--log-json", default=None, help="rank 0 writes the run's history and results here")
    o.add_argument("--dump-params", default=None, help="every rank saves its final parameters in this folder (tests)")
    o.add_argument("--measure-comm", type=int, default=0, help="after training, time N steps with and without all-reduce")
    o.add_argument("--warmup-steps", type=int, default=3, help="steps left out of the throughput")
    o.add_argument("--simulate-failure", default=None, metavar="RANK:STEP",
                   help="kill rank RANK with SIGKILL at step STEP (to see how the job fails)")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "grad_accum", "log_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.resume and not args.checkpoint:
        p.error("--resume needs --checkpoint PATH")
    return args


# Options that only steer this run (where to log, when to stop, how to launch): a resumed run may
# change them. Every other option shapes the model or the training trajectory and must equal the
# checkpoint's, or the resumed run would silently be a different experiment.
RUN_ONLY_OPTIONS = {"checkpoint", "save_every", "resume", "stop_at", "log_every", "log_json", "dump_params",
                    "measure_comm", "warmup_steps", "simulate_failure", "workers", "device", "timeout_s"}


def check_resume_config(saved: dict, args: argparse.Namespace, path: str) -> None:
    """Refuse to resume with options that differ from the checkpoint's, naming each one."""
    differ = [f"--{name.replace('_', '-')}: checkpoint {saved[name]!r}, this run {value!r}"
              for name, value in vars(args).items()
              if name not in RUN_ONLY_OPTIONS and name in saved and saved[name] != value]
    if differ:
        raise SystemExit(
            f"cannot resume from {path}: it was trained with other options ({'; '.join(differ)}). "
            "Run again with the checkpoint's options, or start a new run with another --checkpoint."
        )


def build_model(args: argparse.Namespace) -> ViT:
    return ViT(image_size=8, patch_size=args.patch_size, in_channels=1, num_classes=10, dim=args.dim,
               depth=args.depth, heads=args.heads, mlp_dim=args.mlp_dim, dropout=0.0)


def wrap_model(model: torch.nn.Module, ctx: DistContext, use_fsdp: bool) -> torch.nn.Module:
    """DDP (every rank holds everything, gradients are averaged) or FSDP2 (everything sharded)."""
    if not ctx.distributed:
        return model
    if use_fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in model.encoder.layers:  # one all-gather per layer: only one layer is whole at a time
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def model_and_optimizer_state(model, optimizer, use_fsdp: bool) -> tuple[dict, dict]:
    """Full (unsharded) state dicts; a collective under FSDP, so every rank calls it."""
    if use_fsdp and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap(model).state_dict(), optimizer.state_dict()


def load_state(model, optimizer, ckpt: dict, use_fsdp: bool) -> None:
    if use_fsdp and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=ckpt["model"], optim_state_dict=ckpt["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
        return
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then cosine decay to zero: a pure function of the step, so resuming needs no scheduler state."""
    warm = max(1, round(args.warmup * args.steps))
    if step < warm:
        return args.lr * (step + 1) / warm
    progress_ = (step - warm) / max(1, args.steps - warm)
    return args.lr * 0.5 * (1.0 + math.cos(math.pi * progress_))


def rank_loader(train_set, world_size: int, rank: int, batch_size: int, seed: int,
                workers: int = 0) -> tuple[torch.utils.data.DistributedSampler, torch.utils.data.DataLoader]:
    """This rank's sampler and loader: its own 1/world_size of every epoch, reshuffled each epoch.

    Epoch ``e`` is the permutation ``DistributedSampler`` draws from ``seed + e``; rank ``r`` takes
    every ``world_size``-th index of it from ``r`` on. ``drop_last`` (in the sampler and in the
    loader) keeps the shards and batches equal, so ``world_size × batch_size`` samples form one
    global batch, whatever ``world_size`` is.
    """
    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=world_size, rank=rank,
                                                  shuffle=True, seed=seed, drop_last=True)
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    if len(loader) == 0:
        raise ValueError(f"--batch-size {batch_size} is larger than a rank's shard ({len(sampler)} samples)")
    return sampler, loader


def micro_batches(loader, sampler, start: int):
    """Endless micro-batches in a fixed order: epoch e uses the sampler's permutation for seed + e.

    ``start`` micro-batches are skipped, so a resumed run sees exactly the batches an
    uninterrupted run would have seen next.
    """
    per_epoch = len(loader)
    epoch, skip = divmod(start, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        for i, batch in enumerate(loader):
            if i >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


@torch.no_grad()
def accuracy(model, x, y, mp: MixedPrecision) -> float:
    model.eval()
    with mp.autocast():
        pred = model(x).argmax(-1)
    model.train()
    return (pred == y).float().mean().item()


def measure_communication(model, x, y, mp: MixedPrecision, steps: int) -> dict:
    """Time forward+backward with the gradient all-reduce (DDP's normal step) and without it (``no_sync``)."""
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return {}

    def run(sync: bool) -> float:
        times = []
        for _ in range(steps + 1):
            dist.barrier()
            t0 = time.perf_counter()
            with (nullcontext() if sync else model.no_sync()), mp.autocast():
                loss = F.cross_entropy(model(x), y)
            loss.backward()  # with sync, DDP's hooks all-reduce the gradients during backward
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
        return sorted(times[1:])[len(times[1:]) // 2]  # median, first one is warm-up

    t_sync, t_local = run(True), run(False)
    numel = sum(p.numel() for p in model.parameters())
    buf = torch.zeros(numel, device=x.device)
    allreduce = []
    for _ in range(steps + 1):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        allreduce.append(time.perf_counter() - t0)
    t_allreduce = sorted(allreduce[1:])[len(allreduce[1:]) // 2]
    t_sync, t_local = all_reduce_mean(t_sync), all_reduce_mean(t_local)  # averaged over the ranks
    return {
        "step_with_allreduce_s": t_sync,
        "step_without_allreduce_s": t_local,
        "allreduce_alone_s": all_reduce_mean(t_allreduce),
        "gradient_numel": numel,
        "comm_share": max(0.0, 1.0 - t_local / t_sync),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = init_distributed(device=args.device, timeout_s=args.timeout_s)
    fail_rank, fail_step = (int(v) for v in args.simulate_failure.split(":")) if args.simulate_failure else (-1, -1)
    try:
        seed_everything(args.seed)
        if ctx.device.type == "cuda":
            enable_tf32()  # float32 matmuls on tensor cores (Ampere+), as in the notebooks
        if ctx.device.type == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))))
        rank_zero_print(f"world size {ctx.world_size}, backend {ctx.backend}, device {ctx.device.type}, "
                        f"{('FSDP' if args.fsdp else 'DDP') if ctx.distributed else 'single process'}, amp {args.amp}, torch {torch.__version__}, "
                        f"{torch.get_num_threads()} thread(s) per process")

        data = load_digits_split(test_size=0.2, seed=0)
        train_set = torch.utils.data.TensorDataset(data.x_train, data.y_train)
        sampler, loader = rank_loader(train_set, ctx.world_size, ctx.rank, args.batch_size, args.seed, args.workers)

        model = build_model(args).to(ctx.device)
        model = wrap_model(model, ctx, args.fsdp)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        mp = MixedPrecision(ctx.device, enabled=args.amp)

        start_step = 0
        if args.resume and Path(args.checkpoint).is_file():
            ckpt = load_checkpoint(args.checkpoint, map_location=ctx.device)
            if ckpt["step"] >= args.steps:
                rank_zero_print(f"{args.checkpoint} is already finished: it holds step {ckpt['step']}, and this "
                                f"run asks for --steps {args.steps}; nothing to do (the checkpoint is left as it is)")
                return 0
            check_resume_config(ckpt["config"], args, args.checkpoint)
            load_state(model, optimizer, ckpt, args.fsdp)
            if "scaler" in ckpt["extra"] and mp.scaler.is_enabled():
                mp.scaler.load_state_dict(ckpt["extra"]["scaler"])
            start_step = ckpt["step"]
            if ckpt["config"].get("world_size") != ctx.world_size:
                rank_zero_print(f"note: the checkpoint was written by {ckpt['config'].get('world_size')} processes, "
                                f"this run has {ctx.world_size}; the data order changes")
            rank_zero_print(f"resumed from {args.checkpoint} at step {start_step}")

        config = {k: v for k, v in vars(args).items()} | {"world_size": ctx.world_size, "backend": ctx.backend}

        def checkpoint(step: int) -> None:
            model_state, optim_state = model_and_optimizer_state(model, optimizer, args.fsdp)
            if ctx.is_main:
                extra = {"scaler": mp.scaler.state_dict()} if mp.scaler.is_enabled() else {}
                save_state(args.checkpoint, model_state=model_state, optimizer_state=optim_state,
                           model_class="course_utils.vit.ViT", step=step, config=config, extra=extra)
            if ctx.distributed:
                dist.barrier()  # nobody reads a checkpoint before it is complete

        batches = micro_batches(loader, sampler, start=start_step * args.grad_accum)
        history: dict[str, list[float]] = {"step": [], "loss": []}
        running, counted = 0.0, 0
        timed_start, timed_steps = None, 0
        end = min(args.steps, args.stop_at) if args.stop_at else args.steps
        if end <= start_step:
            rank_zero_print(f"--stop-at {args.stop_at} is not after the checkpoint's step {start_step}: nothing to do "
                            "(the checkpoint is left as it is)")
            return 0
        bar = progress(range(start_step, end), desc=f"training on {ctx.world_size} process(es)",
                       initial=start_step, total=args.steps, leave=False)
        model.train()
        for step in bar:
            if ctx.rank == fail_rank and step == fail_step:
                print(f"rank {ctx.rank}: simulating a crash at step {step} (SIGKILL)", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            if step - start_step == args.warmup_steps:
                timed_start = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, args)
            step_loss = torch.zeros((), dtype=torch.float64, device=ctx.device)
            for micro in range(args.grad_accum):
                x, y = next(batches)
                x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
                last = micro == args.grad_accum - 1
                # DDP all-reduces gradients during every backward; accumulate locally and
                # all-reduce once, on the last micro-batch.
                sync = nullcontext() if last or not isinstance(model, torch.nn.parallel.DistributedDataParallel) \
                    else model.no_sync()
                if args.fsdp and ctx.distributed:
                    model.set_requires_gradient_sync(last)
                with sync:
                    with mp.autocast():
                        loss = F.cross_entropy(model(x), y) / args.grad_accum  # mean over the micro-batch
                    if last:
                        mp.step(loss, optimizer)  # backward (+ all-reduce), optimizer step, zero grads
                    else:
                        mp.scaler.scale(loss).backward()
                # a detached sum, read once per log interval: .item() at every step would make the
                # CPU wait for the GPU at every step
                step_loss = step_loss + loss.detach().double()
            if timed_start is not None:
                timed_steps += 1
            running, counted = running + step_loss, counted + 1
            if (step + 1) % args.log_every == 0 or step + 1 == end:
                mean_loss = all_reduce_mean(float(running) / counted, ctx.device)
                history["step"].append(step + 1)
                history["loss"].append(mean_loss)
                bar.set_postfix(loss=f"{mean_loss:.3f}")
                running, counted = 0.0, 0
            if args.checkpoint and args.save_every and (step + 1) % args.save_every == 0 and step + 1 < end:
                checkpoint(step + 1)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - timed_start if timed_start is not None else float("nan")
        bar.close()
        samples = timed_steps * args.batch_size * args.grad_accum * ctx.world_size
        throughput = samples / elapsed if timed_steps else float("nan")

        if args.checkpoint:
            checkpoint(end)
        identical = None if args.fsdp else ranks_identical(model)
        test_acc = accuracy(model, data.x_test.to(ctx.device), data.y_test.to(ctx.device), mp)
        if args.dump_params and not args.fsdp:
            with atomic_open(Path(args.dump_params) / f"rank{ctx.rank}.pt") as f:
                torch.save(unwrap(model).state_dict(), f)
        elif args.dump_params:
            model_state, _ = model_and_optimizer_state(model, optimizer, True)
            if ctx.is_main:
                with atomic_open(Path(args.dump_params) / "rank0.pt") as f:
                    torch.save(model_state, f)
        total_numel = sum(p.numel() for p in model.parameters())
        local_numel = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
        comm = {}
        if args.measure_comm and ctx.distributed and not args.fsdp:
            x, y = next(batches)
            comm = measure_communication(model, x.to(ctx.device), y.to(ctx.device), mp, args.measure_comm)

        result = {
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "device": ctx.device.type,
            "strategy": "fsdp" if args.fsdp else ("ddp" if ctx.distributed else "single"),
            "threads_per_process": torch.get_num_threads(),
            "start_step": start_step,
            "steps": end,
            "global_batch": args.batch_size * args.grad_accum * ctx.world_size,
            "throughput_samples_per_s": throughput,
            "final_loss": history["loss"][-1] if history["loss"] else None,
            "test_accuracy": test_acc,
            "ranks_identical": identical,
            "comm": comm,
            "param_numel": total_numel,
            "param_numel_on_rank0": local_numel,
            "history": history,
            "config": config,
        }
        if ctx.is_main:
            rank_zero_print(f"done: step {end}, loss {result['final_loss']:.4f}, test accuracy {test_acc:.3f}, "
                            f"{throughput:.0f} samples/s, ranks bit-identical: {identical}")
            if args.fsdp:
                rank_zero_print(f"FSDP: rank 0 holds {local_numel:,} of the {total_numel:,} parameter values "
                                f"({local_numel / total_numel:.0%}); the optimizer state is sharded the same way")
            if comm:
                rank_zero_print(f"communication: step {comm['step_with_allreduce_s'] * 1e3:.1f} ms with all-reduce, "
                                f"{comm['step_without_allreduce_s'] * 1e3:.1f} ms without "
                                f"({comm['comm_share']:.0%} of the step); all-reduce of "
                                f"{comm['gradient_numel']:,} floats alone {comm['allreduce_alone_s'] * 1e3:.2f} ms")
            if args.log_json:
                atomic_write_json(args.log_json, result, ensure_ascii=True)
        if identical is False:
            raise RuntimeError("the ranks' parameters differ after training: DDP should keep them bit-identical")
        return 0
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
