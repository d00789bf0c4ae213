"""Associative recall: the task that tells linear attention from softmax attention.

A sequence lists ``num_pairs`` key-value pairs, then asks for the values of ``num_queries`` of
its keys (the multi-query associative recall of Arora et al., 2023, "Zoology")::

    (k₇,v₃) (k₂,v₉) (k₁₁,v₀) ... | (k₂,?) (k₁₁,?) ...   →   v₉ v₀ ...

Each pair is one position (its key and value embeddings summed), so one attention layer can
solve the task: a query must find the position whose key equals its own and copy that value.
Softmax attention can look the key up exactly — the matching score wins the softmax, even when
keys are not orthogonal. Linear attention must keep every pair in its fixed ``D × Dv`` state per
head, and ``φ(q)·φ(k)`` with ``φ = elu + 1 > 0`` never vanishes for the other keys: every pair
written into the state blurs the others. With a few pairs per sequence training finds keys
separated enough to read most of them back; with 128 pairs, 256 possible keys and heads of 16
dimensions (a state of 16 × 16 numbers per head) the pairs interfere, and recall collapses while
softmax attention's stays exact.
:func:`train_recall` trains the same small model with either attention on the same data, budget
and learning-rate grid (chosen on a validation set), so the gap is the attention's alone.

Reproduce the learning-rate choice of notebook 09 (a few minutes on a laptop CPU)::

    python -m course_utils.inference.recall                 # 128 pairs, the notebook's task
    python -m course_utils.inference.recall --pairs 32      # its few-pairs contrast
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from course_utils.attention import MultiHeadAttention
from course_utils.checks import (
    check_bool,
    check_divisible,
    check_instance,
    check_int_tensor,
    check_non_negative_int,
    check_one_of,
    check_positive_int,
    check_real,
    check_shape,
    check_sizes,
    check_token_ids,
    describe,
)
from course_utils.inference.linear_attention import LinearAttention

__all__ = ["RecallConfig", "RecallModel", "recall_batch", "train_recall", "tune_recall"]


@dataclass(frozen=True)
class RecallConfig:
    """The task and the model: the same for both kinds of attention."""

    num_keys: int = 256  # more keys than a head has dims: they cannot all be orthogonal
    num_values: int = 64
    num_pairs: int = 128  # many more than a 16-dim head's state can keep apart
    num_queries: int = 16
    d_model: int = 64
    num_heads: int = 4  # heads of 16 dims
    num_layers: int = 1
    batch_size: int = 64
    steps: int = 300

    def __post_init__(self) -> None:
        check_sizes(num_keys=self.num_keys, num_values=self.num_values, num_pairs=self.num_pairs,
                    num_queries=self.num_queries, num_layers=self.num_layers,
                    batch_size=self.batch_size, steps=self.steps)
        check_divisible("d_model", self.d_model, "num_heads", self.num_heads)

    @property
    def length(self) -> int:
        return self.num_pairs + self.num_queries


def recall_batch(
    cfg: RecallConfig, batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``keys (B, P + Q)``, ``values (B, P + Q)`` and ``targets (B, P + Q)``.

    Each row draws ``P`` distinct keys and ``P`` values (with repetition) for its pairs, then
    queries ``Q`` distinct keys among them; at a query position the value is ``num_values``
    (the "?" token) and the target is the key's value; elsewhere the target is -100 (ignored).

    >>> keys, values, targets = recall_batch(RecallConfig(num_pairs=3, num_queries=2), 1,
    ...                                      torch.Generator().manual_seed(0))
    >>> keys.shape, values[0, 3:].tolist(), (targets >= 0).sum().item()
    (torch.Size([1, 5]), [64, 64], 2)
    """
    check_instance("cfg", cfg, RecallConfig)
    check_positive_int("batch", batch)
    if cfg.num_pairs > cfg.num_keys or cfg.num_queries > cfg.num_pairs:
        raise ValueError(f"need num_queries <= num_pairs <= num_keys, got {cfg}")
    p, q = cfg.num_pairs, cfg.num_queries
    keys = torch.rand(batch, cfg.num_keys, generator=generator).argsort(-1)[:, :p]  # distinct
    values = torch.randint(0, cfg.num_values, (batch, p), generator=generator)
    asked = torch.rand(batch, p, generator=generator).argsort(-1)[:, :q]  # which pairs are queried
    all_keys = torch.cat([keys, keys.gather(1, asked)], dim=1)  # (B, P + Q)
    all_values = torch.cat(
        [values, torch.full((batch, q), cfg.num_values)], dim=1
    )  # "?" at queries
    targets = torch.full_like(all_keys, -100)
    targets[:, p:] = values.gather(1, asked)
    return all_keys, all_values, targets


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, attention: str) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attention = attention
        self.attn = (
            MultiHeadAttention(d, heads, use_sdpa=True)
            if attention == "softmax"
            else LinearAttention(d, heads)
        )
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + (self.attn(h, is_causal=True)[0] if self.attention == "softmax" else self.attn(h))
        return x + self.ff(self.norm2(x))


