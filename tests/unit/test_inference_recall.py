"""The associative-recall task: well-formed batches, a model for each attention, deterministic
training."""

from __future__ import annotations

import pytest
import torch

from course_utils.inference.recall import (
    RecallConfig,
    RecallModel,
    held_out,
    main,
    recall_batch,
    train_recall,
)


def test_batches_ask_for_values_of_listed_keys():
    cfg = RecallConfig(num_pairs=10, num_queries=4)
    keys, values, targets = recall_batch(cfg, 32, torch.Generator().manual_seed(0))
    p = cfg.num_pairs
    for row in range(32):
        pairs = dict(zip(keys[row, :p].tolist(), values[row, :p].tolist(), strict=True))
        assert len(pairs) == p  # distinct keys
        assert (targets[row, :p] == -100).all() and (values[row, p:] == cfg.num_values).all()
        for key, target in zip(keys[row, p:].tolist(), targets[row, p:].tolist(), strict=True):
            assert pairs[key] == target
    assert len(set(keys[0, p:].tolist())) == cfg.num_queries


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_models_are_causal_and_training_is_deterministic(attention):
    cfg = RecallConfig(num_pairs=6, num_queries=3, d_model=16, steps=3, batch_size=8)
    keys, values, _ = recall_batch(cfg, 2, torch.Generator().manual_seed(1))
    model = RecallModel(cfg, attention).eval()
    changed = values.clone()
    changed[:, 5:] = 0
    assert torch.allclose(model(keys, values)[:, :5], model(keys, changed)[:, :5], atol=1e-6)
    valid = held_out(cfg, 16, seed=1)
    _, acc1 = train_recall(cfg, attention, 1e-3, seed=0, eval_sets=[valid])
    _, acc2 = train_recall(cfg, attention, 1e-3, seed=0, eval_sets=[valid])
    assert acc1 == acc2 and 0.0 <= acc1[0] <= 1.0


def test_tuning_entry_point_runs(capsys):
    main(["--steps", "2", "--pairs", "4", "--lrs", "1e-3"])
    out = capsys.readouterr().out
    assert "softmax" in out and "linear" in out and "best lr=0.001" in out


def test_bad_config():
    with pytest.raises(ValueError, match="num_queries <= num_pairs"):
        recall_batch(RecallConfig(num_pairs=3, num_queries=5), 1, torch.Generator())
    with pytest.raises(ValueError, match="attention must be one of"):
        RecallModel(RecallConfig(), "cosine")
    with pytest.raises(ValueError, match="num_keys must be a positive int"):
        RecallConfig(num_keys=0)
    with pytest.raises(ValueError, match="d_model must be divisible by num_heads"):
        RecallConfig(d_model=10, num_heads=4)
    cfg = RecallConfig(num_pairs=3, num_queries=2, d_model=8, num_heads=2, steps=1, batch_size=2)
    with pytest.raises(TypeError, match=r"eval_sets\[0\] must be a \(keys, values, targets\)"):
        train_recall(cfg, "softmax", 1e-2, 0, eval_sets=["abc"])
    with pytest.raises(ValueError, match="keys must hold token ids in"):
        RecallModel(cfg, "softmax")(torch.full((1, 5), 256), torch.zeros(1, 5, dtype=torch.long))
