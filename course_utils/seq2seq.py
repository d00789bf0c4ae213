"""Sequence-to-sequence translation for notebook 10: GRU encoder–decoders and a transformer.

Three models share one interface, so one decoder, one beam search and one BLEU work for all:

* :class:`GRUSeq2Seq` with ``attention=False`` — Cho et al. (2014) / Sutskever et al. (2014): the
  encoder squeezes the whole source into **one fixed vector** ``c`` that the decoder reads at
  every step;
* :class:`GRUSeq2Seq` with ``attention=True`` — Bahdanau et al. (2015): the decoder looks back at
  every encoder state through :class:`course_utils.attention.AdditiveAttention`;
* :class:`TransformerSeq2Seq` — Vaswani et al. (2017), from the course's
  :mod:`course_utils.transformer` blocks.

Teacher-forced training is **batched over time**: no Python loop over target positions. The
GRU decoder is two stacked GRUs; the first reads the previous target words, its states query the
attention (all positions at once, with the keys projected once per sentence), and the second GRU
reads ``[state; context]``, so the attended context still flows through a recurrence. Decoding
runs the very same modules one step at a time (:meth:`step`); the transformer's step runs only
the newest token, with a KV cache (:class:`course_utils.kv_cache.KVCache`).

Decoding: :func:`greedy_decode`, :func:`beam_search` and :func:`translate`, thin wrappers over
:mod:`course_utils.decoding` (the course's one greedy and beam search). Training:
:func:`train_seq2seq` for one model, :func:`train_jobs` for several side by side (one process per
CPU core), each described by a :class:`TranslationJob`. Evaluation: :func:`corpus_bleu`
(sacrebleu, one or several references per sentence) and :func:`bleu_by_length`.
"""

from __future__ import annotations

import io
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from tqdm.auto import tqdm

from course_utils import decoding
from course_utils.attention import AdditiveAttention, MultiHeadAttention
from course_utils.checks import (
    check_bool,
    check_device,
    check_instance,
    check_int,
    check_int_tensor,
    check_non_negative_int,
    check_one_of,
    check_optional_sizes,
    check_padding_mask,
    check_positive_int,
    check_probability,
    check_real,
    check_sequence_of_str,
    check_str,
    check_token_ids,
    describe,
)
from course_utils.datasets.translation import bucket_order, detokenize, length_bucket, tokenize
from course_utils.datasets.vocab import Vocab
from course_utils.positional import SinusoidalPositionalEncoding
from course_utils.precision import MixedPrecision
from course_utils.training import TrainHistory, train_steps
from course_utils.transformer import (
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

__all__ = [
    "MODEL_KINDS",
    "Batch",
    "BatchIterator",
    "GRUSeq2Seq",
    "TrainedModel",
    "TranslationData",
    "TranslationJob",
    "TransformerSeq2Seq",
    "build_model",
    "beam_search",
    "bleu_by_length",
    "corpus_bleu",
    "greedy_decode",
    "train_jobs",
    "train_seq2seq",
    "translate",
]


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """``src (B, S)``, ``src_pad (B, S)`` (True = padding), ``tgt_in (B, T)`` = ``<bos> y``,
    ``tgt_out (B, T)`` = ``y <eos>`` (padded with ``<pad>``)."""

    src: torch.Tensor
    src_pad: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.src, self.src_pad, self.tgt_in, self.tgt_out)))


def _pad(seqs: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    out = torch.full((len(seqs), max((len(s) for s in seqs), default=0)), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def make_batch(src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]],
               src_vocab: Vocab, tgt_vocab: Vocab) -> Batch:
    """Pad id lists (without specials) into a :class:`Batch`; ``<eos>`` ends every source.

    >>> v = Vocab(["a", "b"])
    >>> b = make_batch([[4], [4, 5]], [[5, 4, 4], [4]], v, v)
    >>> b.src.tolist(), b.tgt_in.tolist(), b.tgt_out.tolist()
    ([[4, 2, 0], [4, 5, 2]], [[1, 5, 4, 4], [1, 4, 0, 0]], [[5, 4, 4, 2], [4, 2, 0, 0]])
    """
    _check_id_lists(src_ids, tgt_ids)
    src = _pad([list(s) + [src_vocab.eos] for s in src_ids], src_vocab.pad)
    tgt_in = _pad([[tgt_vocab.bos] + list(t) for t in tgt_ids], tgt_vocab.pad)
    tgt_out = _pad([list(t) + [tgt_vocab.eos] for t in tgt_ids], tgt_vocab.pad)
    check_token_ids("src_ids", src, len(src_vocab))
    check_token_ids("tgt_ids", tgt_out, len(tgt_vocab))
    return Batch(src, src == src_vocab.pad, tgt_in, tgt_out)


def _check_id_lists(src_ids: object, tgt_ids: object) -> None:
    for name, ids in (("src_ids", src_ids), ("tgt_ids", tgt_ids)):
        if isinstance(ids, (str, torch.Tensor)) or not isinstance(ids, Sequence) or not ids:
            raise TypeError(f"{name} must be a non-empty list of id lists (one per sentence), "
                            f"got {describe(ids)}")
        bad = next((i for i, x in enumerate(ids)
                    if isinstance(x, str) or not isinstance(x, Sequence)), None)
        if bad is not None:
            raise TypeError(f"{name}[{bad}] must be a list of token ids, got {describe(ids[bad])}")
    n_src, n_tgt = len(src_ids), len(tgt_ids)  # type: ignore[arg-type]
    if n_src != n_tgt:
        raise ValueError(f"need as many sources as targets, got {n_src} src_ids and {n_tgt} "
                         "tgt_ids")