class RecallModel(nn.Module):
    """Key + value embeddings per position, ``num_layers`` pre-LN causal blocks, a linear head
    over the values (no position embedding: the task does not depend on the order of the pairs).

    ``attention="softmax"`` uses the course's :class:`~course_utils.attention.MultiHeadAttention`;
    ``"linear"`` the :class:`~course_utils.inference.linear_attention.LinearAttention` layer with
    the same projections. Nothing else differs.
    """

    def __init__(self, cfg: RecallConfig, attention: str) -> None:
        super().__init__()
        check_instance("cfg", cfg, RecallConfig)
        check_one_of("attention", attention, ("softmax", "linear"))
        self.key_emb = nn.Embedding(cfg.num_keys, cfg.d_model)
        self.value_emb = nn.Embedding(cfg.num_values + 1, cfg.d_model)  # + the "?" of a query
        self.blocks = nn.ModuleList(
            _Block(cfg.d_model, cfg.num_heads, attention) for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.num_values)

    def forward(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        self._check_input(keys, values)
        x = self.key_emb(keys) + self.value_emb(values)  # (B, T, d)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))  # (B, T, num_values)

    def _check_input(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """``keys`` and ``values (B, T)``: token ids of the embeddings, on the model's device."""
        device = self.key_emb.weight.device
        check_int_tensor("keys", keys, dims=2, device=device)
        check_positive_int("the batch size B of keys", keys.size(0))
        check_int_tensor("values", values, device=device)
        check_shape("values", values, tuple(keys.shape), what=f"{tuple(keys.shape)} as keys")
        check_token_ids("keys", keys, self.key_emb.num_embeddings)
        check_token_ids("values", values, self.value_emb.num_embeddings)


@torch.no_grad()
def recall_accuracy(
    model: nn.Module, keys: torch.Tensor, values: torch.Tensor, targets: torch.Tensor
) -> float:
    """Share of the queried values predicted exactly."""
    model.eval()
    pred = model(keys, values).argmax(-1)
    asked = targets >= 0
    return float((pred[asked] == targets[asked]).float().mean())


def train_recall(
    cfg: RecallConfig,
    attention: str,
    lr: float,
    seed: int,
    eval_sets: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = (),
    progress: bool = False,
) -> tuple[RecallModel, list[float]]:
    """Train a :class:`RecallModel` for ``cfg.steps`` AdamW steps (cosine decay) on fresh batches.

    Returns the model and its accuracy on each of ``eval_sets`` (held-out
    ``(keys, values, targets)``).
    The seed fixes the initial weights and the training batches.
    """
    _check_training(cfg, lr, seed, progress)
    _check_eval_sets(eval_sets)
    torch.manual_seed(seed)
    model = RecallModel(cfg, attention)
    gen = torch.Generator().manual_seed(10_000 + seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=cfg.steps, pct_start=0.1
    )
    steps = range(cfg.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"{attention} lr={lr:g} seed={seed}", leave=False)
    model.train()
    for _ in steps:
        keys, values, targets = recall_batch(cfg, cfg.batch_size, gen)
        logits = model(keys, values)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model, [recall_accuracy(model, *s) for s in eval_sets]


def held_out(
    cfg: RecallConfig, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed evaluation set of ``n`` sequences (validation and test use different seeds)."""
    return recall_batch(cfg, n, torch.Generator().manual_seed(seed))


VALID_SEED, TEST_SEED = 1, 2


def tune_recall(
    cfg: RecallConfig,
    lrs: Sequence[float] = (3e-3, 1e-2, 3e-2, 1e-1),
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[float, float]]:
    """Validation accuracy of each attention at each learning rate (one seed): the grid search
    whose best learning rate per attention notebook 09 uses."""
    _check_lrs(lrs)
    _check_training(cfg, lrs[0], seed, progress)
    valid = held_out(cfg, 512, VALID_SEED)
    return {
        att: {lr: train_recall(cfg, att, lr, seed, [valid], progress)[1][0] for lr in lrs}
        for att in ("softmax", "linear")
    }


def _check_training(cfg: RecallConfig, lr: float, seed: int, progress: bool) -> None:
    check_instance("cfg", cfg, RecallConfig)
    check_real("lr", lr, 0.0, low_open=True)
    check_non_negative_int("seed", seed)
    check_bool("progress", progress)


def _check_eval_sets(eval_sets: Sequence[tuple[torch.Tensor, ...]]) -> None:
    """A list (or tuple) of ``(keys, values, targets)`` triples of tensors."""
    if not isinstance(eval_sets, (list, tuple)):
        raise TypeError(f"eval_sets must be a list of (keys, values, targets) tensors, got "
                        f"{describe(eval_sets)}")
    for i, s in enumerate(eval_sets):
        if not (isinstance(s, (list, tuple)) and len(s) == 3
                and all(isinstance(t, torch.Tensor) for t in s)):
            raise TypeError(f"eval_sets[{i}] must be a (keys, values, targets) triple of tensors, "
                            f"got {describe(s)}")


def _check_lrs(lrs: Sequence[float]) -> None:
    """A non-empty list (or tuple) of positive learning rates."""
    if not isinstance(lrs, (list, tuple)):
        raise TypeError(f"lrs must be a list of learning rates, got {describe(lrs)}")
    if not lrs:
        raise ValueError("lrs must hold at least one learning rate, got an empty list")
    for i, lr in enumerate(lrs):
        check_real(f"lrs[{i}]", lr, 0.0, low_open=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Tune the learning rate of both attentions "
        "on the recall task (validation accuracy)."
    )
    parser.add_argument("--steps", type=int, default=RecallConfig.steps)
    parser.add_argument("--pairs", type=int, default=RecallConfig.num_pairs)
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-2, 3e-2, 1e-1])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = RecallConfig(steps=args.steps, num_pairs=args.pairs, num_queries=min(RecallConfig.num_queries, args.pairs))
    print(asdict(cfg))
    table = tune_recall(cfg, lrs=args.lrs, progress=False)
    for att, row in table.items():
        best = max(row, key=row.get)
        print(
            f"{att:8s} "
            + "  ".join(f"lr={lr:g}: {acc:.3f}" for lr, acc in row.items())
            + f"   best lr={best:g}"
        )


if __name__ == "__main__":
    main()
