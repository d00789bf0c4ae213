"""Image captioning with visual attention (notebook 12): Show, Attend and Tell, then a transformer.

The pieces, in the order the notebook builds them:

1. :class:`GridEncoder` — a small CNN applied to each cell of a ``grid × grid`` partition of the
   image *separately* (patch-local), plus a learned embedding of the cell's position. Feature
   vector ``i`` describes cell ``i`` and nothing else, so an attention map over the features is
   a map over the image that does not mislead.
2. Decoders, all with the same ``init_state`` / ``step`` interface (so one greedy decoder and
   one beam search serve them all):

   * :class:`AttentionLSTMDecoder` — Xu et al. (2015): at every word an LSTM asks additive
     (Bahdanau) attention for a context vector over the grid, with the gating scalar β and the
     *doubly stochastic* regulariser ``λ Σ_i (1 − Σ_t α_ti)²`` (:func:`doubly_stochastic_penalty`);
   * :class:`PooledLSTMDecoder` — the baselines without attention: the mean of the grid
     features (``pool="mean"``, the straw man) or the whole flattened grid (``pool="flat"``,
     the honest one) gives one image vector that sets the LSTM's initial state and is fed to
     the LSTM and to its output layer at every word (where the attention decoder uses z_t);
   * :class:`TransformerCaptionDecoder` — the course's :class:`~course_utils.transformer.
     TransformerDecoderLayer` blocks: causal self-attention over the words, cross-attention
     over the grid (its maps are read from ``MultiHeadAttention.last_attn_weights``).

3. :func:`greedy_decode` and :func:`beam_search`.
4. Metrics: :func:`bleu4` (sacrebleu), :func:`exact_match`, :func:`slot_accuracy` and the
   grounding score (:func:`grounding_hits`, :func:`grounding_score`): for each generated
   colour or shape word, does the attention peak fall on the object that word names?
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import decoding
from .attention import AdditiveAttention
from .checks import (
    check_bool,
    check_finite,
    check_float_tensor,
    check_instance,
    check_int,
    check_like_module,
    check_non_negative_int,
    check_on_device,
    check_one_of,
    check_positive_int,
    check_probability,
    check_real,
    check_sequence_of_str,
    check_token_ids,
    describe,
)
from .datasets.scenes import COLOURS, SHAPES, SceneDataset, parse_caption, parse_relations
from .datasets.vocab import Vocab
from .positional import LearnedPositionalEmbedding, sinusoidal_table
from .precision import MixedPrecision
from .runtime import get_device
from .seq2seq import corpus_bleu
from .training import TrainHistory, train_steps
from .transformer import TransformerDecoder, TransformerDecoderLayer

__all__ = [
    "AttentionLSTMDecoder",
    "CaptionJob",
    "Captioner",
    "Decoded",
    "GridEncoder",
    "PooledLSTMDecoder",
    "TrainedJob",
    "SyncEvery",
    "TransformerCaptionDecoder",
    "beam_search",
    "bleu4",
    "build_captioner",
    "caption_loss",
    "doubly_stochastic_penalty",
    "evaluate",
    "exact_match",
    "greedy_decode",
    "grounding_hits",
    "grounding_score",
    "sincos_grid",
    "slot_accuracy",
    "train_captioner",
    "train_jobs",
]


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------


class GridEncoder(nn.Module):
    """A patch-local CNN: ``images (B, 3, H, W) -> features (B, grid*grid, dim)``.

    Every convolution has kernel = stride (2×2, stride 2, no padding), so the receptive fields
    never overlap: after three of them, output cell ``(r, c)`` of a 32×32 image has seen exactly
    the 8×8 patch of pixels of cell ``(r, c)`` and nothing else. No feature leaks across cells,
    so an attention map over the features *is* a map over the image. A learned embedding of
    each cell's position is added, so the decoder can tell where a feature comes from (it needs
    that for "left of" / "above"); ``pos_std`` is its initial scale (the LayerNorm'd features
    have unit scale).

    ``pos_init="sincos"`` starts the position embedding from a 2-D sinusoidal table
    (:func:`sincos_grid`: the row on half of the dims, the column on the other half) instead of
    ``N(0, pos_std²)``: "left of" and "above" are then simple functions of it from the start.
    ``stem`` is the first convolution's kernel and stride (2 by default; 4 halves the cost on
    64×64 images, still patch-local). ``context`` adds that many 3×3 convolutions over the grid
    of cells (residual, after the local CNN): each cell then also sees its neighbours, for
    shapes larger than a cell — and the attention maps are no longer strictly local.

    >>> enc = GridEncoder(dim=32, grid=4, image_size=32)
    >>> enc(torch.rand(2, 3, 32, 32)).shape                 # (B, N = 4*4, D)
    torch.Size([2, 16, 32])
    >>> GridEncoder(dim=32, grid=4, image_size=64, stem=4, context=1)(torch.rand(2, 3, 64, 64)).shape
    torch.Size([2, 16, 32])
    """

    def __init__(self, dim: int = 128, grid: int = 4, image_size: int = 32, channels: int = 32,
                 pos_std: float = 0.02, stem: int = 2, context: int = 0, pos_init: str = "normal") -> None:
        super().__init__()
        for name, n in (("dim", dim), ("grid", grid), ("image_size", image_size), ("channels", channels),
                        ("stem", stem)):
            check_positive_int(name, n)
        check_real("pos_std", pos_std, 0.0)
        check_int("context", context, low=0)
        check_one_of("pos_init", pos_init, ("normal", "sincos"))
        if image_size % grid:
            raise ValueError(f"image_size must be a multiple of grid, got {image_size} and {grid}")
        patch = image_size // grid
        if patch & (patch - 1):
            raise ValueError(f"the cell size image_size / grid must be a power of 2, got {patch}")
        if stem & (stem - 1) or stem < 2 or stem > patch:
            raise ValueError(f"stem must be a power of 2 in [2, {patch}] (the cell size), got {stem}")
        self.dim, self.grid, self.image_size = dim, grid, image_size
        layers: list[nn.Module] = []
        c_in, c_out = 3, channels
        kernels = [stem] + [2] * int(math.log2(patch // stem))  # each divides the resolution
        for k in kernels:
            layers += [nn.Conv2d(c_in, c_out, kernel_size=k, stride=k), nn.ReLU()]
            c_in, c_out = c_out, min(2 * c_out, dim)
        layers.append(nn.Conv2d(c_in, dim, kernel_size=1))  # (B, D, grid, grid)
        self.cnn = nn.Sequential(*layers)
        self.context = nn.ModuleList(nn.Conv2d(dim, dim, kernel_size=3, padding=1) for _ in range(context))
        self.norm = nn.LayerNorm(dim)  # per cell, so still local; keeps the attention's tanh unsaturated
        if pos_init == "sincos":  # rows on the first half of the dims, columns on the second
            self.pos = nn.Parameter(sincos_grid(grid, dim))  # (N, D), learned from there
        else:
            self.pos = nn.Parameter(torch.randn(grid * grid, dim) * pos_std)  # (N, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_float_tensor("images", images)
        check_like_module("images", images, self.cnn[0].weight)
        if images.dim() != 4 or images.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(
                f"images must have shape (B, 3, {self.image_size}, {self.image_size}), "
                f"got {tuple(images.shape)}"
            )
        feats = self.cnn(images)  # (B, D, grid, grid)
        for conv in self.context:  # each cell sees its 3×3 neighbourhood of cells
            feats = feats + torch.relu(conv(feats))
        feats = self.norm(feats.flatten(2).transpose(1, 2))  # (B, N, D), cells in reading order
        return feats + self.pos


def sincos_grid(grid: int, dim: int) -> torch.Tensor:
    """A 2-D sinusoidal position table ``(grid * grid, dim)``, cells in reading order: cell
    ``(r, c)`` gets the 1-D table of Vaswani et al. at position ``r`` on its first ``dim // 2``
    dims and at position ``c`` on the others (as DETR does for image features).

    >>> t = sincos_grid(4, 8)
    >>> t.shape, torch.equal(t[1, :4], t[0, :4]), torch.equal(t[4, 4:], t[0, 4:])   # same row / column
    (torch.Size([16, 8]), True, True)
    """
    check_positive_int("grid", grid)
    check_positive_int("dim", dim)
    if dim % 2:
        raise ValueError(f"dim must be even (half for the rows, half for the columns), got {dim}")
    half = sinusoidal_table(grid, dim // 2)  # (grid, dim / 2)
    rows = half[:, None, :].expand(grid, grid, dim // 2)
    cols = half[None, :, :].expand(grid, grid, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(grid * grid, dim)


def _check_sizes(**sizes: int) -> None:
    for name, n in sizes.items():
        check_positive_int(name, n)


def _check_feats(feats: torch.Tensor, dim: int, weight: torch.Tensor,
                 cells: int | None = None) -> None:
    """``feats (B, N, dim)``: the grid features of a batch of images, with the dtype and device
    of the layer ``weight`` that reads them."""
    check_float_tensor("feats", feats)
    check_like_module("feats", feats, weight)
    if feats.dim() != 3 or feats.size(-1) != dim or (cells is not None and feats.size(1) != cells):
        n = "N" if cells is None else str(cells)
        raise ValueError(f"feats must have shape (B, {n}, {dim}), got {describe(feats)}")


def _check_words(tokens: torch.Tensor, embedding: nn.Embedding, feats: torch.Tensor,
                 dims: int = 2) -> None:
    """``tokens`` (B, T) (``dims=2``) or (B,) (one step) word ids of ``embedding``'s vocabulary
    on its device, one row per image of ``feats``."""
    check_token_ids("tokens", tokens, embedding.num_embeddings)
    check_on_device("tokens", tokens, embedding.weight.device)
    if tokens.dim() != dims or tokens.size(0) != feats.size(0) or (dims == 2 and tokens.size(1) == 0):
        want = "(B, T) with T >= 1" if dims == 2 else "(B,)"
        raise ValueError(f"tokens must have shape {want} with B = {feats.size(0)} (the images, "
                         f"feats {tuple(feats.shape)}), got {describe(tokens)}")


# ---------------------------------------------------------------------------------------------
# Decoders: init_state(feats) -> state (a dict of tensors, batch first); step(tokens, state) ->
# (logits (B, V), new state, attention over the grid (B, N) or None)
# ---------------------------------------------------------------------------------------------


class AttentionLSTMDecoder(nn.Module):
    r"""Show, Attend and Tell (Xu et al., 2015), soft attention.

    At step t, with the previous state :math:`h_{t-1}` and the grid features :math:`a_i`:

    .. math::
        e_{ti} = w^\top \tanh(W_a a_i + W_h h_{t-1}),\quad
        \alpha_t = \operatorname{softmax}(e_t),\quad
        z_t = \beta_t \sum_i \alpha_{ti} a_i,\quad \beta_t = \sigma(f_\beta(h_{t-1}))

    then :math:`h_t = \mathrm{LSTM}([E y_{t-1}; z_t], h_{t-1})` and the word logits come
    from :math:`[h_t; z_t; E y_{t-1}]`. The initial state is an MLP of the mean feature.

    >>> dec = AttentionLSTMDecoder(vocab_size=10, feat_dim=16, hidden_dim=24)
    >>> feats, tokens = torch.randn(2, 16, 16), torch.randint(0, 10, (2, 5))
    >>> logits, alphas = dec(feats, tokens)
    >>> logits.shape, alphas.shape                      # (B, T, V), (B, T, N)
    (torch.Size([2, 5, 10]), torch.Size([2, 5, 16]))
    """

    def __init__(
        self,
        vocab_size: int,
        feat_dim: int = 128,
        embed_dim: int = 64,
        hidden_dim: int = 128,
        attn_dim: int = 128,
        dropout: float = 0.1,
        gate: bool = True,
    ) -> None:
        super().__init__()
        _check_sizes(vocab_size=vocab_size, feat_dim=feat_dim, embed_dim=embed_dim, hidden_dim=hidden_dim,
                     attn_dim=attn_dim)
        check_probability("dropout", dropout)
        check_bool("gate", gate)
        self.vocab_size, self.feat_dim = vocab_size, feat_dim
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.attention = AdditiveAttention(hidden_dim, feat_dim, attn_dim)
        self.init_h = nn.Linear(feat_dim, hidden_dim)
        self.init_c = nn.Linear(feat_dim, hidden_dim)
        self.f_beta = nn.Linear(hidden_dim, 1) if gate else None
        self.cell = nn.LSTMCell(embed_dim + feat_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim + feat_dim + embed_dim, vocab_size)

    def init_state(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_feats(feats, self.feat_dim, self.init_h.weight)
        mean = feats.mean(dim=1)  # (B, D)
        return {
            "h": torch.tanh(self.init_h(mean)),  # (B, Hd)
            "c": torch.tanh(self.init_c(mean)),  # (B, Hd)
            "feats": feats,  # (B, N, D)
            "keys": self.attention.project_keys(feats),  # (B, N, A): W_a a_i, once per image
        }

    def step(self, tokens: torch.Tensor, state: dict[str, torch.Tensor]):
        h, c, feats = state["h"], state["c"], state["feats"]
        _check_words(tokens, self.embed, feats, dims=1)
        context, alpha = self.attention(h, feats, projected_keys=state["keys"])  # (B, D), (B, N)
        if self.f_beta is not None:
            context = torch.sigmoid(self.f_beta(h)) * context  # the gating scalar β
        emb = self.embed(tokens)  # (B, E)
        h, c = self.cell(torch.cat([emb, context], dim=-1), (h, c))
        logits = self.out(self.dropout(torch.cat([h, context, emb], dim=-1)))  # (B, V)
        return logits, {**state, "h": h, "c": c}, alpha

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: ``tokens (B, T)`` are the inputs; returns logits ``(B, T, V)`` and
        the attention maps ``(B, T, N)`` (map ``t`` is the one used to predict word ``t``)."""
        state = self.init_state(feats)
        _check_words(tokens, self.embed, feats)
        h, c, keys = state["h"], state["c"], state["keys"]
        emb = self.embed(tokens)  # (B, T, E): all the inputs are known, embed them at once
        hs, contexts, alphas = [], [], []
        for t in range(tokens.size(1)):  # the same maths as step(), with the output layer hoisted
            context, alpha = self.attention(h, feats, projected_keys=keys)  # (B, D), (B, N)
            if self.f_beta is not None:
                context = torch.sigmoid(self.f_beta(h)) * context
            h, c = self.cell(torch.cat([emb[:, t], context], dim=-1), (h, c))
            hs.append(h)
            contexts.append(context)
            alphas.append(alpha)
        hidden = torch.cat([torch.stack(hs, 1), torch.stack(contexts, 1), emb], dim=-1)
        return self.out(self.dropout(hidden)), torch.stack(alphas, 1)  # (B, T, V), (B, T, N)