def _check_vocabs(**vocabs: object) -> None:
    for name, v in vocabs.items():
        check_instance(name, v, Vocab)


class BatchIterator:
    """Endless random batches of similar-length pairs (little padding, so less wasted compute).

    Every ``pool`` batches' worth of pairs is drawn at random, sorted by length, cut into batches,
    and the batches are shuffled. Seeded: the same seed gives the same batches.

    >>> v = Vocab(["a"])
    >>> it = BatchIterator([[4]] * 12, [[4, 4]] * 12, v, v, batch_size=4, seed=0)
    >>> next(it).src.shape
    torch.Size([4, 2])
    """

    def __init__(self, src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]],
                 src_vocab: Vocab, tgt_vocab: Vocab, batch_size: int = 64, seed: int = 0,
                 pool: int = 50) -> None:
        _check_id_lists(src_ids, tgt_ids)
        _check_vocabs(src_vocab=src_vocab, tgt_vocab=tgt_vocab)
        check_positive_int("batch_size", batch_size)
        check_positive_int("pool", pool)
        check_non_negative_int("seed", seed)
        self.src_ids, self.tgt_ids = list(src_ids), list(tgt_ids)
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.batch_size, self.pool = batch_size, pool
        self.rng = random.Random(seed)
        self._queue: list[list[int]] = []

    def _refill(self) -> None:
        order = list(range(len(self.src_ids)))
        self.rng.shuffle(order)
        size = self.batch_size * self.pool
        for start in range(0, len(order), size):
            chunk = sorted(order[start : start + size], key=lambda i: len(self.src_ids[i]))
            batches = [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            self.rng.shuffle(batches)
            self._queue += batches

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if not self._queue:
            self._refill()
        idx = self._queue.pop(0)
        return make_batch([self.src_ids[i] for i in idx], [self.tgt_ids[i] for i in idx],
                          self.src_vocab, self.tgt_vocab)


def _check_sizes(**sizes: int) -> None:
    for name, n in sizes.items():
        check_positive_int(name, n)


def _check_pad_id(pad_id: int, src_vocab_size: int, tgt_vocab_size: int) -> None:
    """The padding id is a token of both vocabularies (its embedding row stays zero)."""
    check_int("pad_id", pad_id, low=0, high=min(src_vocab_size, tgt_vocab_size) - 1)


def _check_source(src: torch.Tensor, src_pad: torch.Tensor, embedding: nn.Embedding) -> None:
    """``src (B, S)`` token ids of ``embedding``'s vocabulary on its device, ``src_pad`` its bool
    padding mask, and no sentence made only of padding (it has nothing to encode). Reading the
    ids' values costs a device synchronisation, so on a GPU that part is left to
    :func:`translate` and the decoders."""
    check_int_tensor("src", src, dims=2, device=embedding.weight.device)
    if src.device.type == "cpu" or not torch.is_grad_enabled():
        check_token_ids("src", src, embedding.num_embeddings)
    check_padding_mask("src_pad", src_pad, *src.shape, device=src.device, source="src")
    if src.device.type == "cpu" or not torch.is_grad_enabled():
        empty = src_pad.all(dim=1)
        if bool(empty.any()):
            row = int(empty.nonzero()[0, 0])
            raise ValueError(f"src row {row} is all padding: every source needs at least one token "
                             "(a sentence ends with <eos>, so even an empty one has one)")


def _check_target(tgt_in: torch.Tensor, src: torch.Tensor, embedding: nn.Embedding) -> None:
    """``tgt_in (B, T)``: target ids of ``embedding``'s vocabulary on its device, one row per
    source sentence."""
    check_int_tensor("tgt_in", tgt_in, dims=2, device=embedding.weight.device)
    if tgt_in.device.type == "cpu" or not torch.is_grad_enabled():
        check_token_ids("tgt_in", tgt_in, embedding.num_embeddings)
    if isinstance(src, torch.Tensor) and src.dim() == 2 and tgt_in.size(0) != src.size(0):
        raise ValueError(f"tgt_in must have one row per source sentence (src has {src.size(0)} "
                         f"rows), got {describe(tgt_in)}")


# ---------------------------------------------------------------------------------------------
# GRU encoder–decoder, with or without attention
# ---------------------------------------------------------------------------------------------


class GRUSeq2Seq(nn.Module):
    r"""Bidirectional GRU encoder; two-layer GRU decoder with a fixed context or with attention.

    Encoder: ``h_j = [→h_j; ←h_j]`` (the annotations, ``(B, S, 2·enc_hidden)``) and the summary
    ``c = [→h_S; ←h_1]``. Decoder at target step ``t`` (``y_{t-1}`` the previous word):

    * ``s¹_t = GRU₁(s¹_{t-1}, [E y_{t-1}; c])`` without attention, ``GRU₁(s¹_{t-1}, E y_{t-1})`` with;
    * ``c_t = c`` (fixed vector) or ``c_t = Σ_j α_tj h_j``, ``α_t = softmax_j(w_vᵀ tanh(W_q s¹_t + W_k h_j))``;
    * ``s²_t = GRU₂(s²_{t-1}, [s¹_t; c_t])``, ``p(y_t) = softmax(W_o [s²_t; c_t; E y_{t-1}])``.

    ``forward(src, src_pad, tgt_in, return_attention=False)`` → logits ``(B, T, V)`` (and the
    weights ``(B, T, S)``): all target positions at once (teacher forcing), no loop over time.

    >>> m = GRUSeq2Seq(20, 30, emb_dim=8, enc_hidden=8, dec_hidden=16, attention=True)
    >>> src, tgt = torch.randint(4, 20, (2, 7)), torch.randint(4, 30, (2, 5))
    >>> logits, w = m(src, src == 0, tgt, return_attention=True)
    >>> logits.shape, w.shape
    (torch.Size([2, 5, 30]), torch.Size([2, 5, 7]))
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, emb_dim: int = 128,
                 enc_hidden: int = 128, dec_hidden: int = 256, attention: bool = True,
                 attn_dim: int | None = None, dropout: float = 0.1, pad_id: int = 0) -> None:
        _check_sizes(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size,
                     emb_dim=emb_dim, enc_hidden=enc_hidden, dec_hidden=dec_hidden)
        check_optional_sizes(attn_dim=attn_dim)
        check_bool("attention", attention)
        check_probability("dropout", dropout)
        _check_pad_id(pad_id, src_vocab_size, tgt_vocab_size)
        super().__init__()
        self.attention = attention
        self.pad_id = pad_id
        ctx = 2 * enc_hidden
        self.src_emb = nn.Embedding(src_vocab_size, emb_dim, padding_idx=pad_id)
        self.tgt_emb = nn.Embedding(tgt_vocab_size, emb_dim, padding_idx=pad_id)
        self.encoder = nn.GRU(emb_dim, enc_hidden, batch_first=True, bidirectional=True)
        self.init = nn.Linear(ctx, 2 * dec_hidden)  # s¹_0, s²_0 = tanh(W c)
        self.gru1 = nn.GRU(emb_dim + (0 if attention else ctx), dec_hidden, batch_first=True)
        self.attn = AdditiveAttention(dec_hidden, ctx, attn_dim or dec_hidden) if attention else None
        self.gru2 = nn.GRU(dec_hidden + ctx, dec_hidden, batch_first=True)
        self.out = nn.Linear(dec_hidden + ctx + emb_dim, tgt_vocab_size)
        self.drop = nn.Dropout(dropout)

    # -- encoder --
    def encode(self, src: torch.Tensor, src_pad: torch.Tensor) -> dict[str, torch.Tensor]:
        """``src (B, S)`` → annotations ``(B, S, 2He)``, summary ``c (B, 2He)``, projected keys."""
        _check_source(src, src_pad, self.src_emb)
        lengths = (~src_pad).sum(1).cpu()
        x = self.drop(self.src_emb(src))  # (B, S, E)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, h = self.encoder(packed)  # h (2, B, He): last forward state, last backward state
        ann, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))  # (B, S, 2He)
        c = torch.cat([h[0], h[1]], dim=-1)  # (B, 2He)
        memory = {"ann": ann, "c": c, "src_pad": src_pad}
        if self.attn is not None:
            memory["keys"] = self.attn.project_keys(ann)  # W_k h_j, once per sentence
        return memory

    def init_state(self, memory: dict[str, torch.Tensor], max_len: int | None = None,
                   use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's first states ``s¹_0, s²_0 = tanh(W c)`` (a recurrence needs no cache)."""
        s1, s2 = torch.tanh(self.init(memory["c"])).chunk(2, dim=-1)  # (B, H) each
        return s1[None].contiguous(), s2[None].contiguous()  # (1, B, H): nn.GRU's layout

    def _decode(self, y: torch.Tensor, state, memory):
        """Teacher-forced or one-step decoding of ``y (B, T)``: logits, new state, weights."""
        s1_0, s2_0 = state
        e = self.drop(self.tgt_emb(y))  # (B, T, E)
        t = y.size(1)
        if self.attn is None:
            c = memory["c"][:, None, :].expand(-1, t, -1)  # (B, T, 2He): the same c at every step
            s1, s1_n = self.gru1(torch.cat([e, c], -1), s1_0)  # (B, T, H)
            weights = None
        else:
            s1, s1_n = self.gru1(e, s1_0)  # (B, T, H)
            c, weights = self.attn(s1, memory["ann"], key_padding_mask=memory["src_pad"],
                                   projected_keys=memory["keys"])  # (B, T, 2He), (B, T, S)
        s2, s2_n = self.gru2(torch.cat([s1, c], -1), s2_0)  # (B, T, H)
        logits = self.out(self.drop(torch.cat([s2, c, e], -1)))  # (B, T, V)
        return logits, (s1_n, s2_n), weights

    def forward(self, src: torch.Tensor, src_pad: torch.Tensor, tgt_in: torch.Tensor,
                return_attention: bool = False):
        check_bool("return_attention", return_attention)
        _check_target(tgt_in, src, self.tgt_emb)
        memory = self.encode(src, src_pad)
        logits, _, weights = self._decode(tgt_in, self.init_state(memory), memory)
        return (logits, weights) if return_attention else logits

    # -- one step at a time, for greedy and beam search --
    def step(self, y_prev: torch.Tensor, state, memory):
        """``y_prev (B,)`` → log-probabilities ``(B, V)``, new state, weights ``(B, S)`` or None."""
        logits, state, weights = self._decode(y_prev[:, None], state, memory)
        return logits[:, 0].log_softmax(-1), state, None if weights is None else weights[:, 0]

    @staticmethod
    def reorder_state(state, index: torch.Tensor):
        return tuple(s.index_select(1, index) for s in state)


# ---------------------------------------------------------------------------------------------
# Transformer encoder–decoder
# ---------------------------------------------------------------------------------------------


class TransformerSeq2Seq(nn.Module):
    """Encoder–decoder transformer from :mod:`course_utils.transformer` (pre-LN, sinusoidal positions).

    Embeddings are initialised N(0, 1/d_model) and scaled by √d_model (Vaswani et al. 2017,
    section 3.4), so words and sinusoidal positions enter at the same scale; the decoder's
    self-attention is causal; padding in the source is masked in the encoder and in the
    cross-attention. ``forward(src, src_pad, tgt_in)`` → logits ``(B, T, V)``.

    >>> m = TransformerSeq2Seq(20, 30, d_model=16, nhead=2, num_layers=1, dim_feedforward=32)
    >>> src, tgt = torch.randint(4, 20, (2, 7)), torch.randint(4, 30, (2, 5))
    >>> m(src, src == 0, tgt).shape
    torch.Size([2, 5, 30])
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, d_model: int = 128,
                 nhead: int = 4, num_layers: int = 3, dim_feedforward: int = 256,
                 dropout: float = 0.1, max_len: int = 256, pad_id: int = 0) -> None:
        _check_sizes(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size,
                     d_model=d_model, nhead=nhead, num_layers=num_layers,
                     dim_feedforward=dim_feedforward, max_len=max_len)
        check_probability("dropout", dropout)
        _check_pad_id(pad_id, src_vocab_size, tgt_vocab_size)
        super().__init__()
        self.d_model, self.pad_id = d_model, pad_id
        self.src_emb = nn.Embedding(src_vocab_size, d_model, padding_idx=pad_id)
        self.tgt_emb = nn.Embedding(tgt_vocab_size, d_model, padding_idx=pad_id)
        self.pos = SinusoidalPositionalEncoding(d_model, max_len, dropout)
        enc_layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, norm_first=True)
        dec_layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, norm_first=True)
        self.encoder = TransformerEncoder(enc_layer, num_layers, norm=nn.LayerNorm(d_model))
        self.decoder = TransformerDecoder(dec_layer, num_layers, norm=nn.LayerNorm(d_model))
        self.generator = nn.Linear(d_model, tgt_vocab_size)
        # Token embeddings start at N(0, 1/d_model), so that after the √d_model scaling each
        # coordinate has unit variance, the scale of the sinusoidal table (values in [-1, 1]), as
        # in Vaswani et al. (whose embeddings are shared with the output layer) and fairseq.
        # nn.Embedding's default N(0, 1) times √d_model would make the words √d_model times
        # louder than the positions (≈ 11× at d = 128): the model then sees almost a bag of words
        # and learns word order very slowly (15.6 instead of 98 test BLEU in notebook 10).
        for emb in (self.src_emb, self.tgt_emb):
            nn.init.normal_(emb.weight, mean=0.0, std=d_model**-0.5)
            with torch.no_grad():
                emb.weight[pad_id].zero_()  # the padding row stays zero, as padding_idx promises
        for m in self.modules():  # fused attention kernels: same result, faster
            if isinstance(m, MultiHeadAttention):
                m.use_sdpa = True

    def encode(self, src: torch.Tensor, src_pad: torch.Tensor) -> dict[str, torch.Tensor]:
        """``src (B, S)`` → the encoder's output ``memory (B, S, D)`` and the padding mask."""
        _check_source(src, src_pad, self.src_emb)
        x = self.pos(self.src_emb(src) * math.sqrt(self.d_model))  # (B, S, D)
        return {"memory": self.encoder(x, src_key_padding_mask=src_pad), "src_pad": src_pad}

    def _decode(self, tgt_in: torch.Tensor, memory: dict[str, torch.Tensor]) -> torch.Tensor:
        y = self.pos(self.tgt_emb(tgt_in) * math.sqrt(self.d_model))  # (B, T, D)
        h = self.decoder(y, memory["memory"], tgt_is_causal=True,
                         memory_key_padding_mask=memory["src_pad"])
        return self.generator(h)  # (B, T, V)

    def forward(self, src: torch.Tensor, src_pad: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        _check_target(tgt_in, src, self.tgt_emb)
        return self._decode(tgt_in, self.encode(src, src_pad))

    def init_state(self, memory: dict[str, torch.Tensor], max_len: int | None = None,
                   use_cache: bool = True):
        """Decoding state. With ``use_cache``: the cross-attention keys and values of the memory,
        projected once, and a KV cache (:class:`~course_utils.kv_cache.KVCache`, created at the
        first step for as many rows as the decoder then runs) for the self-attention of up to
        ``max_len`` new tokens (default: as many as the positions go). Without: the prefix so far,
        ``(B, 0)``, re-read at every step."""
        check_bool("use_cache", use_cache)
        if not use_cache:
            return memory["memory"].new_zeros(memory["memory"].size(0), 0, dtype=torch.long)
        if max_len is not None:
            check_positive_int("max_len", max_len)
        positions = self.pos.max_len if max_len is None else min(max_len + 1, self.pos.max_len)
        return {"memory_kv": self.decoder.project_memory(memory["memory"]), "cache": None,
                "max_len": positions}

    def step(self, y_prev: torch.Tensor, state, memory):
        """``y_prev (B,)`` → log-probabilities ``(B, V)``, new state, ``None`` (no single alignment).

        With a cache only the new token goes through the decoder: its keys and values join the
        cache, and it attends to those of every earlier token (:meth:`TransformerDecoder.step`).
        Without, the whole prefix is decoded again and only the newest position is kept."""
        if not isinstance(state, dict):  # no cache: re-read the prefix
            prefix = torch.cat([state, y_prev[:, None]], dim=1)  # (B, t)
            return self._decode(prefix, memory)[:, -1].log_softmax(-1), prefix, None
        if state["cache"] is None:
            state["cache"] = self.decoder.new_cache(y_prev.size(0), state["max_len"])
        t = state["cache"].length(0)  # the new token's position
        x = self.pos(self.tgt_emb(y_prev[:, None]) * math.sqrt(self.d_model), offset=t)  # (B, 1, D)
        h = self.decoder.step(x, state["cache"], state["memory_kv"], memory["src_pad"])  # (B, 1, D)
        return self.generator(h[:, -1]).log_softmax(-1), state, None

    @staticmethod
    def reorder_state(state, index: torch.Tensor):
        if not isinstance(state, dict):
            return state.index_select(0, index)
        return {**state, "memory_kv": decoding.reorder_state(state["memory_kv"], index),
                "cache": decoding.reorder_state(state["cache"], index)}  # a KVCache reorders itself

    def cross_attention(self, src: torch.Tensor, src_pad: torch.Tensor, tgt_in: torch.Tensor,
                        layer: int = -1) -> torch.Tensor:
        """Head-averaged cross-attention weights ``(B, T, S)`` of one decoder layer (teacher forced)."""
        check_int("layer", layer, low=-len(self.decoder.layers), high=len(self.decoder.layers) - 1)
        mha = self.decoder.layers[layer].multihead_attn
        mha.store_weights = True
        try:
            self.forward(src, src_pad, tgt_in)
            return mha.last_attn_weights.mean(dim=1)
        finally:
            mha.store_weights = False


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


class _Stepper:
    """The course's models as :mod:`course_utils.decoding` drives them.

    A model decodes through ``encode``, ``init_state`` and ``step(y_prev, state, memory) ->
    (log-probabilities, state, attention weights or None)``; :mod:`course_utils.decoding` calls
    ``step(tokens, state) -> (logits, state)``. This adapter carries ``(memory, model state)`` as
    the decoding state, feeds the model the last token of ``tokens``, keeps greedy decoding's
    attention weights, and reorders the state for beam search.
    """

    def __init__(self, model: nn.Module, keep_weights: bool = False) -> None:
        self.model, self.keep_weights, self.weights = model, keep_weights, []

    def start(self, src: torch.Tensor, src_pad: torch.Tensor, max_len: int, use_cache: bool):
        memory = self.model.encode(src, src_pad)
        return memory, self.model.init_state(memory, max_len=max_len, use_cache=use_cache)

    def __call__(self, tokens: torch.Tensor, state):
        memory, model_state = state
        logp, model_state, weights = self.model.step(tokens[:, -1], model_state, memory)  # (B, V)
        if self.keep_weights and weights is not None:
            self.weights.append(weights)  # (B, S)
        return logp, (memory, model_state)

    def reorder(self, state, index: torch.Tensor):
        memory, model_state = state
        if index.numel() != next(iter(memory.values())).size(0):  # beam search's first expansion
            memory = decoding.reorder_state(memory, index)
        # Afterwards every survivor extends a hypothesis of its own sentence, whose rows all hold
        # that sentence's memory: the memory needs no reordering, only the model's state does.
        return memory, self.model.reorder_state(model_state, index)


def _check_special_ids(**ids: int) -> None:
    for name, i in ids.items():
        check_non_negative_int(name, i)


def _check_model(model: object) -> None:
    """A model the decoders can drive: a module with ``encode``, ``init_state``, ``step`` and
    ``reorder_state`` (:class:`GRUSeq2Seq`, :class:`TransformerSeq2Seq`)."""
    methods = ("encode", "init_state", "step", "reorder_state")
    if not isinstance(model, nn.Module) or not all(callable(getattr(model, m, None))
                                                   for m in methods):
        raise TypeError("model must be a translation model (GRUSeq2Seq, TransformerSeq2Seq, or a "
                        f"module with {', '.join(methods)}), got {describe(model)}")


@torch.no_grad()
def greedy_decode(model: nn.Module, src: torch.Tensor, src_pad: torch.Tensor, max_len: int,
                  bos: int = 1, eos: int = 2, pad: int = 0, use_cache: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pick the most likely word at every step: tokens ``(B, ≤max_len)`` (after ``<eos>``: pad)
    and, for attention GRUs, the weights ``(B, T, S)``.

    :func:`course_utils.decoding.greedy` over the model's steps; ``<pad>`` and ``<bos>`` are
    never emitted. ``use_cache`` (the transformer): decode with a KV cache, or re-read the
    prefix at every step (the same tokens, more work).
    """
    _check_model(model)
    check_positive_int("max_len", max_len)
    check_bool("use_cache", use_cache)
    _check_special_ids(bos=bos, eos=eos, pad=pad)
    stepper = _Stepper(model, keep_weights=True)
    state = stepper.start(src, src_pad, max_len, use_cache)
    start = torch.full((src.size(0), 1), bos, dtype=torch.long, device=src.device)  # (B, 1)
    out = decoding.greedy(stepper, start, state, max_new_tokens=max_len, eos=eos, pad=pad,
                          suppress=(pad, bos))
    weights = torch.stack(stepper.weights, 1) if stepper.weights else None  # (B, T, S)
    return out.tokens[:, 1:], weights


@torch.no_grad()
def beam_search(model: nn.Module, src: torch.Tensor, src_pad: torch.Tensor, beam_width: int,
                max_len: int, length_penalty: float = 0.6, bos: int = 1, eos: int = 2,
                pad: int = 0, use_cache: bool = True) -> torch.Tensor:
    """Keep the ``beam_width`` best prefixes per sentence; return the best hypothesis ``(B, T)``.

    :func:`course_utils.decoding.beam_search` over the model's steps: batched over sentences
    and beams, a finished beam keeps its score and grows only with padding, and the final choice
    divides the log-probability by the GNMT length penalty ``((5 + |y|) / 6) ** length_penalty``
    (Wu et al. 2016). ``beam_width=1`` is greedy decoding.
    """
    _check_model(model)
    check_positive_int("beam_width", beam_width)
    check_positive_int("max_len", max_len)
    check_real("length_penalty", length_penalty, 0.0)
    check_bool("use_cache", use_cache)
    _check_special_ids(bos=bos, eos=eos, pad=pad)
    stepper = _Stepper(model)
    state = stepper.start(src, src_pad, max_len, use_cache)
    start = torch.full((src.size(0), 1), bos, dtype=torch.long, device=src.device)  # (B, 1)
    out = decoding.beam_search(stepper, start, state, max_new_tokens=max_len, beam_width=beam_width,
                               length_penalty=length_penalty, eos=eos, pad=pad, suppress=(pad, bos),
                               reorder=stepper.reorder)
    return out.tokens[:, 1:]


def translate(model: nn.Module, sentences: Sequence[str], src_vocab: Vocab, tgt_vocab: Vocab,
              beam_width: int = 1, batch_size: int = 250, device: torch.device | str = "cpu",
              max_len_factor: float = 1.5, use_cache: bool = True) -> list[str]:
    """English strings → French strings (detokenised), greedy when ``beam_width == 1``.

    ``sentences`` is a list of strings (one per sentence); each is tokenised like the training
    data (:func:`~course_utils.datasets.translation.tokenize`), translated in batches of
    ``batch_size`` sentences of similar length, and at most ``max_len_factor`` × its length + 5
    words long.
    """
    _check_model(model)
    check_sequence_of_str("sentences", sentences, allow_empty=True)
    _check_vocabs(src_vocab=src_vocab, tgt_vocab=tgt_vocab)
    check_positive_int("beam_width", beam_width)
    check_positive_int("batch_size", batch_size)
    check_real("max_len_factor", max_len_factor, 0.0, low_open=True)
    device = check_device("device", device)
    model.eval()
    out: list[str | None] = [None] * len(sentences)
    order = sorted(range(len(sentences)), key=lambda i: len(tokenize(sentences[i])))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        toks = [src_vocab.encode(tokenize(sentences[i])) + [src_vocab.eos] for i in idx]
        src = _pad(toks, src_vocab.pad).to(device)
        max_len = int(max_len_factor * src.size(1)) + 5
        if beam_width == 1:
            ids, _ = greedy_decode(model, src, src == src_vocab.pad, max_len, tgt_vocab.bos,
                                   tgt_vocab.eos, tgt_vocab.pad, use_cache=use_cache)
        else:
            ids = beam_search(model, src, src == src_vocab.pad, beam_width, max_len,
                              bos=tgt_vocab.bos, eos=tgt_vocab.eos, pad=tgt_vocab.pad,
                              use_cache=use_cache)
        for row, i in zip(ids.tolist(), idx, strict=True):
            out[i] = detokenize(tgt_vocab.decode(row))
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------


def _check_training_inputs(model: object, batches: object, num_steps: object, pad_id: object,
                           progress: object) -> None:
    check_instance("model", model, nn.Module)
    if not isinstance(batches, Iterator):
        raise TypeError("batches must be an iterator of Batch (a BatchIterator, or iter(list)), "
                        f"got {describe(batches)}")
    check_positive_int("num_steps", num_steps)
    check_non_negative_int("pad_id", pad_id)
    if progress is not None:
        check_bool("progress", progress)


def train_seq2seq(model: nn.Module, batches: Iterator[Batch], num_steps: int, lr: float = 1e-3,
                  warmup: int = 100, clip: float = 1.0, label_smoothing: float = 0.0,
                  device: torch.device | str = "cpu", desc: str = "training",
                  pad_id: int = 0, progress: bool | None = None) -> TrainHistory:
    """Adam with linear warm-up then cosine decay, gradient clipping, teacher forcing.

    On a GPU the forward pass runs under autocast (bf16, or fp16 with a gradient scaler on
    cards without bf16: :class:`course_utils.precision.MixedPrecision`), and the loss is read
    back every few dozen steps, not every step; on the CPU everything stays in float32.

    Returns the :func:`course_utils.training.train_steps` history (``loss`` per step, the
    per-token cross-entropy without label smoothing, so the models compare).
    """
    _check_training_inputs(model, batches, num_steps, pad_id, progress)
    check_real("lr", lr, 0.0, low_open=True)
    check_non_negative_int("warmup", warmup)
    check_real("clip", clip, 0.0, low_open=True)
    check_real("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
    device = check_device("device", device)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    mp = MixedPrecision(device, enabled=device.type == "cuda")

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, num_steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    def step_fn(step: int):
        batch = next(batches).to(device)
        with mp.autocast():
            logits = model(batch.src, batch.src_pad, batch.tgt_in)  # (B, T, V)
        flat, target = logits.float().reshape(-1, logits.size(-1)), batch.tgt_out.reshape(-1)
        loss = F.cross_entropy(flat, target, ignore_index=pad_id, label_smoothing=label_smoothing)
        mp.step(loss, opt, clip_grad_norm=clip, parameters=model.parameters())
        sched.step()
        with torch.no_grad():
            nll = loss if label_smoothing == 0 else F.cross_entropy(flat, target, ignore_index=pad_id)
        return {"loss": nll.detach()}

    history = train_steps(step_fn, num_steps, desc=desc,
                          disable_progress=None if progress is None else not progress)
    model.eval()
    return history


# ---------------------------------------------------------------------------------------------
# Several models, trained side by side (one process per CPU core)
# ---------------------------------------------------------------------------------------------

MODEL_KINDS = ("gru", "attn", "transformer")


@dataclass
class TranslationJob:
    """One model to train: its kind, size, seed and optimisation settings.

    ``kind`` is ``"gru"`` (fixed context), ``"attn"`` (Bahdanau attention) or ``"transformer"``;
    ``sizes`` holds ``emb, enc, dec`` for the GRUs and ``d_model, layers, ff, heads`` for the
    transformer. ``seed`` draws the initial weights *and* the order of the batches, so two jobs
    with the same seed see the same batches.

    >>> job = TranslationJob("t", "transformer", steps=10, lr=1e-3, warmup=2,
    ...                      sizes=dict(d_model=16, layers=1, ff=32, heads=2))
    >>> type(build_model(job, 20, 30)).__name__
    'TransformerSeq2Seq'
    """

    name: str
    kind: str
    steps: int
    lr: float
    warmup: int
    label_smoothing: float = 0.0
    seed: int = 0
    batch_size: int = 64
    sizes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_str("name", self.name, allow_empty=False)
        check_one_of("kind", self.kind, MODEL_KINDS)
        check_positive_int("steps", self.steps)
        check_real("lr", self.lr, 0.0, low_open=True)
        check_non_negative_int("warmup", self.warmup)
        check_real("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        check_non_negative_int("seed", self.seed)
        check_positive_int("batch_size", self.batch_size)
        _check_job_sizes(self.sizes)


SIZE_KEYS = ("emb", "enc", "dec", "d_model", "layers", "ff", "heads", "max_len")


def _check_job_sizes(sizes: object) -> None:
    """``sizes``: a dict of positive ints under the names :func:`build_model` reads (a typo
    such as ``layer=4`` would otherwise build the default size without a word)."""
    if not isinstance(sizes, dict):
        raise TypeError(f"sizes must be a dict such as dict(d_model=128, layers=2), got "
                        f"{describe(sizes)}")
    for key, n in sizes.items():
        check_one_of("a key of sizes", key, SIZE_KEYS)
        check_positive_int(f"sizes[{key!r}]", n)


def build_model(job: TranslationJob, src_vocab_size: int, tgt_vocab_size: int) -> nn.Module:
    """A fresh model for ``job``, its weights drawn with ``job.seed`` (no dropout)."""
    check_instance("job", job, TranslationJob)
    torch.manual_seed(job.seed)
    z = job.sizes
    if job.kind == "transformer":
        return TransformerSeq2Seq(src_vocab_size, tgt_vocab_size, d_model=z.get("d_model", 128),
                                  nhead=z.get("heads", 4), num_layers=z.get("layers", 2),
                                  dim_feedforward=z.get("ff", 256), dropout=0.0,
                                  max_len=z.get("max_len", 128))
    return GRUSeq2Seq(src_vocab_size, tgt_vocab_size, emb_dim=z.get("emb", 64),
                      enc_hidden=z.get("enc", 96), dec_hidden=z.get("dec", 160),
                      attention=job.kind == "attn", attn_dim=z.get("enc", 96), dropout=0.0)


@dataclass
class TranslationData:
    """What training reads: token ids of the training pairs and the two vocabularies."""

    src_ids: list[list[int]]
    tgt_ids: list[list[int]]
    src_vocab: Vocab
    tgt_vocab: Vocab

    def __post_init__(self) -> None:
        _check_id_lists(self.src_ids, self.tgt_ids)
        _check_vocabs(src_vocab=self.src_vocab, tgt_vocab=self.tgt_vocab)


@dataclass
class TrainedModel:
    """What :func:`train_jobs` returns per job: the model, its history, its training seconds."""

    model: nn.Module
    history: TrainHistory
    seconds: float


_WORKER_DATA: TranslationData | None = None


def _worker_init(data: TranslationData) -> None:
    global _WORKER_DATA
    torch.set_num_threads(1)  # one process per core, one thread per process
    _WORKER_DATA = data


def _run_job(job: TranslationJob, data: TranslationData | None = None, device: str = "cpu",
             progress: bool | None = None):
    in_worker = data is None
    data = data if data is not None else _WORKER_DATA
    model = build_model(job, len(data.src_vocab), len(data.tgt_vocab))
    batches = BatchIterator(data.src_ids, data.tgt_ids, data.src_vocab, data.tgt_vocab,
                            batch_size=job.batch_size, seed=job.seed)
    t0 = time.perf_counter()
    history = train_seq2seq(model, batches, job.steps, lr=job.lr, warmup=job.warmup,
                            label_smoothing=job.label_smoothing, device=device, desc=job.name,
                            pad_id=data.tgt_vocab.pad, progress=False if in_worker else progress)
    seconds = time.perf_counter() - t0
    if in_worker:  # send the weights back as bytes
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        return job.name, buf.getvalue(), dict(history), history.interrupted, seconds
    return TrainedModel(model, history, seconds)


def _check_jobs(jobs: object) -> None:
    """A non-empty list of :class:`TranslationJob` with distinct names."""
    if isinstance(jobs, (str, TranslationJob)) or not isinstance(jobs, Sequence) or not jobs:
        raise TypeError(f"jobs must be a non-empty list of TranslationJob, got {describe(jobs)}")
    for i, job in enumerate(jobs):
        check_instance(f"jobs[{i}]", job, TranslationJob)
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique, got {names}")


def train_jobs(jobs: Sequence[TranslationJob], data: TranslationData, workers: int = 1,
               device: torch.device | str = "cpu") -> dict[str, TrainedModel]:
    """Train every job; on the CPU with ``workers > 1``, that many at a time, one process per core.

    Each job is seeded by itself (weights and batches) and trains with one thread, so the
    trained models are the same, bit for bit, however many workers run them; only the
    wall-clock time changes. With several workers the longest jobs go first, and a progress
    bar counts finished jobs. On a GPU, or with ``workers=1``, they run one after the other in
    this process.
    """
    _check_jobs(jobs)
    check_instance("data", data, TranslationData)
    check_positive_int("workers", workers)
    device = check_device("device", device)
    if workers == 1 or len(jobs) == 1 or device.type != "cpu":
        return {j.name: _run_job(j, data, str(device)) for j in jobs}
    cost = {"gru": 1.0, "attn": 1.25, "transformer": 1.1}  # measured seconds per step, relative
    order = sorted(jobs, key=lambda j: -j.steps * cost[j.kind])
    ctx = torch.multiprocessing.get_context("spawn")  # not fork: a forked OpenMP runtime can hang
    outputs = {}
    with ctx.Pool(min(workers, len(jobs)), initializer=_worker_init, initargs=(data,)) as pool:
        for out in tqdm(pool.imap_unordered(_run_job, order), total=len(order),
                        desc=f"training {len(order)} models, {workers} at a time", leave=False):
            outputs[out[0]] = out
        pool.close()  # let the workers exit on their own (no leaked semaphores), then wait
        pool.join()
    results = {}
    for job in jobs:
        _, weights, hist, interrupted, seconds = outputs[job.name]
        model = build_model(job, len(data.src_vocab), len(data.tgt_vocab))
        model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
        history = TrainHistory(hist)
        history.interrupted = interrupted
        results[job.name] = TrainedModel(model.eval(), history, seconds)
    return results


def _reference_lists(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]]
                     ) -> list[list[str]]:
    """Check ``hypotheses`` and ``references``; one list of references per hypothesis."""
    check_sequence_of_str("hypotheses", hypotheses)
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError(f"references must be a list with one reference (a str) or a list of "
                        f"references per hypothesis, got {describe(references)}")
    if len(hypotheses) != len(references):
        raise ValueError(f"got {len(hypotheses)} hypotheses for {len(references)} references")
    out = []
    for i, refs in enumerate(references):
        refs = [refs] if isinstance(refs, str) else refs
        check_sequence_of_str(f"references[{i}]", refs)
        out.append(list(refs))
    return out


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]],
                lowercase: bool = False) -> float:
    """Corpus BLEU (0–100) with sacrebleu's defaults (13a tokenisation), as papers report it.

    ``references[i]`` is the reference of ``hypotheses[i]``, or a list of its references
    (any number each: a hypothesis is scored against the closest). Case counts unless
    ``lowercase=True`` (then say "lowercase BLEU" when you report it).

    >>> round(corpus_bleu(["le chat noir dort ."], ["le chat noir dort ."]), 1)
    100.0
    >>> hyps = ["Je suis fatiguée ce soir.", "Il est dans la cuisine."]
    >>> refs = [["Je suis fatigué ce soir.", "Je suis fatiguée ce soir."], ["Il est dans la cuisine."]]
    >>> round(corpus_bleu(hyps, refs), 1), round(corpus_bleu(hyps, [r[0] for r in refs]), 1)
    (100.0, 69.2)
    """
    import sacrebleu

    refs = _reference_lists(hypotheses, references)
    check_bool("lowercase", lowercase)
    n_streams = max(len(r) for r in refs)
    # sacrebleu takes reference *streams* (the k-th reference of every sentence); None where a
    # sentence has fewer references than the most
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(n_streams)]
    return float(sacrebleu.corpus_bleu(list(hypotheses), streams, lowercase=lowercase).score)


def bleu_by_length(sources: Sequence[str], hypotheses: Sequence[str],
                   references: Sequence[str | Sequence[str]],
                   edges: Sequence[int] = (10, 20, 30)) -> dict[str, tuple[float, int]]:
    """Corpus BLEU per source-length bucket: ``{"1-10": (bleu, n_sentences), ...}`` (Bahdanau Fig. 2).

    >>> bleu_by_length(["a b", "a b c d"], ["x y", "z"], ["x y", "z w"], edges=(2,))
    {'1-2': (0.0, 1), '3+': (0.0, 1)}
    """
    check_sequence_of_str("sources", sources)
    refs = _reference_lists(hypotheses, references)
    if len(sources) != len(hypotheses):
        raise ValueError(f"got {len(sources)} sources for {len(hypotheses)} hypotheses")
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        if not tokenize(s):
            raise ValueError(f"sources[{i}] must hold at least one word, got {s!r}")
        groups.setdefault(length_bucket(len(tokenize(s)), edges), []).append(i)
    result = {}
    for label in sorted(groups, key=bucket_order):
        idx = groups[label]
        result[label] = (corpus_bleu([hypotheses[i] for i in idx], [refs[i] for i in idx]), len(idx))
    return result
