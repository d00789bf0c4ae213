"""Visual question answering (notebook 13): where to look depends on what is asked.

Every model reads the image with the captioning notebook's patch-local
:class:`~course_utils.captioning.GridEncoder` (a grid of ``N`` cell features, cell ``i`` seeing
only its own pixels) and the question with the course's blocks, then picks one of the answers:

* :class:`BlindVQA` — the question only (what the answer priors give);
* :class:`PooledVQA` — the grid features averaged into one vector, fused with the question by
  concatenation (``fusion="concat"``) or element-wise product (``fusion="product"``): it sees
  the whole image, but cannot choose where to look;
* :class:`StackedAttentionVQA` — Yang et al. (2016): the question attends over the grid with
  additive attention, the attended vector is added to the query, and the next hop attends
  again with the refined query (``hops=1`` or ``2``);
* :class:`TransformerFusionVQA` — an answer token and the question's tokens go through the
  course's :class:`~course_utils.transformer.TransformerDecoderLayer` blocks: self-attention
  over the question, cross-attention from the question to the grid with the course's
  :class:`~course_utils.attention.MultiHeadAttention` (notebook 04's, proved equal to PyTorch's).

``model(images, tokens)`` returns ``(logits (B, A), maps)``: ``maps`` is ``(B, hops, N)``, the
attention over the grid cells of each hop (each layer's answer token, for the transformer), or
``None`` for a model that does not attend.

:func:`train_vqa` trains one model; :func:`train_jobs` several, two at a time on two CPU cores;
:func:`evaluate` gives accuracy per question kind, the answers' confusion and, with the maps,
the **grounding score** (:func:`grounding_score`): the share of attention that lands on the
cells of the objects the question refers to.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .attention import AdditiveAttention
from .captioning import GridEncoder, SyncEvery
from .checks import (
    check_bool,
    check_float_tensor,
    check_int,
    check_one_of,
    check_positive_int,
    check_real,
    check_token_ids,
    describe,
)
from .datasets.questions import VQADataset, make_question_splits
from .positional import LearnedPositionalEmbedding
from .precision import MixedPrecision
from .runtime import get_device
from .training import TrainHistory, train_steps
from .transformer import TransformerDecoderLayer

__all__ = [
    "MODELS",
    "SETTINGS",
    "BlindVQA",
    "PooledVQA",
    "QuestionEncoder",
    "StackedAttentionVQA",
    "TrainedJob",
    "TransformerFusionVQA",
    "VQAJob",
    "build_model",
    "confusion_matrix",
    "evaluate",
    "grounding_score",
    "load_datasets",
    "per_kind_accuracy",
    "settings_job",
    "train_jobs",
    "train_vqa",
]


# ---------------------------------------------------------------------------------------------
# The question
# ---------------------------------------------------------------------------------------------


class QuestionEncoder(nn.Module):
    """Word embeddings and an LSTM: ``tokens (B, L) -> (B, dim)``, the state after the last word.

    Padding (id ``pad``) is at the end of each row, so the LSTM's output at the last real word
    has not seen it.

    >>> enc = QuestionEncoder(vocab_size=12, dim=16)
    >>> enc(torch.tensor([[3, 4, 5], [3, 4, 0]])).shape
    torch.Size([2, 16])
    >>> short = enc(torch.tensor([[3, 4]]))                 # the same question, unpadded
    >>> torch.allclose(enc(torch.tensor([[3, 4, 0, 0]])), short, atol=1e-6)
    True
    """

    def __init__(self, vocab_size: int, dim: int = 128, embed_dim: int = 64, pad: int = 0) -> None:
        super().__init__()
        for name, n in (("vocab_size", vocab_size), ("dim", dim), ("embed_dim", embed_dim)):
            check_positive_int(name, n)
        check_int("pad", pad, low=0, high=vocab_size - 1)
        self.vocab_size, self.pad = vocab_size, pad
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad)
        self.lstm = nn.LSTM(embed_dim, dim, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _check_tokens(tokens, self.vocab_size, self.pad)
        states, _ = self.lstm(self.embed(tokens))  # (B, L, D)
        last = (tokens != self.pad).sum(1).clamp(min=1) - 1  # (B,): index of the last real word
        return states[torch.arange(tokens.size(0), device=tokens.device), last]  # (B, D)


def _check_tokens(tokens: torch.Tensor, vocab_size: int, pad: int) -> None:
    check_token_ids("tokens", tokens, vocab_size)
    if tokens.dim() != 2 or tokens.size(1) == 0:
        raise ValueError(f"tokens must have shape (B, L) with L >= 1, got {describe(tokens)}")
    real = tokens != pad
    if bool((real[:, 1:] & ~real[:, :-1]).any()):
        raise ValueError("tokens must put the padding after the words (a word follows a <pad>)")


def _check_images(images: torch.Tensor, encoder: GridEncoder) -> None:
    check_float_tensor("images", images)
    size = encoder.image_size
    if images.dim() != 4 or images.shape[1:] != (3, size, size):
        raise ValueError(f"images must have shape (B, 3, {size}, {size}), got {describe(images)}")


def _classifier(in_dim: int, hidden: int, num_answers: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, num_answers))


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class BlindVQA(nn.Module):
    """The question alone: what answer priors give. ``forward(images, tokens)`` ignores ``images``.

    >>> model = BlindVQA(vocab_size=12, num_answers=5, dim=16)
    >>> logits, maps = model(torch.rand(2, 3, 32, 32), torch.tensor([[3, 4], [5, 0]]))
    >>> logits.shape, maps
    (torch.Size([2, 5]), None)
    """

    def __init__(self, vocab_size: int, num_answers: int, dim: int = 128, hidden: int = 256,
                 dropout: float = 0.1, pad: int = 0) -> None:
        super().__init__()
        check_positive_int("num_answers", num_answers)
        self.question = QuestionEncoder(vocab_size, dim, pad=pad)
        self.classify = _classifier(dim, hidden, num_answers, dropout)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.classify(self.question(tokens)), None


class PooledVQA(nn.Module):
    r"""No attention: the grid features averaged, :math:`v = \frac{1}{N}\sum_i a_i`, fused with
    the question encoding :math:`q`.

    * ``fusion="concat"``: the classifier reads :math:`[v; q]`;
    * ``fusion="product"``: it reads :math:`\tanh(W_v v) \odot \tanh(W_q q)`.

    >>> model = PooledVQA(vocab_size=12, num_answers=5, fusion="product", dim=16)
    >>> logits, maps = model(torch.rand(2, 3, 32, 32), torch.tensor([[3, 4], [5, 0]]))
    >>> logits.shape, maps
    (torch.Size([2, 5]), None)
    """

    def __init__(self, vocab_size: int, num_answers: int, fusion: str = "concat", dim: int = 128,
                 hidden: int = 256, dropout: float = 0.1, image_size: int = 32, grid: int = 4,
                 pad: int = 0, encoder: dict | None = None) -> None:
        super().__init__()
        check_positive_int("num_answers", num_answers)
        check_one_of("fusion", fusion, ("concat", "product"))
        self.fusion = fusion
        self.encoder = GridEncoder(dim=dim, grid=grid, image_size=image_size, **(encoder or {}))
        self.question = QuestionEncoder(vocab_size, dim, pad=pad)
        if fusion == "product":
            self.project_v, self.project_q = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.classify = _classifier(2 * dim if fusion == "concat" else dim, hidden, num_answers, dropout)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        _check_images(images, self.encoder)
        v = self.encoder(images).mean(dim=1)  # (B, D): every cell, positions averaged away
        q = self.question(tokens)  # (B, D)
        if self.fusion == "concat":
            fused = torch.cat([v, q], dim=-1)  # (B, 2D)
        else:
            fused = torch.tanh(self.project_v(v)) * torch.tanh(self.project_q(q))  # (B, D)
        return self.classify(fused), None


class StackedAttentionVQA(nn.Module):
    r"""Stacked attention networks (Yang et al., 2016).

    With the grid features :math:`a_1..a_N` and the question :math:`u_0 = q`, hop :math:`k`
    scores every cell with additive attention and adds what it read to the query:

    .. math::
        \alpha^k = \operatorname{softmax}_i\bigl(w_k^\top \tanh(W_k a_i + V_k u_{k-1})\bigr),
        \qquad u_k = u_{k-1} + \sum_i \alpha^k_i a_i .

    The answer is read from :math:`u_K`. One hop can find the object the question names; a
    second hop, asked with :math:`u_1` (which now holds what and *where* that object is), can
    look relative to it.

    >>> model = StackedAttentionVQA(vocab_size=12, num_answers=5, hops=2, dim=16)
    >>> logits, maps = model(torch.rand(2, 3, 32, 32), torch.tensor([[3, 4], [5, 0]]))
    >>> logits.shape, maps.shape                     # maps: (B, hops, N cells)
    (torch.Size([2, 5]), torch.Size([2, 2, 16]))
    >>> torch.allclose(maps.sum(-1), torch.ones(2, 2))
    True
    """

    def __init__(self, vocab_size: int, num_answers: int, hops: int = 2, dim: int = 128,
                 attn_dim: int = 128, hidden: int = 256, dropout: float = 0.1,
                 image_size: int = 32, grid: int = 4, pad: int = 0, encoder: dict | None = None) -> None:
        super().__init__()
        check_positive_int("num_answers", num_answers)
        check_positive_int("hops", hops)
        self.encoder = GridEncoder(dim=dim, grid=grid, image_size=image_size, **(encoder or {}))
        self.question = QuestionEncoder(vocab_size, dim, pad=pad)
        self.hops = nn.ModuleList(AdditiveAttention(dim, dim, attn_dim) for _ in range(hops))
        self.classify = _classifier(dim, hidden, num_answers, dropout)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_images(images, self.encoder)
        feats = self.encoder(images)  # (B, N, D)
        u = self.question(tokens)  # (B, D)
        maps = []
        for attend in self.hops:
            context, alpha = attend(u, feats)  # (B, D), (B, N)
            u = u + context  # the query, refined by what this hop read
            maps.append(alpha)
        return self.classify(u), torch.stack(maps, dim=1)  # (B, A), (B, hops, N)


class TransformerFusionVQA(nn.Module):
    """An answer token and the question's words, through pre-LN decoder blocks whose
    cross-attention reads the grid; the answer token's final state picks the answer.

    No causal mask: every word sees the whole question. The maps are the answer token's
    cross-attention, averaged over heads, one per layer: ``(B, layers, N)``.

    >>> model = TransformerFusionVQA(vocab_size=12, num_answers=5, d_model=16, nhead=2, num_layers=2)
    >>> logits, maps = model(torch.rand(2, 3, 32, 32), torch.tensor([[3, 4], [5, 0]]))
    >>> logits.shape, maps.shape
    (torch.Size([2, 5]), torch.Size([2, 2, 16]))
    """

    def __init__(self, vocab_size: int, num_answers: int, d_model: int = 128, nhead: int = 4,
                 num_layers: int = 2, dim_feedforward: int = 256, dropout: float = 0.1,
                 max_len: int = 32, image_size: int = 32, grid: int = 4, pad: int = 0,
                 encoder: dict | None = None) -> None:
        super().__init__()
        check_positive_int("num_answers", num_answers)
        check_positive_int("vocab_size", vocab_size)
        check_int("pad", pad, low=0, high=vocab_size - 1)
        self.vocab_size, self.pad = vocab_size, pad
        self.encoder = GridEncoder(dim=d_model, grid=grid, image_size=image_size, **(encoder or {}))
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=0.02)  # on the positions' scale (as GPT-2)
        self.answer_token = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.pos = LearnedPositionalEmbedding(max_len + 1, d_model)
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(d_model, nhead, dim_feedforward=dim_feedforward, dropout=dropout,
                                    norm_first=True)
            for _ in range(num_layers)
        )
        for layer in self.layers:
            layer.multihead_attn.store_weights = True  # keep (B, H, Lq, N) of the last call
        self.norm = nn.LayerNorm(d_model)
        self.classify = nn.Linear(d_model, num_answers)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_images(images, self.encoder)
        _check_tokens(tokens, self.vocab_size, self.pad)
        memory = self.encoder(images)  # (B, N, d): the grid cells, with their positions
        b = tokens.size(0)
        x = torch.cat([self.answer_token.expand(b, -1, -1), self.embed(tokens)], dim=1)  # (B, 1+L, d)
        x = self.pos(x)
        padding = torch.cat([tokens.new_zeros(b, 1, dtype=torch.bool), tokens == self.pad], dim=1)
        maps = []
        for layer in self.layers:
            x = layer(x, memory, tgt_key_padding_mask=padding)  # (B, 1+L, d)
            maps.append(layer.multihead_attn.last_attn_weights[:, :, 0].mean(dim=1))  # (B, N)
        return self.classify(self.norm(x[:, 0])), torch.stack(maps, dim=1)  # (B, A), (B, layers, N)


MODELS = ("blind", "concat", "product", "attention", "transformer")


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@dataclass
class VQAJob:
    """One model to train: its kind, its size and its training budget.

    ``model`` is ``"blind"``, ``"concat"`` / ``"product"`` (:class:`PooledVQA`), ``"attention"``
    (:class:`StackedAttentionVQA`, ``hops`` in ``model_kwargs``) or ``"transformer"``;
    ``model_kwargs`` go to the model, the rest to :func:`train_vqa`.

    >>> job = VQAJob("SAN, 2 hops", "attention", steps=10, lr=1e-3, model_kwargs={"hops": 2, "dim": 16})
    >>> len(build_model(job, vocab_size=30, num_answers=16).hops)
    2
    """

    name: str
    model: str
    steps: int
    lr: float
    seed: int = 0
    batch_size: int = 64
    warmup: int = 0
    weight_decay: float = 0.0
    model_kwargs: dict = field(default_factory=dict)
    dataset: str | None = None  # which of several training sets (see train_jobs)


def build_model(job: VQAJob, vocab_size: int, num_answers: int, image_size: int = 32,
                grid: int = 4) -> nn.Module:
    """A fresh model for ``job``, its weights drawn with ``job.seed``."""
    check_one_of("job.model", job.model, MODELS)
    torch.manual_seed(job.seed)
    kw = dict(job.model_kwargs)
    if job.model == "blind":
        return BlindVQA(vocab_size, num_answers, **kw)
    common = {"image_size": image_size, "grid": grid, **kw}  # the job may choose its own grid
    if job.model in ("concat", "product"):
        return PooledVQA(vocab_size, num_answers, fusion=job.model, **common)
    if job.model == "attention":
        return StackedAttentionVQA(vocab_size, num_answers, **common)
    return TransformerFusionVQA(vocab_size, num_answers, **common)


def _schedule(steps: int, warmup: int):
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(s - warmup, steps - warmup) / max(steps - warmup, 1)))

    return factor


def train_vqa(
    model: nn.Module,
    data: VQADataset,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    warmup: int = 0,
    weight_decay: float = 0.0,
    clip: float = 5.0,
    desc: str = "training",
    progress: bool | None = None,
    log_every: int | None = None,
) -> TrainHistory:
    """Cross-entropy on the answer; AdamW, a linear warm-up then a cosine decay; random batches
    drawn with ``seed`` (every model sees the same questions in the same order).

    On CUDA the steps run under autocast (bf16 on Ampere and newer, fp16 with a GradScaler
    before), and the loss is read back every ``log_every`` steps (default 25), averaged over
    them, instead of synchronising the GPU at every step; on the CPU it is read every step.
    """
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_real("lr", lr, 0.0, low_open=True)
    check_int("warmup", warmup, low=0, high=steps - 1)
    check_real("weight_decay", weight_decay, 0.0)
    if not isinstance(data, VQADataset):
        raise TypeError(f"data must be a VQADataset, got {describe(data)}")
    device = next(model.parameters()).device
    log_every = log_every or (25 if device.type == "cuda" else 1)
    check_positive_int("log_every", log_every)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(steps, warmup))
    amp = MixedPrecision(device, enabled=device.type == "cuda")
    logged = SyncEvery(log_every)
    model.train()

    def step(i: int):
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        images, tokens, answers = data.batch(idx, device)
        with amp.autocast():
            logits, _ = model(images, tokens)
            loss = F.cross_entropy(logits.float(), answers)
        amp.step(loss, opt, clip_grad_norm=clip, parameters=model.parameters())
        sched.step()
        accuracy = (logits.detach().argmax(-1) == answers).float().mean()
        return logged(i, steps, loss=loss.detach(), accuracy=accuracy)

    history = train_steps(step, steps, desc=desc, log_every=log_every,
                          disable_progress=None if progress is None else not progress)
    model.eval()
    return history


@dataclass
class TrainedJob:
    """What :func:`train_jobs` returns per job: the model, its history, its training seconds."""

    model: nn.Module
    history: TrainHistory
    seconds: float


def _model_for(job: VQAJob, data: VQADataset) -> nn.Module:
    return build_model(job, len(data.vocab), len(data.answer_names), data.images.size(-1),
                       data.grid or 4)


def _data_for(job: VQAJob, data: VQADataset | Mapping[str, VQADataset]) -> VQADataset:
    if isinstance(data, VQADataset):
        return data
    if job.dataset not in data:
        raise ValueError(f"job {job.name!r} trains on dataset {job.dataset!r}, which is not among "
                         f"the datasets given: {sorted(data)}")
    return data[job.dataset]


_WORKER_DATA: VQADataset | dict[str, VQADataset] | None = None


def _worker_init(data: VQADataset | dict[str, VQADataset]) -> None:
    global _WORKER_DATA
    torch.set_num_threads(1)  # one process per core, one thread per process
    _WORKER_DATA = data


def _run_job(job: VQAJob, data: VQADataset | None = None, in_worker: bool = False, progress: bool = True):
    data = _data_for(job, data if data is not None else _WORKER_DATA)
    model = _model_for(job, data)
    device = torch.device("cpu") if in_worker else get_device()
    t0 = time.perf_counter()
    history = train_vqa(model.to(device), data, job.steps, job.batch_size, job.lr, job.seed,
                        job.warmup, job.weight_decay, desc=job.name,
                        progress=False if in_worker or not progress else None)
    seconds = time.perf_counter() - t0
    if in_worker:  # send the weights back as bytes
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        return buf.getvalue(), dict(history), history.interrupted, seconds
    return TrainedJob(model, history, seconds)


def _run_in_worker(job: VQAJob):
    return _run_job(job, None, True)


def _shareable(data: VQADataset) -> VQADataset:
    """Only what training reads (no scene graphs), to ship to a worker process."""
    return VQADataset(data.images, data.image_index, [], data.tokens, data.answers, data.kinds,
                      data.vocab, data.answer_names, data.kind_names, None, data.grid)


def train_jobs(jobs: Sequence[VQAJob], data: VQADataset | Mapping[str, VQADataset],
               workers: int = 1, progress: bool = True) -> dict[str, TrainedJob]:
    """Train every job; with ``workers > 1``, that many at a time, one process per CPU core.

    ``data`` is one training set, or several by name (``{"easy-VQA": ..., "relational": ...}``),
    each job then naming its own in ``job.dataset``. Each job is seeded by itself (weights and
    batches), so a model comes out the same whether it is trained here with one thread or in a
    worker; only the wall-clock time changes. With several workers the jobs go out longest
    first, and one progress bar counts the models finished (``progress=False``: none). On a
    GPU, or with ``workers=1``, they run one after the other in this process, each with its
    own progress bar.
    """
    if isinstance(jobs, (str, VQAJob)) or not isinstance(jobs, Sequence) or not jobs \
            or not all(isinstance(j, VQAJob) for j in jobs):
        raise TypeError(f"jobs must be a non-empty list of VQAJob, got {describe(jobs)}")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique, got {names}")
    check_positive_int("workers", workers)
    check_bool("progress", progress)
    if not isinstance(data, VQADataset) and not (
            isinstance(data, Mapping) and data and all(isinstance(d, VQADataset) for d in data.values())):
        raise TypeError(f"data must be a VQADataset or a dict of them by name, got {describe(data)}")
    for job in jobs:
        _data_for(job, data)  # every job's dataset is there, before anything runs
    if workers == 1 or len(jobs) == 1 or get_device().type != "cpu":
        return {j.name: _run_job(j, _data_for(j, data), progress=progress) for j in jobs}
    cost = {"blind": 0.3, "concat": 1.0, "product": 1.0, "attention": 1.2, "transformer": 2.0}

    def work(job: VQAJob) -> float:  # a rough cost: steps × batch × per-sample cost × pixels
        pixels = _data_for(job, data).images[0].numel()
        return job.steps * job.batch_size * cost[job.model] * (pixels if job.model != "blind" else 1024)

    order = sorted(jobs, key=lambda j: -work(j))
    shared = _shareable(data) if isinstance(data, VQADataset) else {k: _shareable(d) for k, d in data.items()}
    ctx = torch.multiprocessing.get_context("spawn")  # not fork: a forked OpenMP runtime can hang
    with ctx.Pool(min(workers, len(jobs)), initializer=_worker_init, initargs=(shared,)) as pool:
        running = pool.imap(_run_in_worker, order, chunksize=1)  # results in the order sent
        outputs = list(tqdm(running, total=len(order), desc=f"{len(order)} models, {workers} at a time",
                            unit="model", disable=not progress))
    results = {}
    for job, (weights, hist, interrupted, seconds) in zip(order, outputs, strict=True):
        model = _model_for(job, _data_for(job, data))
        model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
        history = TrainHistory(hist)
        history.interrupted = interrupted
        results[job.name] = TrainedJob(model.eval(), history, seconds)
    return {j.name: results[j.name] for j in jobs}


# ---------------------------------------------------------------------------------------------
# The notebook's settings (shared with scripts/tune_vqa_baselines.py)
# ---------------------------------------------------------------------------------------------

_REL_ENCODER = {"channels": 128, "stem": 8, "pos_init": "sincos"}  # 32×32 scenes: one 8×8 conv per cell
_EASY_ENCODER = {"channels": 16, "stem": 4, "context": 1}  # 64×64 images, shapes wider than a cell


def _models(encoder: dict, grid: dict, transformer: bool, hops: tuple[int, ...]) -> dict[str, dict]:
    small = {"dim": 64, "hidden": 128}
    out = {
        "blind": {"model": "blind", "kwargs": dict(small)},
        "concat": {"model": "concat", "kwargs": {**small, **grid, "encoder": encoder}},
        "product": {"model": "product", "kwargs": {**small, **grid, "encoder": encoder}},
    }
    for h in hops:
        out[f"attention-{h}"] = {"model": "attention",
                                 "kwargs": {**small, "attn_dim": 64, "hops": h, **grid, "encoder": encoder}}
    if transformer:
        out["transformer"] = {"model": "transformer",
                              "kwargs": {"d_model": 64, "nhead": 4, "num_layers": 2, "dim_feedforward": 128,
                                         **grid, "encoder": encoder}}
    return out


#: Notebook 13's budget and models, per dataset: every model gets the same ``steps`` of
#: ``batch_size`` questions and the same warm-up; ``lr`` is each model's own learning rate,
#: chosen on the validation split by ``scripts/tune_vqa_baselines.py`` (best mean over its seeds).
SETTINGS: dict[str, dict] = {
    "relational": {
        "steps": 3000, "batch_size": 64, "warmup": 100,
        "sizes": {"n_train": 12000, "n_valid": 1000, "n_test": 2000, "n_compositional": 1000},
        "models": _models(_REL_ENCODER, {}, transformer=True, hops=(1, 2)),
        "lr": {"blind": 1e-3, "concat": 1e-3, "product": 1e-3, "attention-1": 1e-3, "attention-2": 1e-3,
               "transformer": 1e-3},
    },
    "easy-VQA": {
        "steps": 1500, "batch_size": 64, "warmup": 100,
        "sizes": {},
        "models": _models(_EASY_ENCODER, {"grid": 4}, transformer=False, hops=(1,)),
        "lr": {"blind": 1e-3, "concat": 1e-3, "product": 1e-3, "attention-1": 1e-3},
    },
}


def settings_job(dataset: str, name: str, seed: int = 0, lr: float | None = None,
                 steps: int | None = None) -> VQAJob:
    """The job that trains model ``name`` of :data:`SETTINGS` on ``dataset``: its budget, its
    size and (unless ``lr`` is given) its tuned learning rate; ``steps`` overrides the budget
    (fast mode).

    >>> job = settings_job("relational", "attention-2", seed=1)
    >>> job.model, job.model_kwargs["hops"], job.steps == SETTINGS["relational"]["steps"], job.dataset
    ('attention', 2, True, 'relational')
    """
    check_one_of("dataset", dataset, tuple(SETTINGS))
    settings = SETTINGS[dataset]
    check_one_of("name", name, tuple(settings["models"]))
    check_int("seed", seed, low=0)
    if lr is not None:
        check_real("lr", lr, 0.0, low_open=True)
    if steps is not None:
        check_positive_int("steps", steps)
    steps = settings["steps"] if steps is None else steps
    base = settings["models"][name]
    return VQAJob(f"{dataset}|{name}|seed {seed}", base["model"], steps,
                  lr=settings["lr"][name] if lr is None else lr, seed=seed,
                  batch_size=settings["batch_size"], warmup=min(settings["warmup"], steps - 1),
                  model_kwargs=base["kwargs"], dataset=dataset)


def load_datasets(dataset: str, **sizes: int) -> dict[str, VQADataset]:
    """The splits of ``dataset`` as the notebook uses them: ``"easy-VQA"`` (train / valid / test,
    read from the installed package) or ``"relational"`` (train / valid / test / compositional,
    generated from seed 0 with :data:`SETTINGS`' sizes, which ``sizes`` may override).

    >>> data = load_datasets("relational", n_train=8, n_valid=4, n_test=4, n_compositional=4)
    >>> sorted(data), len(data["train"])
    (['compositional', 'test', 'train', 'valid'], 8)
    """
    check_one_of("dataset", dataset, tuple(SETTINGS))
    if dataset == "easy-VQA":
        if sizes:
            raise ValueError(f"easy-VQA has fixed sizes; got sizes {sorted(sizes)}")
        from .datasets.easy_vqa import load_easy_vqa_splits

        return load_easy_vqa_splits()
    return make_question_splits(seed=0, **{**SETTINGS[dataset]["sizes"], **sizes})


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def per_kind_accuracy(predictions: torch.Tensor, data: VQADataset) -> dict[str, float]:
    """Accuracy for each question kind, and ``"all"``.

    >>> from course_utils.datasets.questions import make_questions
    >>> data = make_questions(8, seed=0)
    >>> per_kind_accuracy(data.answers, data)["all"]
    1.0
    """
    correct = (predictions.cpu() == data.answers).float()
    out = {"all": float(correct.mean())}
    for k, name in enumerate(data.kind_names):
        sel = data.kinds == k
        out[name] = float(correct[sel].mean()) if bool(sel.any()) else float("nan")
    return out


def confusion_matrix(predictions: torch.Tensor, answers: torch.Tensor, num_answers: int) -> torch.Tensor:
    """``(A, A)`` counts: row = the true answer, column = the predicted one.

    >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2).tolist()
    [[1, 1], [0, 1]]
    """
    check_positive_int("num_answers", num_answers)
    for name, t in (("predictions", predictions), ("answers", answers)):
        check_token_ids(name, t, num_answers)
    if predictions.shape != answers.shape or predictions.dim() != 1:
        raise ValueError(f"predictions and answers must be 1-D of one length, got "
                         f"{describe(predictions)} and {describe(answers)}")
    flat = answers.cpu().long() * num_answers + predictions.cpu().long()
    return torch.bincount(flat, minlength=num_answers**2).reshape(num_answers, num_answers)


def grounding_score(maps: torch.Tensor, focus: torch.Tensor, criterion: str = "mass") -> float:
    """The share of attention on the cells of the objects each question refers to.

    * ``maps`` ``(B, N)`` — one attention map per question (rows sum to 1);
    * ``focus`` ``(B, N)`` bool — the cells of the objects the question refers to;
    * ``criterion`` — ``"mass"``: the attention mass on those cells, averaged over questions;
      ``"peak"``: the fraction of questions whose most attended cell is one of them.

    Questions that refer to no object (a count of zero) are left out.

    >>> maps = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.1, 0.1, 0.4, 0.4]])
    >>> focus = torch.tensor([[True, True, False, False], [True, False, False, False]])
    >>> grounding_score(maps, focus)                        # (0.9 + 0.1) / 2
    0.5
    >>> grounding_score(maps, focus, "peak")                # the first peaks on its object
    0.5
    """
    check_float_tensor("maps", maps, dims=2)
    check_one_of("criterion", criterion, ("mass", "peak"))
    if not isinstance(focus, torch.Tensor) or focus.dtype != torch.bool or focus.shape != maps.shape:
        raise ValueError(f"focus must be a bool tensor of the maps' shape {tuple(maps.shape)}, "
                         f"got {describe(focus)}")
    keep = focus.any(dim=1)
    if not bool(keep.any()):
        raise ValueError("no question refers to an object (focus is all False): nothing to score")
    maps, focus = maps[keep], focus[keep].to(maps.device)
    if criterion == "mass":
        return float((maps * focus).sum(dim=1).mean())
    peak = maps.argmax(dim=1, keepdim=True)  # (B, 1)
    return float(focus.gather(1, peak).float().mean())


@torch.no_grad()
def evaluate(model: nn.Module, data: VQADataset, batch_size: int = 500,
             keep_maps: bool | None = None) -> dict:
    """Answer every question of ``data`` and score the answers.

    Returns ``{"accuracy", "per_kind", "predictions", "confusion", "maps"}`` and, when the
    model attends and ``data`` knows which objects each question refers to, ``"grounding"``
    (attention mass on them, each hop's map averaged over the hops), ``"grounding_per_hop"``
    and ``"grounding_peak"``.
    """
    if not isinstance(data, VQADataset):
        raise TypeError(f"data must be a VQADataset, got {describe(data)}")
    check_positive_int("batch_size", batch_size)
    if keep_maps is not None:
        check_bool("keep_maps", keep_maps)
    device = next(model.parameters()).device
    model.eval()
    preds, maps = [], []
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        images, tokens, _ = data.batch(idx, device)
        logits, m = model(images, tokens)
        preds.append(logits.argmax(-1).cpu())
        if m is not None:
            maps.append(m.float().cpu())
    predictions = torch.cat(preds)
    out: dict = {
        "accuracy": float((predictions == data.answers).float().mean()),
        "per_kind": per_kind_accuracy(predictions, data),
        "predictions": predictions,
        "confusion": confusion_matrix(predictions, data.answers, len(data.answer_names)),
        "maps": torch.cat(maps) if maps else None,  # (N, hops, cells)
    }
    if out["maps"] is not None and data.focus is not None:
        hops = out["maps"].size(1)
        per_hop = [grounding_score(out["maps"][:, h], data.focus) for h in range(hops)]
        out["grounding_per_hop"] = per_hop
        out["grounding"] = sum(per_hop) / hops
        out["grounding_peak"] = [grounding_score(out["maps"][:, h], data.focus, "peak") for h in range(hops)]
    if keep_maps is False:
        out["maps"] = None
    return out