class PooledLSTMDecoder(nn.Module):
    """The no-attention baselines: one image vector ``v``, the same at every word.

    ``pool="mean"`` — ``v`` comes from the mean of the grid features (positions averaged away:
    the straw man); ``pool="flat"`` — from the whole grid, flattened (the honest baseline: it
    sees everything, but has to squeeze the scene into one vector before the first word).
    Either way ``v = W · pooled`` sets the LSTM's initial state, is fed with the
    previous word as the LSTM's input at every step, and goes into the output layer with
    :math:`h_t` — exactly where the attention decoder uses its context :math:`z_t`. The image
    is never forgotten, and the only thing missing against the attention decoder is attention.
    ``v`` has as many numbers (``img_dim``) as the attention decoder's context vector has.

    >>> dec = PooledLSTMDecoder(vocab_size=10, feat_dim=16, grid_cells=16, pool="flat")
    >>> logits, alphas = dec(torch.randn(2, 16, 16), torch.randint(0, 10, (2, 5)))
    >>> logits.shape, alphas is None
    (torch.Size([2, 5, 10]), True)
    """

    def __init__(
        self,
        vocab_size: int,
        feat_dim: int = 128,
        grid_cells: int = 16,
        pool: str = "flat",
        embed_dim: int = 64,
        hidden_dim: int = 128,
        dropout: float = 0.1,
        img_dim: int | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(vocab_size=vocab_size, feat_dim=feat_dim, grid_cells=grid_cells, embed_dim=embed_dim,
                     hidden_dim=hidden_dim)
        if pool not in ("mean", "flat"):
            raise ValueError(f"pool must be 'mean' or 'flat', got {pool!r}")
        check_probability("dropout", dropout)
        if img_dim is not None:
            check_positive_int("img_dim", img_dim)
        self.pool, self.grid_cells = pool, grid_cells
        self.vocab_size, self.feat_dim = vocab_size, feat_dim
        img_dim = img_dim or feat_dim
        in_dim = feat_dim * grid_cells if pool == "flat" else feat_dim
        # A plain linear map, no LayerNorm after it: normalising v cost the flat baseline most
        # of what it could learn (1,000 steps, validation split: 5.2 % exact captions with the
        # LayerNorm, 18.0–22.8 % without it at learning rates 1e-3–3e-3).
        self.project = nn.Linear(in_dim, img_dim)
        self.init_hc = nn.Linear(img_dim, 2 * hidden_dim)
        self.embed = nn.Embedding(vocab_size, embed_dim)
        # no attention, so the input of every step is known up front: one fused nn.LSTM call
        self.lstm = nn.LSTM(embed_dim + img_dim, hidden_dim, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        # the attention decoder's "deep output": the word is read from [h_t; v; E y_{t-1}]
        self.out = nn.Linear(hidden_dim + img_dim + embed_dim, vocab_size)

    def init_state(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_feats(feats, self.feat_dim, self.out.weight)
        if self.pool == "flat" and feats.size(1) != self.grid_cells:
            raise ValueError(f"expected {self.grid_cells} grid cells, got features {tuple(feats.shape)}")
        pooled = feats.mean(dim=1) if self.pool == "mean" else feats.flatten(1)  # (B, D | N*D)
        v = self.project(pooled)  # (B, I)
        h, c = torch.tanh(self.init_hc(v)).chunk(2, dim=-1)  # (B, Hd) each
        return {"h": h, "c": c, "v": v}

    def step(self, tokens: torch.Tensor, state: dict[str, torch.Tensor]):
        _check_words(tokens, self.embed, state["v"], dims=1)
        hc = (state["h"][None].contiguous(), state["c"][None].contiguous())  # (1, B, Hd)
        emb = self.embed(tokens)  # (B, E)
        x = torch.cat([emb, state["v"]], dim=-1)[:, None]  # (B, 1, E + I)
        y, (h, c) = self.lstm(x, hc)  # y (B, 1, Hd)
        logits = self.out(self.dropout(torch.cat([y[:, 0], state["v"], emb], dim=-1)))  # (B, V)
        return logits, {**state, "h": h[0], "c": c[0]}, None

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        state = self.init_state(feats)
        _check_words(tokens, self.embed, feats)
        hc = (state["h"][None].contiguous(), state["c"][None].contiguous())
        emb = self.embed(tokens)  # (B, T, E)
        v = state["v"][:, None].expand(-1, emb.size(1), -1)  # (B, T, I): the same at every step
        y, _ = self.lstm(torch.cat([emb, v], dim=-1), hc)  # (B, T, Hd)
        return self.out(self.dropout(torch.cat([y, v, emb], dim=-1))), None


class TransformerCaptionDecoder(nn.Module):
    """A transformer decoder over the words with cross-attention to the grid (the memory).

    Built from the course's :class:`TransformerDecoderLayer` (pre-LN). Every layer's
    cross-attention keeps its per-head weights (``store_weights``), read back by
    :meth:`cross_attention` as ``(B, layers, heads, T, N)``.

    >>> dec = TransformerCaptionDecoder(vocab_size=10, feat_dim=16, d_model=16, nhead=2, num_layers=2)
    >>> logits, maps = dec(torch.randn(2, 16, 16), torch.randint(0, 10, (2, 5)))
    >>> logits.shape, maps.shape                # maps: last layer, mean over heads (B, T, N)
    (torch.Size([2, 5, 10]), torch.Size([2, 5, 16]))
    >>> dec.cross_attention().shape             # (B, layers, heads, T, N)
    torch.Size([2, 2, 2, 5, 16])
    """

    def __init__(
        self,
        vocab_size: int,
        feat_dim: int = 128,
        d_model: int = 128,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 256,
        dropout: float = 0.1,
        max_len: int = 40,
        grid_cells: int = 16,
        memory_pos_std: float = 0.5,
    ) -> None:
        super().__init__()
        _check_sizes(vocab_size=vocab_size, feat_dim=feat_dim, d_model=d_model, nhead=nhead,
                     num_layers=num_layers, dim_feedforward=dim_feedforward, max_len=max_len,
                     grid_cells=grid_cells)
        check_real("memory_pos_std", memory_pos_std, 0.0)
        self.vocab_size, self.max_len = vocab_size, max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        # Word and position embeddings on the same scale (N(0, 0.02²), as GPT-2). With
        # nn.Embedding's N(0, 1) times the usual √d_model, the words were ~500× larger than the
        # positions and the pre-LN layers could not tell where in the caption they were.
        nn.init.normal_(self.embed.weight, std=0.02)
        self.pos = LearnedPositionalEmbedding(max_len, d_model)
        # Where each cell is, on the scale of the cell features. Cross-attention sees the cells
        # as a set: their only position signal is the encoder's embedding, which starts at
        # N(0, 0.02²) against LayerNorm'd features of unit scale. The attention LSTM learns to
        # scale it up; the transformer, in 1,000 steps, did not, and said "above" for "left of"
        # (relations 77 %). This embedding gives the positions a fair start.
        self.memory_pos = nn.Parameter(torch.randn(grid_cells, feat_dim) * memory_pos_std)  # (N, D)
        self.memory_proj = nn.Linear(feat_dim, d_model) if feat_dim != d_model else nn.Identity()
        layer = TransformerDecoderLayer(
            d_model, nhead, dim_feedforward=dim_feedforward, dropout=dropout, norm_first=True
        )
        self.decoder = TransformerDecoder(layer, num_layers, norm=nn.LayerNorm(d_model))
        for lyr in self.decoder.layers:
            lyr.multihead_attn.store_weights = True  # keep (B, H, T, N) of the last call
        self.out = nn.Linear(d_model, vocab_size)
        self.d_model = d_model

    def cross_attention(self) -> torch.Tensor:
        """The cross-attention weights of the last call: ``(B, layers, heads, T, N)``."""
        maps = [lyr.multihead_attn.last_attn_weights for lyr in self.decoder.layers]
        if any(m is None for m in maps):
            raise RuntimeError("no cross-attention weights yet: run the decoder first")
        return torch.stack(maps, dim=1)

    def memory(self, feats: torch.Tensor) -> torch.Tensor:
        """The keys and values of the cross-attention: ``feats (B, N, D) -> (B, N, d_model)``."""
        check_float_tensor("feats", feats)
        check_like_module("feats", feats, self.memory_pos)
        if feats.dim() != 3 or feats.shape[1:] != self.memory_pos.shape:
            raise ValueError(
                f"feats must have shape (B, {self.memory_pos.size(0)}, {self.memory_pos.size(1)}), "
                f"got {describe(feats)}"
            )
        return self.memory_proj(feats + self.memory_pos)

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        memory = self.memory(feats)  # (B, N, d)
        _check_words(tokens, self.embed, feats)
        if tokens.size(1) > self.max_len:
            raise ValueError(f"tokens must be at most max_len={self.max_len} long, got {tokens.size(1)}")
        x = self.pos(self.embed(tokens))  # (B, T, d): no √d_model, see __init__
        y = self.decoder(x, memory, tgt_is_causal=True)  # (B, T, d)
        maps = self.decoder.layers[-1].multihead_attn.last_attn_weights.mean(dim=1)  # (B, T, N)
        return self.out(y), maps

    def init_state(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"feats": feats, "prefix": feats.new_zeros(feats.size(0), 0, dtype=torch.long)}

    def step(self, tokens: torch.Tensor, state: dict[str, torch.Tensor]):
        # No KV cache (notebook 08 builds one): re-run the short prefix each step.
        prefix = torch.cat([state["prefix"], tokens[:, None]], dim=1)  # (B, t)
        logits, maps = self(state["feats"], prefix)
        return logits[:, -1], {**state, "prefix": prefix}, maps[:, -1]


# ---------------------------------------------------------------------------------------------
# The captioner and its loss
# ---------------------------------------------------------------------------------------------


class Captioner(nn.Module):
    """``encoder`` + ``decoder``; ``forward(images, tokens_in) -> (logits, attention | None)``."""

    def __init__(self, encoder: GridEncoder, decoder: nn.Module) -> None:
        super().__init__()
        if not isinstance(encoder, GridEncoder):
            raise TypeError(f"encoder must be a GridEncoder, got {describe(encoder)}")
        if not all(callable(getattr(decoder, m, None)) for m in ("init_state", "step", "forward")):
            raise TypeError(f"decoder must be a caption decoder (init_state, step, forward), got "
                            f"{describe(decoder)}")
        self.encoder, self.decoder = encoder, decoder

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        return self.decoder(self.encoder(images), tokens)


def doubly_stochastic_penalty(alphas: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Xu et al.'s regulariser :math:`\sum_i (1 - \sum_t \alpha_{ti})^2`, averaged over the batch.

    ``alphas (B, T, N)`` are the attention maps, ``mask (B, T)`` True for real words (the maps
    of padding steps are left out). It pushes every cell to receive a total attention of 1 over
    the caption: "pay equal attention to every part of the image".

    >>> a = torch.zeros(1, 2, 2); a[0, :, 0] = 1.0           # both words look at cell 0
    >>> doubly_stochastic_penalty(a)                        # (1 - 2)² + (1 - 0)²
    tensor(2.)
    """
    check_float_tensor("alphas", alphas)
    if alphas.dim() != 3:
        raise ValueError(f"alphas must have shape (B, T, N), got {tuple(alphas.shape)}")
    if mask is not None:
        if (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool
                or mask.shape != alphas.shape[:2]):
            raise ValueError(f"mask must be a bool tensor of shape (B, T) = "
                             f"{tuple(alphas.shape[:2])} of alphas (True for real words), got "
                             f"{describe(mask)}")
        check_on_device("mask", mask, alphas.device, of="alphas")
        alphas = alphas * mask[..., None].to(alphas.dtype)
    return ((1.0 - alphas.sum(dim=1)) ** 2).sum(dim=1).mean()


def caption_loss(
    model: Captioner, images: torch.Tensor, tokens: torch.Tensor, pad: int = 0, ds_weight: float = 0.0
) -> dict[str, torch.Tensor]:
    r"""Cross-entropy of next-word prediction (teacher forcing), plus ``ds_weight`` times the
    doubly stochastic penalty when the decoder returns attention maps:

    .. math:: \mathcal{L} = \mathrm{CE} + \lambda \sum_i \bigl(1 - \textstyle\sum_t \alpha_{ti}\bigr)^2

    with the cross-entropy averaged over the real (non-``pad``) target words and the penalty
    over the maps of those words only.
    """
    check_instance("model", model, nn.Module)
    check_non_negative_int("pad", pad)
    check_real("ds_weight", ds_weight, 0.0)
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.size(1) < 2:
        raise ValueError(f"tokens must have shape (B, T) with T >= 2 (<bos> and at least one word), "
                         f"got {describe(tokens)}")
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T)
    logits, alphas = model(images, inputs)  # (B, T, V), (B, T, N) | None
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad)
    out = {"loss": ce, "ce": ce.detach()}
    if ds_weight and alphas is not None:
        reg = doubly_stochastic_penalty(alphas, targets != pad)
        out["loss"] = ce + ds_weight * reg
        out["ds_penalty"] = reg.detach()
    return out


def train_captioner(
    model: Captioner,
    data: SceneDataset,
    steps: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    ds_weight: float = 0.0,
    seed: int = 0,
    desc: str = "training",
    clip: float = 5.0,
    warmup: int = 0,
    progress: bool | None = None,
    log_every: int | None = None,
) -> TrainHistory:
    """Adam, a linear warm-up over ``warmup`` steps then a cosine decay of the learning rate;
    random batches drawn with ``seed`` (so every model sees the same batches).

    On CUDA the steps run under autocast (bf16 on Ampere and newer, fp16 with a GradScaler
    before) and the losses are read back every ``log_every`` steps (default 25), averaged
    over them (:class:`SyncEvery`), instead of synchronising the GPU at every step.
    """
    check_instance("model", model, nn.Module)
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_real("lr", lr, 0.0, low_open=True)
    check_real("ds_weight", ds_weight, 0.0)
    check_int("seed", seed, low=0)
    if progress is not None:
        check_bool("progress", progress)
    if log_every is not None:
        check_positive_int("log_every", log_every)
    check_real("clip", clip, 0.0, low_open=True)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0 or warmup >= steps:
        raise ValueError(f"warmup must be in [0, steps), got warmup={warmup!r} for steps={steps}")
    if not isinstance(data, (SceneDataset, _TrainingData)):
        raise TypeError(f"data must be a SceneDataset, got {describe(data)}")
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    log_every = log_every or (25 if device.type == "cuda" else 1)
    check_positive_int("log_every", log_every)
    amp = MixedPrecision(device, enabled=device.type == "cuda")
    logged = SyncEvery(log_every)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def schedule(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(s - warmup, steps - warmup) / max(steps - warmup, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    pad = data.vocab.pad
    model.train()

    def step(i: int):
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        tokens = data.tokens[idx]
        tokens = tokens[:, : int((tokens != pad).sum(1).max())]  # trim the padding columns
        with amp.autocast():
            out = caption_loss(model, data.images[idx].to(device), tokens.to(device), pad, ds_weight)
        amp.step(out["loss"], opt, clip_grad_norm=clip, parameters=model.parameters())
        sched.step()
        return logged(i, steps, **{k: v.detach() for k, v in out.items()})

    history = train_steps(step, steps, desc=desc, log_every=log_every,
                          disable_progress=None if progress is None else not progress)
    model.eval()
    return history


class SyncEvery:
    """Average a training loop's metrics on the device and read them back only every ``every``
    steps (one GPU synchronisation there, none in between); between reads it repeats the last
    values. Use with ``train_steps(..., log_every=every)``, which logs exactly the steps that
    were read. A NaN in any step makes its average NaN, so the NaN guard still sees it.

    >>> sync = SyncEvery(2)
    >>> [sync(i, 5, loss=torch.tensor(float(i)))["loss"] for i in range(5)]
    [0.0, 0.0, 1.5, 1.5, 3.5]
    """

    def __init__(self, every: int) -> None:
        check_positive_int("every", every)
        self.every, self.sums, self.count, self.last = every, {}, 0, None

    def __call__(self, i: int, steps: int, **metrics: torch.Tensor) -> dict[str, float]:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0) + v
        self.count += 1
        if self.last is None or i % self.every == 0 or i == steps - 1:
            self.last = {k: float(v) / self.count for k, v in self.sums.items()}
            self.sums, self.count = {}, 0
        return self.last


@dataclass
class CaptionJob:
    """One model to train: which decoder, its size, and its training budget.

    ``decoder`` is ``"attention"`` (:class:`AttentionLSTMDecoder`), ``"mean"`` or ``"flat"``
    (:class:`PooledLSTMDecoder`) or ``"transformer"`` (:class:`TransformerCaptionDecoder`);
    every model gets its own :class:`GridEncoder` of width ``dim``. ``decoder_kwargs`` go to
    the decoder; the rest to :func:`train_captioner`.

    >>> job = CaptionJob("flat", "flat", steps=10, lr=3e-3, dim=16, decoder_kwargs={"hidden_dim": 16})
    >>> build_captioner(job, vocab_size=19).decoder.pool
    'flat'
    """

    name: str
    decoder: str
    steps: int
    lr: float
    ds_weight: float = 0.0
    warmup: int = 0
    dim: int = 128
    seed: int = 0
    decoder_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str, got {describe(self.name)}")
        check_one_of("decoder", self.decoder, DECODERS)
        check_positive_int("steps", self.steps)
        check_real("lr", self.lr, 0.0, low_open=True)
        check_real("ds_weight", self.ds_weight, 0.0)
        check_int("warmup", self.warmup, low=0, high=self.steps - 1)
        check_positive_int("dim", self.dim)
        check_int("seed", self.seed, low=0)
        if not isinstance(self.decoder_kwargs, dict):
            raise TypeError(f"decoder_kwargs must be a dict, got {describe(self.decoder_kwargs)}")


DECODERS = ("attention", "mean", "flat", "transformer")


def build_captioner(job: CaptionJob, vocab_size: int, grid: int = 4, image_size: int = 32) -> Captioner:
    """A fresh :class:`Captioner` for ``job``, its weights drawn with ``job.seed``."""
    if not isinstance(job, CaptionJob):
        raise TypeError(f"job must be a CaptionJob, got {describe(job)}")
    check_one_of("job.decoder", job.decoder, DECODERS)
    check_positive_int("grid", grid)
    check_positive_int("image_size", image_size)
    torch.manual_seed(job.seed)
    kw = dict(job.decoder_kwargs)
    if job.decoder == "attention":
        decoder: nn.Module = AttentionLSTMDecoder(vocab_size, feat_dim=job.dim, **kw)
    elif job.decoder == "transformer":
        decoder = TransformerCaptionDecoder(vocab_size, feat_dim=job.dim, **kw)
    else:
        decoder = PooledLSTMDecoder(vocab_size, feat_dim=job.dim, grid_cells=grid * grid, pool=job.decoder, **kw)
    return Captioner(GridEncoder(dim=job.dim, grid=grid, image_size=image_size), decoder)


@dataclass
class TrainedJob:
    """What :func:`train_jobs` returns per job: the model, its history, its training seconds."""

    model: Captioner
    history: TrainHistory
    seconds: float


class _TrainingData:
    """Only what :func:`train_captioner` reads (no masks), to ship to a worker process."""

    def __init__(self, data: SceneDataset) -> None:
        self.images, self.tokens, self.vocab, self.grid = data.images, data.tokens, data.vocab, data.grid

    def __len__(self) -> int:
        return len(self.tokens)


_WORKER_DATA: _TrainingData | None = None


def _worker_init(data: _TrainingData) -> None:
    global _WORKER_DATA
    torch.set_num_threads(1)  # one process per core, one thread per process
    _WORKER_DATA = data


def _run_job(job: CaptionJob, data=None, show_progress: bool | None = None):
    data = data if data is not None else _WORKER_DATA
    model = build_captioner(job, len(data.vocab), data.grid, data.images.size(-1))
    device = get_device() if show_progress is not False else torch.device("cpu")
    t0 = time.perf_counter()
    history = train_captioner(model.to(device), data, job.steps, lr=job.lr, ds_weight=job.ds_weight,
                              seed=job.seed, warmup=job.warmup, desc=job.name, progress=show_progress)
    seconds = time.perf_counter() - t0
    if show_progress is False:  # in a worker: send the weights back as bytes
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        return job.name, buf.getvalue(), dict(history), history.interrupted, seconds
    return TrainedJob(model, history, seconds)


def train_jobs(jobs: Sequence[CaptionJob], data: SceneDataset, workers: int = 1) -> dict[str, TrainedJob]:
    """Train every job; with ``workers > 1``, that many at a time, one process per CPU core.

    Each job is seeded by itself (weights and batches), so the trained models are the same, bit
    for bit, whichever way they are run, as long as this process also uses one thread (the
    workers do; more threads sum in another order); only the wall-clock time changes. With several workers the
    jobs go out longest first (``steps`` × a rough cost per step), so that the cores finish
    together, and no progress bars are shown (the worker processes print nowhere visible).
    On a GPU, or with ``workers=1``, they run one after the other in this process.
    """
    if isinstance(jobs, (str, CaptionJob)) or not isinstance(jobs, Sequence) or not jobs \
            or not all(isinstance(j, CaptionJob) for j in jobs):
        raise TypeError(f"jobs must be a non-empty list of CaptionJob, got {describe(jobs)}")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique, got {names}")
    check_positive_int("workers", workers)
    if not isinstance(data, SceneDataset):
        raise TypeError(f"data must be a SceneDataset, got {describe(data)}")
    if workers == 1 or len(jobs) == 1 or get_device().type != "cpu":
        return {j.name: _run_job(j, _TrainingData(data)) for j in jobs}
    cost = {"attention": 2.0, "transformer": 2.3, "mean": 1.0, "flat": 1.0}  # measured s/step ratios
    order = sorted(jobs, key=lambda j: -j.steps * cost.get(j.decoder, 1.0))
    ctx = torch.multiprocessing.get_context("spawn")  # not fork: a forked OpenMP runtime can hang
    results: dict[str, TrainedJob] = {}
    with ctx.Pool(min(workers, len(jobs)), initializer=_worker_init, initargs=(_TrainingData(data),)) as pool:
        outputs = pool.starmap(_run_job, [(j, None, False) for j in order], chunksize=1)
    for job, (name, weights, hist, interrupted, seconds) in zip(order, outputs, strict=True):
        model = build_captioner(job, len(data.vocab), data.grid, data.images.size(-1))
        model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
        history = TrainHistory(hist)
        history.interrupted = interrupted
        results[name] = TrainedJob(model.eval(), history, seconds)
    return {j.name: results[j.name] for j in jobs}


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


@dataclass
class Decoded:
    """``tokens (B, T)`` without ``<bos>``, ``<pad>`` after ``<eos>``; ``attention (B, T, N)``
    (the map used to predict each token; zeros after ``<eos>``) or None."""

    tokens: torch.Tensor
    attention: torch.Tensor | None


def _check_decode(model: Captioner, images: torch.Tensor, vocab: Vocab, max_len: int) -> None:
    """What decoding needs; NaN or inf pixels would only surface steps later, as logits."""
    if not isinstance(model, Captioner):
        raise TypeError(f"model must be a Captioner, got {describe(model)}")
    check_float_tensor("images", images)
    check_finite("images", images)
    if not isinstance(vocab, Vocab):
        raise TypeError(f"vocab must be a course_utils.datasets.vocab.Vocab, got {describe(vocab)}")
    check_positive_int("max_len", max_len)


def _stepper(model: Captioner, eos: int):
    """The decoder as a :mod:`course_utils.decoding` step: ``step(tokens (B, t), state)``.

    The state is ``{"decoder": the decoder's own state, "maps": (B, t - 1, N) or None}``: the
    attention map that predicted each generated word travels with the state, so beam search
    reorders it with the hypotheses. A sequence that has ended gets zero maps.
    """

    def step(tokens: torch.Tensor, state: dict):
        logits, decoder_state, alpha = model.decoder.step(tokens[:, -1], state["decoder"])
        maps = state["maps"]
        if alpha is not None:
            ended = (tokens[:, 1:] == eos).any(dim=1)  # (B,): this row already said <eos>
            alpha = alpha.masked_fill(ended[:, None], 0.0)[:, None]  # (B, 1, N)
            maps = alpha if maps is None else torch.cat([maps, alpha], dim=1)
        return logits, {"decoder": decoder_state, "maps": maps}

    return step


def _start(model: Captioner, images: torch.Tensor, vocab: Vocab) -> tuple[torch.Tensor, dict]:
    feats = model.encoder(images)  # (B, N, D)
    bos = torch.full((feats.size(0), 1), vocab.bos, dtype=torch.long, device=feats.device)
    return bos, {"decoder": model.decoder.init_state(feats), "maps": None}


@torch.no_grad()
def greedy_decode(model: Captioner, images: torch.Tensor, vocab: Vocab, max_len: int = 30) -> Decoded:
    """Pick the most likely word at every step until ``<eos>`` (or ``max_len`` words), with
    :func:`course_utils.decoding.greedy`.

    >>> from course_utils.datasets.scenes import caption_vocab
    >>> model = Captioner(GridEncoder(16), AttentionLSTMDecoder(len(caption_vocab()), 16, hidden_dim=16))
    >>> out = greedy_decode(model.eval(), torch.rand(3, 3, 32, 32), caption_vocab(), max_len=6)
    >>> out.tokens.shape, out.attention.shape
    (torch.Size([3, 6]), torch.Size([3, 6, 16]))
    """
    _check_decode(model, images, vocab, max_len)
    tokens, state = _start(model, images, vocab)
    out = decoding.greedy(_stepper(model, vocab.eos), tokens, state, max_new_tokens=max_len,
                          eos=vocab.eos, pad=vocab.pad)
    return Decoded(out.tokens[:, 1:], out.state["maps"])  # without <bos>


@torch.no_grad()
def beam_search(
    model: Captioner,
    images: torch.Tensor,
    vocab: Vocab,
    beam_size: int = 3,
    max_len: int = 30,
    length_penalty: float = 0.0,
) -> Decoded:
    """Keep the ``beam_size`` most likely partial captions per image (batched over images),
    with :func:`course_utils.decoding.beam_search`.

    A finished beam (it emitted ``<eos>``) keeps its score and only extends with ``<pad>`` at
    no cost. The best beam is chosen by ``log p / ((5 + length) / 6) ** length_penalty``
    (GNMT's penalty, the course's one convention; 0, the default, ranks by the raw log p).
    With ``beam_size=1`` this is exactly greedy decoding.

    >>> from course_utils.datasets.scenes import caption_vocab
    >>> model = Captioner(GridEncoder(16), AttentionLSTMDecoder(len(caption_vocab()), 16, hidden_dim=16))
    >>> out = beam_search(model.eval(), torch.rand(2, 3, 32, 32), caption_vocab(), beam_size=3, max_len=6)
    >>> out.tokens.shape, out.attention.shape
    (torch.Size([2, 6]), torch.Size([2, 6, 16]))
    """
    _check_decode(model, images, vocab, max_len)
    check_positive_int("beam_size", beam_size)
    check_real("length_penalty", length_penalty, 0.0)
    tokens, state = _start(model, images, vocab)
    out = decoding.beam_search(_stepper(model, vocab.eos), tokens, state, max_new_tokens=max_len,
                               beam_width=beam_size, length_penalty=length_penalty,
                               eos=vocab.eos, pad=vocab.pad)
    maps = out.state["maps"]
    return Decoded(out.tokens[:, 1:], None if maps is None else maps[out.rows])


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (0–100) with sacrebleu, one reference per hypothesis: notebook 10's
    :func:`course_utils.seq2seq.corpus_bleu`, under the name captioning papers use.

    >>> round(bleu4(["a small red circle"], ["a small red circle"]), 6)
    100.0
    """
    _check_pairs_of_captions(hypotheses, references)
    return corpus_bleu(hypotheses, references)


def _check_pairs_of_captions(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    check_sequence_of_str("hypotheses", hypotheses, allow_empty=True)
    check_sequence_of_str("references", references, allow_empty=True)
    if len(hypotheses) != len(references):
        raise ValueError(f"got {len(hypotheses)} hypotheses for {len(references)} references")


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of captions that are exactly the reference.

    >>> exact_match(["a b", "a c"], ["a b", "a b"])
    0.5
    """
    _check_pairs_of_captions(hypotheses, references)
    return sum(h == r for h, r in zip(hypotheses, references, strict=True)) / max(len(references), 1)


def slot_accuracy(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Per-slot accuracy: object ``k``'s size, colour and shape, and relation ``k``, compared
    position by position with the reference (a slot the hypothesis lacks counts as wrong).

    >>> slot_accuracy(["a small red circle above a large blue cross"],
    ...               ["a small red circle left of a large blue square"])
    {'size': 1.0, 'colour': 1.0, 'shape': 0.5, 'relation': 0.0, 'count': 1.0}
    """
    _check_pairs_of_captions(hypotheses, references)
    hits = {"size": 0, "colour": 0, "shape": 0, "relation": 0, "count": 0}
    totals = {"size": 0, "colour": 0, "shape": 0, "relation": 0, "count": 0}
    for hyp, ref in zip(hypotheses, references, strict=True):
        h_obj, r_obj = parse_caption(hyp), parse_caption(ref)
        for k, robj in enumerate(r_obj):
            for j, slot in enumerate(("size", "colour", "shape")):
                totals[slot] += 1
                hits[slot] += int(k < len(h_obj) and h_obj[k][j] == robj[j])
        h_rel, r_rel = parse_relations(hyp), parse_relations(ref)
        for k, rel in enumerate(r_rel):
            totals["relation"] += 1
            hits["relation"] += int(k < len(h_rel) and h_rel[k] == rel)
        totals["count"] += 1
        hits["count"] += int(len(h_obj) == len(r_obj))
    return {s: hits[s] / totals[s] if totals[s] else float("nan") for s in hits}


def _named_object(word: str, phrase: int, said: Sequence[tuple[str, str, str]],
                  objects: Sequence[tuple[str, str, str]]) -> int | None:
    """The index of the scene object a colour/shape ``word`` of object phrase ``phrase`` names."""
    slot = 1 if word in COLOURS else 2
    candidates = [i for i, o in enumerate(objects) if o[slot] == word]
    if not candidates:
        return None  # the word names nothing in the scene (a hallucination)
    if phrase in candidates:
        return phrase  # the object at the same place in the caption: the usual case
    # otherwise the candidate that agrees best with the whole generated phrase
    desc = said[phrase] if phrase < len(said) else ("?", "?", "?")
    return max(candidates, key=lambda i: sum(a == b for a, b in zip(objects[i], desc, strict=True)))


def grounding_hits(
    words: Sequence[str],
    attention: torch.Tensor,
    objects: Sequence[tuple[str, str, str]],
    cells: torch.Tensor,
    criterion: str = "peak",
) -> list[bool]:
    """For each colour or shape word of a caption: does its attention land on the object it names?

    * ``words`` — the generated caption (without ``<bos>``/``<eos>``);
    * ``attention`` — ``(T, N)`` or ``(T, gh, gw)``: row ``t`` is the map used to predict word ``t``;
    * ``objects`` — the scene's objects as ``(size, colour, shape)``, in caption (reading) order;
    * ``cells`` — ``(K, gh, gw)`` bool, the grid cells each object covers;
    * ``criterion`` — ``"peak"``: the most attended cell is one of the object's cells;
      ``"mass"``: at least half of the attention lies on the object's cells.

    A word that names no object of the scene counts as a miss.

    >>> objects = [("small", "red", "circle"), ("large", "blue", "square")]
    >>> cells = torch.zeros(2, 2, 2, dtype=torch.bool)
    >>> cells[0, 0, 0] = True                     # the red circle is in the top-left cell
    >>> cells[1, 1, 1] = True                     # the blue square in the bottom-right one
    >>> words = "a small red circle above a large blue square".split()
    >>> att = torch.zeros(len(words), 2, 2)       # (T, gh, gw), one map per word
    >>> att[2, 0, 0] = att[3, 0, 0] = 1.0         # "red", "circle": on the circle
    >>> att[7, 0, 0] = 1.0                        # "blue": on the circle, a miss
    >>> att[8, 1, 1] = 1.0                        # "square": on the square
    >>> grounding_hits(words, att, objects, cells)
    [True, True, False, True]
    """
    check_one_of("criterion", criterion, ("peak", "mass"))
    check_sequence_of_str("words", words, allow_empty=True)
    check_float_tensor("attention", attention, dims=(2, 3))
    check_finite("attention", attention)
    if isinstance(objects, str) or not isinstance(objects, Sequence):
        raise TypeError(f"objects must be a list of (size, colour, shape), got {describe(objects)}")
    if not isinstance(cells, torch.Tensor) or cells.dtype != torch.bool or cells.dim() not in (2, 3):
        raise TypeError(f"cells must be a bool tensor (K, gh, gw) or (K, N), got {describe(cells)}")
    if cells.size(0) != len(objects):
        raise ValueError(f"cells must have one mask per object: {len(objects)} objects, got "
                         f"{describe(cells)}")
    check_on_device("cells", cells, attention.device, of="attention")
    if attention.size(0) < len(words):
        raise ValueError(f"attention must hold a map per word ({len(words)}), got "
                         f"{describe(attention)}")
    att = attention.flatten(1)  # (T, N)
    cell = cells.reshape(cells.size(0), -1)  # (K, N)
    if att.size(1) != cell.size(1):
        raise ValueError(f"attention has {att.size(1)} cells but the object masks have {cell.size(1)}")
    said = parse_caption(words)
    hits, phrase = [], -1
    for t, w in enumerate(words):
        if w == "a":
            phrase += 1
        if w not in COLOURS and w not in SHAPES:
            continue
        if t >= att.size(0):
            hits.append(False)
            continue
        obj = _named_object(w, max(phrase, 0), said, objects)
        if obj is None:
            hits.append(False)
        elif criterion == "peak":
            hits.append(bool(cell[obj, int(att[t].argmax())]))
        else:
            hits.append(bool(att[t][cell[obj]].sum() >= 0.5))
    return hits


def grounding_score(
    captions: Sequence[Sequence[str]],
    attention: torch.Tensor,
    data: SceneDataset,
    criterion: str = "peak",
) -> float:
    """Fraction of generated colour/shape words whose attention lands on the named object.

    ``captions`` are the generated word lists, ``attention (B, T, N)`` their maps, ``data``
    the scenes they describe (same order).
    """
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise TypeError(f"captions must be a list of word lists, got {describe(captions)}")
    check_float_tensor("attention", attention, dims=3)
    check_finite("attention", attention)
    if not isinstance(data, SceneDataset):
        raise TypeError(f"data must be a SceneDataset, got {describe(data)}")
    if not len(captions) == attention.size(0) <= len(data):
        raise ValueError(f"captions ({len(captions)}), attention ({describe(attention)}) and data "
                         f"({len(data)} scenes) must describe the same scenes")
    hits: list[bool] = []
    for i, words in enumerate(captions):
        n = int(data.num_objects[i])
        objects = [o.description for o in data.objects[i]]
        hits += grounding_hits(words, attention[i], objects, data.cells[i, :n], criterion)
    return sum(hits) / max(len(hits), 1)


@torch.no_grad()
def evaluate(
    model: Captioner,
    data: SceneDataset,
    beam_size: int = 1,
    batch_size: int = 500,
    max_len: int = 30,
) -> dict:
    """Caption ``data`` (greedy when ``beam_size == 1``) and score it.

    Returns ``{"bleu4", "exact", "size", "colour", "shape", "relation", "count", "grounding",
    "grounding_mass", "hypotheses", "words", "attention"}``; the grounding entries are NaN for
    a decoder without attention maps. For a transformer the maps are the last layer's, averaged
    over heads (:func:`transformer_grounding` gives every layer and head).
    """
    check_instance("model", model, Captioner)
    if not isinstance(data, SceneDataset):
        raise TypeError(f"data must be a SceneDataset, got {describe(data)}")
    check_positive_int("beam_size", beam_size)
    check_positive_int("batch_size", batch_size)
    check_positive_int("max_len", max_len)
    model.eval()
    device = next(model.parameters()).device
    words, maps = [], []
    for start in range(0, len(data), batch_size):
        images = data.images[start : start + batch_size].to(device)
        out = (greedy_decode(model, images, data.vocab, max_len) if beam_size == 1
               else beam_search(model, images, data.vocab, beam_size, max_len))
        vocab = data.vocab
        for i, row in enumerate(out.tokens.cpu().tolist()):
            # the words up to <eos>, and the map that predicted each of them (an untrained model
            # may emit <bos>/<pad> mid-caption: drop those words and their maps together)
            end = row.index(vocab.eos) if vocab.eos in row else len(row)
            keep = [t for t in range(end) if row[t] not in (vocab.pad, vocab.bos)]
            words.append([vocab.itos[row[t]] for t in keep])
            if out.attention is not None:
                m = torch.zeros(max_len, out.attention.size(-1))
                m[: len(keep)] = out.attention[i, keep].cpu()
                maps.append(m)
    hyps = [" ".join(w) for w in words]
    result: dict = {"bleu4": bleu4(hyps, data.captions), "exact": exact_match(hyps, data.captions)}
    result.update(slot_accuracy(hyps, data.captions))
    attention = torch.stack(maps) if maps else None
    if attention is not None:
        result["grounding"] = grounding_score(words, attention, data, "peak")
        result["grounding_mass"] = grounding_score(words, attention, data, "mass")
    else:
        result["grounding"] = result["grounding_mass"] = float("nan")
    result.update(hypotheses=hyps, words=words, attention=attention)
    return result


@torch.no_grad()
def transformer_grounding(
    model: Captioner, data: SceneDataset, words: Sequence[Sequence[str]], batch_size: int = 500,
    criterion: str = "peak",
) -> torch.Tensor:
    """Grounding score of every cross-attention head: ``(layers, heads + 1)``, the last column
    for the maps averaged over the heads. ``words`` are the generated captions (from
    :func:`evaluate`); they are fed back with teacher forcing to read the maps."""
    if not isinstance(model.decoder, TransformerCaptionDecoder):
        raise TypeError(f"model.decoder must be a TransformerCaptionDecoder, got {type(model.decoder).__name__}")
    check_positive_int("batch_size", batch_size)
    if isinstance(words, str) or not isinstance(words, Sequence) or not words or len(words) > len(data):
        raise ValueError(f"words must be a non-empty list of word lists, one per scene of data, got "
                         f"{describe(words)}")
    vocab, device = data.vocab, next(model.parameters()).device
    model.eval()
    length = max(len(w) for w in words) + 1
    tokens = torch.full((len(words), length), vocab.pad, dtype=torch.long)
    tokens[:, 0] = vocab.bos
    for i, w in enumerate(words):
        if w:
            tokens[i, 1 : len(w) + 1] = torch.tensor([vocab.stoi[x] for x in w])
    chunks = []
    for start in range(0, len(words), batch_size):
        model(data.images[start : start + batch_size].to(device), tokens[start : start + batch_size].to(device))
        chunks.append(model.decoder.cross_attention().cpu())  # (b, L, H, T, N)
    maps = torch.cat(chunks)  # (B, L, H, T, N): query t predicts word t
    maps = torch.cat([maps, maps.mean(dim=2, keepdim=True)], dim=2)  # + head mean
    layers, heads = maps.shape[1:3]
    score = torch.zeros(layers, heads)
    for li in range(layers):
        for hi in range(heads):
            score[li, hi] = grounding_score(words, maps[:, li, hi], data, criterion)
    return score
