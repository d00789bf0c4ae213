"""scripts/train_distributed.py's data path and schedule, in one process: which samples each rank
sees in each epoch (a new shuffle every epoch, across the epoch boundary and after a resume) and
the learning rate at each step, against values worked out here from DistributedSampler's rule."""

from __future__ import annotations

import importlib
import math
import sys
from argparse import Namespace

import pytest
import torch
from conftest import REPO  # noqa: E402

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
train = importlib.import_module("scripts.train_distributed")

N, SEED = 23, 7  # 23 samples: neither the ranks' shards nor the batches divide it


def _dataset(n: int = N) -> torch.utils.data.TensorDataset:
    return torch.utils.data.TensorDataset(torch.arange(n))  # sample i is the number i


def _epoch_order(epoch: int, n: int = N, seed: int = SEED) -> list[int]:
    """DistributedSampler's documented order: a permutation drawn from seed + epoch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


def _expected_batches(epoch: int, world_size: int, rank: int, batch: int) -> list[list[int]]:
    order = _epoch_order(epoch)
    shard = order[: (N // world_size) * world_size][rank::world_size]  # drop_last: equal shards
    return [shard[i:i + batch] for i in range(0, len(shard) - batch + 1, batch)]  # full batches only


def _stream(world_size: int, rank: int, batch: int, start: int, count: int) -> list[list[int]]:
    sampler, loader = train.rank_loader(_dataset(), world_size, rank, batch, SEED)
    batches = train.micro_batches(loader, sampler, start=start)
    return [next(batches)[0].tolist() for _ in range(count)]


def test_every_epoch_is_a_new_shuffle_of_the_rank_shard_across_the_epoch_boundary():
    # 2 ranks of 11 samples, batches of 3: 3 batches an epoch, so 9 batches span 3 epochs
    for rank in (0, 1):
        got = _stream(2, rank, 3, start=0, count=9)
        want = [b for epoch in range(3) for b in _expected_batches(epoch, 2, rank, 3)]
        assert got == want
    assert _expected_batches(0, 2, 0, 3) != _expected_batches(1, 2, 0, 3)  # the reshuffle is real


def test_the_ranks_split_each_epoch_into_disjoint_equal_shards():
    for epoch in range(3):
        sampler0, _ = train.rank_loader(_dataset(), 2, 0, 3, SEED)
        sampler1, _ = train.rank_loader(_dataset(), 2, 1, 3, SEED)
        sampler0.set_epoch(epoch), sampler1.set_epoch(epoch)
        a, b = list(sampler0), list(sampler1)
        assert len(a) == len(b) == 11 and not set(a) & set(b)
        assert sorted(a + b) == sorted(_epoch_order(epoch)[:22])  # one sample left out, none repeated


def test_a_resumed_stream_continues_exactly_where_the_uninterrupted_one_was():
    full = _stream(2, 1, 3, start=0, count=10)
    for start in range(8):  # inside the first epoch, at the boundary (3, 6) and past it
        assert _stream(2, 1, 3, start=start, count=2) == full[start:start + 2], start


def test_two_ranks_of_b_see_the_global_batches_of_one_process_of_2b_in_every_epoch():
    one = _stream(1, 0, 6, start=0, count=9)
    rank0, rank1 = _stream(2, 0, 3, start=0, count=9), _stream(2, 1, 3, start=0, count=9)
    two = [r0 + r1 for r0, r1 in zip(rank0, rank1, strict=True)]
    assert [sorted(b) for b in one] == [sorted(b) for b in two]


def test_the_loader_drops_the_short_last_batch_and_refuses_a_batch_larger_than_a_shard():
    _, loader = train.rank_loader(_dataset(), 2, 0, 4, SEED)
    assert [len(b[0]) for b in loader] == [4, 4]  # 11 samples: the last 3 are left for another epoch
    _, loader = train.rank_loader(_dataset(), 2, 0, 11, SEED)
    assert len(loader) == 1
    with pytest.raises(ValueError, match=r"--batch-size 12 is larger than a rank's shard \(11 samples\)"):
        train.rank_loader(_dataset(), 2, 0, 12, SEED)


def test_the_seed_chooses_the_shuffle_and_workers_persist_between_epochs():
    sampler, loader = train.rank_loader(_dataset(), 1, 0, 2, SEED + 1)
    assert list(sampler) == _epoch_order(0, seed=SEED + 1)
    assert loader.num_workers == 0 and not loader.persistent_workers
    _, loader = train.rank_loader(_dataset(), 1, 0, 2, SEED, workers=2)
    assert loader.num_workers == 2 and loader.persistent_workers  # no new worker processes each epoch


def _lr(step: int, steps: int, warmup: float, lr: float = 1.0) -> float:
    return train.learning_rate(step, Namespace(lr=lr, steps=steps, warmup=warmup))


def test_learning_rate_warms_up_linearly_then_decays_by_a_cosine_to_zero():
    # 10 steps, 20 % warm-up: 2 warm-up steps (lr/2, lr), then cos over the remaining 8
    assert [_lr(s, 10, 0.2, lr=3e-3) for s in (0, 1)] == pytest.approx([1.5e-3, 3e-3])
    assert _lr(2, 10, 0.2) == pytest.approx(1.0)
    assert _lr(4, 10, 0.2) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert _lr(6, 10, 0.2) == pytest.approx(0.5)
    assert _lr(9, 10, 0.2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert _lr(10, 10, 0.2) == pytest.approx(0.0, abs=1e-12)


def test_learning_rate_rounds_the_warm_up_and_keeps_at_least_one_step_of_each_phase():
    assert _lr(2, 10, 0.25) == pytest.approx(1.0)  # round(2.5) = 2 warm-up steps
    assert _lr(0, 10, 0.0) == pytest.approx(1.0)  # no warm-up: one step at the full rate
    assert _lr(2, 10, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 9)))
    # 3 steps, 2 of them warm-up: the decay spans the one step left and reaches zero at its end
    assert [_lr(s, 3, 0.5) for s in (0, 1, 2, 3)] == pytest.approx([0.5, 1.0, 1.0, 0.0], abs=1e-12)
    assert [_lr(s, 1, 1.0) for s in (0, 1)] == pytest.approx([1.0, 1.0])  # all warm-up: never a zero division
