"""Tune notebook 12's no-attention baselines on the validation split (never on test).

Reproduces the tuning table in notebook 12 ("Is the flattened-grid baseline a fair one?"):
each variant trains for ``--steps`` steps on the notebook's training scenes (seed 0) and is
scored on the 500 validation scenes. Two variants run at a time, one process and one thread
per core, as in the notebook. On 2 CPU cores one variant takes about 40 s at 1,000 steps.

    python scripts/tune_caption_baselines.py                       # every row of the table
    python scripts/tune_caption_baselines.py linear@2e-3 ln@3e-3   # some rows

Variants (``name@learning_rate``; the default rate is 3e-3):

* ``linear``     the kept baseline: v = W · flatten(grid), no normalisation
* ``ln``         the first version: a LayerNorm after W
* ``ln-v512``    with the LayerNorm, v of 512 numbers
* ``mlp``        W replaced by 2,048 → 512 → 128 with a ReLU
* ``initonly``   flatten(grid) → (h0, c0) through one wide linear layer, nothing from the
                 image after the first step
* ``linear-v64``, ``linear-v256``  v of 64 / 256 numbers
* ``linear-h256``                   an LSTM of 256 units
* ``mean``       the mean-pooled straw man
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from course_utils.captioning import (  # noqa: E402
    Captioner,
    GridEncoder,
    PooledLSTMDecoder,
    evaluate,
    train_captioner,
)
from course_utils.datasets.scenes import make_splits  # noqa: E402

TABLE = ["ln@3e-4", "ln@1e-3", "ln@3e-3", "ln-v512@3e-3", "mlp@1e-3", "mlp@3e-3", "initonly@3e-3",
         "linear@1e-3", "linear@2e-3", "linear@3e-3", "linear@5e-3", "linear-v64@1e-3", "linear-v256@1e-3",
         "linear-h256@1e-3", "mean@1e-3", "mean@2e-3", "mean@3e-3"]


class InitOnlyDecoder(nn.Module):
    """A baseline that sees the image once: the flattened grid sets (h0, c0); no image input after that."""

    def __init__(self, vocab_size: int, feat_dim: int = 128, grid_cells: int = 16, embed_dim: int = 64,
                 hidden_dim: int = 128) -> None:
        super().__init__()
        self.init_hc = nn.Linear(feat_dim * grid_cells, 2 * hidden_dim)
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)
        self.out = nn.Linear(hidden_dim + embed_dim, vocab_size)

    def init_state(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:  # feats (B, cells, C)
        h, c = torch.tanh(self.init_hc(feats.flatten(1))).chunk(2, -1)  # (B, H) each
        return {"h": h, "c": c}

    def step(self, tokens: torch.Tensor, state: dict[str, torch.Tensor]):
        emb = self.embed(tokens)  # (B, E)
        y, (h, c) = self.lstm(emb[:, None], (state["h"][None].contiguous(), state["c"][None].contiguous()))
        return self.out(torch.cat([y[:, 0], emb], -1)), {"h": h[0], "c": c[0]}, None

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor):
        s = self.init_state(feats)
        emb = self.embed(tokens)  # (B, T, E)
        y, _ = self.lstm(emb, (s["h"][None].contiguous(), s["c"][None].contiguous()))
        return self.out(torch.cat([y, emb], -1)), None


def build(name: str, vocab_size: int) -> Captioner:
    torch.manual_seed(0)
    kw = dict(embed_dim=64, hidden_dim=128)
    if name == "initonly":
        decoder = InitOnlyDecoder(vocab_size)
    elif name == "mean":
        decoder = PooledLSTMDecoder(vocab_size, 128, 16, "mean", **kw)
    elif name == "linear-h256":
        decoder = PooledLSTMDecoder(vocab_size, 128, 16, "flat", embed_dim=64, hidden_dim=256)
    elif name.startswith(("linear", "ln")):
        base, _, width = name.partition("-v")
        decoder = PooledLSTMDecoder(vocab_size, 128, 16, "flat", img_dim=int(width) if width else None, **kw)
        if base == "ln":
            decoder.project = nn.Sequential(decoder.project, nn.LayerNorm(decoder.project.out_features))
    elif name == "mlp":
        decoder = PooledLSTMDecoder(vocab_size, 128, 16, "flat", **kw)
        decoder.project = nn.Sequential(nn.Linear(2048, 512), nn.ReLU(), nn.Linear(512, 128))
    else:
        raise ValueError(f"unknown variant {name!r}; expected one of {sorted({v.split('@')[0] for v in TABLE})}")
    return Captioner(GridEncoder(dim=128, grid=4, image_size=32), decoder)


def run(variant: str, steps: int) -> str:
    torch.set_num_threads(1)
    data = make_splits(seed=0, n_train=8000, n_valid=500, n_test=10, n_heldout=10)
    name, _, lr = variant.partition("@")
    model = build(name, len(data["train"].vocab))
    start = time.perf_counter()
    history = train_captioner(model, data["train"], steps, lr=float(lr or 3e-3), seed=0, progress=False)
    seconds = time.perf_counter() - start
    r = evaluate(model, data["valid"])
    ce = sum(history["ce"][-20:]) / 20
    return (f"{variant:18s} {seconds:5.1f} s  train CE {ce:.3f}  VALID exact {100 * r['exact']:5.1f} %  "
            f"colour {100 * r['colour']:5.1f}  shape {100 * r['shape']:5.1f}  relation {100 * r['relation']:5.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="*", default=TABLE, help="name@lr; default: every row of the table")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    with mp.get_context("spawn").Pool(args.processes) as pool:
        for line in pool.starmap(run, [(v, args.steps) for v in args.variants], chunksize=1):
            print(line, flush=True)


if __name__ == "__main__":
    main()
