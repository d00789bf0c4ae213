"""Exercises of notebook 15 (scaling out).

* ``15.1`` (derive) — the bytes one rank sends per optimizer step when DDP all-reduces the
  gradients with a ring: ``fn(num_params, world_size, bytes_per_value=4) -> bytes``. Given the
  notebook's measurement (``comm=``), the checker compares the volume with the measured time.
* ``15.2`` (predict) — with ``DistributedSampler(drop_last=True)`` over the 1,437 training digits,
  4 ranks and a batch of 32 per rank (``DataLoader(drop_last=True)``): how many samples does each
  rank see per epoch, and how many optimizer steps make an epoch? A pair of numbers; the checker
  builds the sampler and loaders and counts.
* ``15.3`` (derive) — shards of *unequal* size (a last batch that does not divide evenly): combine
  the per-rank mean gradients into the full-batch gradient: ``fn(grads, counts) -> gradient``.

>>> from course_utils.exercises import check, solution_answer
>>> all(check(i, *solution_answer(i)).passed for i in ("15.1", "15.2", "15.3"))
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from . import CheckResult, Mistake, exercise, fail, ok
from .nb01 import _close, _first_difference

__all__ = ["check_ddp_bytes", "check_sampler_counts", "check_uneven_shards"]

# The ViT that notebook 15 trains under torchrun (scripts/train_distributed.py's defaults).
COURSE_MODEL_PARAMS = 69_194


# --------------------------------------------------------------------------------------------
# 15.1 derive: the bytes of a ring all-reduce per rank
# --------------------------------------------------------------------------------------------


def _solution_ddp_bytes(num_params: int, world_size: int, bytes_per_value: int = 4) -> float:
    size = num_params * bytes_per_value  # S: the whole gradient, in bytes
    # A ring all-reduce is a reduce-scatter then an all-gather. Each phase takes W - 1 steps, and
    # in each step a rank sends one chunk of S / W bytes to its neighbour.
    return 2 * (world_size - 1) / world_size * size


def _just_the_gradient(num_params, world_size, bytes_per_value=4):
    return num_params * bytes_per_value


def _reduce_scatter_only(num_params, world_size, bytes_per_value=4):
    return (world_size - 1) / world_size * num_params * bytes_per_value


def _twice_the_gradient(num_params, world_size, bytes_per_value=4):
    return 2 * num_params * bytes_per_value


def _send_to_everyone(num_params, world_size, bytes_per_value=4):
    return (world_size - 1) * num_params * bytes_per_value


def _counts_values(num_params, world_size, bytes_per_value=4):
    return 2 * (world_size - 1) / world_size * num_params


_CASES = [(69_194, 2, 4), (1_000_000, 8, 4), (7_000_000_000, 64, 2), (12_345, 3, 4), (10, 1, 4)]


@exercise(
    "15.1",
    title="Derive: the bytes each rank sends when DDP all-reduces the gradients",
    hint="A ring all-reduce cuts the gradient (S bytes) into W chunks and runs two phases, a "
    "reduce-scatter and an all-gather, of W - 1 steps each; in every step a rank sends one chunk.",
    solution=_solution_ddp_bytes,
    kind="derive",
    minutes=10,
    difficulty=2,
    mistakes=[
        Mistake("the gradient once", (_just_the_gradient,), "whole gradient once"),
        Mistake("reduce-scatter only", (_reduce_scatter_only,), "all-gather"),
        Mistake("forgets (W-1)/W", (_twice_the_gradient,), "(W - 1) / W"),
        Mistake("sends to every other rank", (_send_to_everyone,), "to every other rank"),
        Mistake("counts values, not bytes", (_counts_values,), "bytes_per_value"),
    ],
)
def check_ddp_bytes(fn: Callable[..., float], comm: Mapping[str, Any] | None = None) -> CheckResult:
    if not callable(fn):
        return fail("type", f"pass your function fn(num_params, world_size, bytes_per_value=4), got {type(fn).__name__}")
    got = [float(fn(p, w, b)) for p, w, b in _CASES]
    want = [_solution_ddp_bytes(p, w, b) for p, w, b in _CASES]
    if all(_close(g, t, 1e-9) or g == t for g, t in zip(got, want, strict=True)):
        course = _solution_ddp_bytes(COURSE_MODEL_PARAMS, 2)
        message = (f"Correct: 2 (W - 1)/W × S, which hardly grows with W: the ring's bandwidth cost per rank is "
                   f"almost constant. For the course's ViT ({COURSE_MODEL_PARAMS:,} float32 gradients, 2 ranks): "
                   f"{course:,.0f} bytes per rank per step.")
        if comm:
            t = float(comm["allreduce_alone_s"])
            share = float(comm["comm_share"])
            message += (f" The notebook's all-reduce of them took {t * 1e3:.2f} ms, an effective "
                        f"{course / t / 1e6:.0f} MB/s, far below the gigabytes per second one machine's memory "
                        f"moves: at this size, latency and waiting for the other rank, not bytes, make the "
                        f"{share:.0%} of the step that communication took.")
        return ok(message)
    known = [
        (_just_the_gradient, "that is the whole gradient once (S bytes); a ring all-reduce sends 2 (W - 1)/W × S: "
                             "a reduce-scatter and an all-gather"),
        (_reduce_scatter_only, "that is the reduce-scatter alone: after it each rank holds 1/W of the sum; the "
                               "all-gather that follows sends as much again"),
        (_twice_the_gradient, "close: two phases, but each sends (W - 1) chunks of S/W, so the factor is "
                              "2 (W - 1) / W, not 2 (with one rank nothing moves at all)"),
        (_send_to_everyone, "that is a naive all-reduce that sends the whole gradient to every other rank: it grows "
                            "with W; the ring sends 2 (W - 1)/W × S whatever W is"),
        (_counts_values, "that counts values; multiply by bytes_per_value (4 for float32 gradients, 2 for bf16)"),
    ]
    for wrong, message in known:
        if all(_close(g, float(wrong(p, w, b)), 1e-9) for g, (p, w, b) in zip(got, _CASES, strict=True)):
            return fail("values", message)
    first = next(i for i, (g, t) in enumerate(zip(got, want, strict=True)) if not _close(g, t, 1e-9))
    p, w, b = _CASES[first]
    return fail("values", f"for num_params={p:,}, world_size={w}, bytes_per_value={b} you return {got[first]:,.0f} "
                          f"bytes, expected {want[first]:,.0f}")


# --------------------------------------------------------------------------------------------
# 15.2 predict: what DistributedSampler and DataLoader(drop_last=True) give each rank
# --------------------------------------------------------------------------------------------

_SAMPLES, _RANKS, _BATCH = 1437, 4, 32


def _measured_counts() -> tuple[list[int], list[int]]:
    """Per rank: samples in one epoch of the sampler, and batches in one epoch of the loader."""
    data = torch.utils.data.TensorDataset(torch.arange(_SAMPLES))
    samples, steps = [], []
    for rank in range(_RANKS):
        sampler = torch.utils.data.DistributedSampler(data, num_replicas=_RANKS, rank=rank, shuffle=True, seed=0,
                                                      drop_last=True)
        loader = torch.utils.data.DataLoader(data, batch_size=_BATCH, sampler=sampler, drop_last=True)
        samples.append(sum(1 for _ in sampler))
        steps.append(sum(1 for _ in loader))
    return samples, steps


def _solution_sampler_counts() -> tuple[int, int]:
    per_rank = _SAMPLES // _RANKS  # drop_last=True: the 1 sample left over is dropped, not padded
    return per_rank, per_rank // _BATCH  # the loader drops the last partial batch too


def _as_pair(answer: Any) -> tuple[float, float]:
    if answer is None or answer is Ellipsis:
        raise NotImplementedError
    if isinstance(answer, (str, bytes)) or not isinstance(answer, Sequence) or len(answer) != 2:
        raise TypeError(f"answer with a pair (samples per rank, optimizer steps per epoch), got {answer!r}")
    return float(answer[0]), float(answer[1])


@exercise(
    "15.2",
    title="Predict: samples per rank and steps per epoch under DistributedSampler",
    hint="The sampler splits the epoch over the ranks, each taking every 4th index; drop_last decides what "
    "happens to the samples left over. Then the loader cuts each rank's share into batches of 32.",
    solution=_solution_sampler_counts,
    solution_args=lambda: (_solution_sampler_counts(),),
    kind="predict",
    minutes=6,
    difficulty=1,
    mistakes=[
        Mistake("forgets the sharding", ((1437, 44),), "every rank sees a quarter"),
        Mistake("pads instead of dropping", ((360, 11),), "pad to 1,440"),
        Mistake("counts the last partial batch", ((359, 12),), "partial batch"),
        Mistake("the global batch", ((359, 2),), "per rank"),
    ],
)
def check_sampler_counts(answer: Any) -> CheckResult:
    samples_pred, steps_pred = _as_pair(answer)
    samples, steps = _measured_counts()
    said = (f"You predicted {samples_pred:g} samples and {steps_pred:g} steps; measured on 4 ranks: "
            f"{samples[0]} samples and {steps[0]} batches each (every rank the same: {len(set(samples)) == 1})")
    if (samples_pred, steps_pred) == (samples[0], steps[0]):
        return ok(f"Correct! {said}. 1437 = 4 × 359 + 1: the odd sample is dropped in this epoch (another one "
                  "next epoch, as the shuffle changes), and 359 = 11 × 32 + 7: 7 samples per rank wait for the "
                  "next epoch too. Every rank must run the same number of steps, or the all-reduce would wait "
                  "forever for the rank that stopped early.")
    known = {
        (1437.0, 44.0): "every rank sees a quarter of the epoch (the sampler shards it), not all 1,437 samples",
        (360.0, 11.0): "with drop_last=False the sampler would pad to 1,440 by repeating samples (360 each); "
                       "drop_last=True drops the extra sample instead: 1437 // 4",
        (359.0, 12.0): "the loader's drop_last=True also drops the last partial batch (359 = 11 × 32 + 7)",
        (359.0, 2.0): "the batch of 32 is per rank (the global batch is 4 × 32 = 128), so each rank's 359 "
                      "samples make 359 // 32 batches",
    }
    if (samples_pred, steps_pred) in known:
        return fail("values", f"{said}. {known[(samples_pred, steps_pred)]}.")
    if samples_pred == samples[0]:
        return fail("values", f"{said}: the samples are right; divide them into batches of 32 and drop the rest")
    return fail("values", f"{said}. Start from 1437 // 4 for the samples.")


# --------------------------------------------------------------------------------------------
# 15.3 derive: combining gradients from shards of unequal size
# --------------------------------------------------------------------------------------------


def _solution_uneven(grads: Sequence[torch.Tensor], counts: Sequence[int]) -> torch.Tensor:
    # each g_r is a mean over n_r samples; the full batch's mean gradient weighs them by n_r / N
    total = sum(counts)
    return sum(n * g for g, n in zip(grads, counts, strict=True)) / total


def _plain_mean(grads, counts):
    return sum(grads) / len(grads)


def _plain_sum(grads, counts):
    return sum(grads)


def _inverse_weights(grads, counts):
    weights = [1.0 / n for n in counts]
    return sum(w * g for g, w in zip(grads, weights, strict=True)) / sum(weights)


def _weighted_sum(grads, counts):
    return sum(n * g for g, n in zip(grads, counts, strict=True))


def _weighted_over_ranks(grads, counts):
    return sum(n * g for g, n in zip(grads, counts, strict=True)) / len(counts)


def _uneven_problem() -> tuple[list[torch.Tensor], list[int], torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(50, 5), torch.randint(0, 3, (50,))

    def grad(xs, ys):
        model.zero_grad()
        F.cross_entropy(model(xs), ys).backward()  # a mean over the samples, as in training
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    counts = [20, 17, 13]
    bounds = [0, 20, 37, 50]
    grads = [grad(x[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return grads, counts, grad(x, y)


@exercise(
    "15.3",
    title="Derive: the full-batch gradient from shards of unequal size",
    hint="Each rank's gradient is a mean over its own n_r samples. Write the full batch's mean as a sum over "
    "all N samples, split the sum by rank, and see what weight each g_r gets.",
    solution=_solution_uneven,
    kind="derive",
    minutes=10,
    difficulty=2,
    mistakes=[
        Mistake("plain mean, as DDP does", (_plain_mean,), "equal weights"),
        Mistake("sum", (_plain_sum,), "sum of the means"),
        Mistake("inverse weights", (_inverse_weights,), "1 / n_r"),
        Mistake("weighted sum, not divided", (_weighted_sum,), "divide by the total"),
        Mistake("weighted, divided by the ranks", (_weighted_over_ranks,), "number of samples"),
    ],
)
def check_uneven_shards(fn: Callable[[list[torch.Tensor], list[int]], torch.Tensor]) -> CheckResult:
    grads, counts, full = _uneven_problem()
    got = fn([g.clone() for g in grads], list(counts))
    if not isinstance(got, torch.Tensor):
        return fail("type", f"return a tensor (the combined gradient), got {type(got).__name__}")
    if got.shape != full.shape:
        return fail("shape", f"return one gradient of shape {tuple(full.shape)} (like each g_r), got {tuple(got.shape)}")
    if torch.allclose(got, full, atol=1e-6):
        return ok("Correct: g = Σ n_r g_r / Σ n_r equals the full batch's gradient. DDP itself averages with equal "
                  "weights, which is exact only when every rank has the same number of samples — one reason "
                  "DistributedSampler(drop_last=True) and DataLoader(drop_last=True) keep the shards equal.")
    known = [
        (_plain_mean, "that is the plain mean (equal weights, what DDP's all-reduce computes): it is the full-batch "
                      "gradient only when all shards are the same size; here the rank with 13 samples counts as much "
                      "as the one with 20"),
        (_plain_sum, "that is the sum of the means: W times too large, and still with equal weights"),
        (_inverse_weights, "your weights are 1 / n_r: a sample on a small shard should count the same as any other, "
                           "so a shard's mean counts with weight n_r"),
        (_weighted_sum, "the weights n_r are right; now divide by the total number of samples"),
        (_weighted_over_ranks, "the weights n_r are right, but divide by the total number of samples (50), not by "
                               "the number of ranks"),
    ]
    for wrong, message in known:
        if torch.allclose(got, wrong(grads, counts), atol=1e-6):
            return fail("values", message)
    return fail("values", "your combined gradient differs from the full-batch gradient "
                + _first_difference(got, full, "parameter", atol=1e-6))
