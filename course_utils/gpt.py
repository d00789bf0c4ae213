"""A GPT built from the course's own blocks: a causal language model, trained on Python's help text.

Notebook 07 builds it; this file is the tested version. Read it top to bottom:

1. :class:`LayerNorm` and :class:`RMSNorm` — the two normalisations, written out as formulas.
2. :class:`GPTBlock` — notebook 06's :class:`~course_utils.transformer.TransformerEncoderLayer`
   with a causal mask: a decoder-only block *is* an encoder block whose queries may not look
   ahead. Pre-LN (GPT-2) or post-LN (the 2017 paper), the written-out norms, GPT-2's GELU.
3. :class:`GPT` — token embeddings, positions (learned, sinusoidal, rotary, ALiBi or none), the
   blocks, a final norm and an output layer that shares the embedding matrix ("weight tying").
   :func:`next_token_loss` is the cross-entropy of each position against the next token.
4. :func:`gpt_from_hf` / :func:`gpt_to_hf` — copy weights from / into transformers'
   ``GPT2LMHeadModel``; the tests prove the logits equal.
5. :class:`LMTrainer` — AdamW, warm-up then cosine decay, gradient clipping (nanoGPT's recipe),
   one step at a time, timed; :func:`evaluate_loss` and :func:`loss_by_position` on held-out text.
6. Induction heads (Olsson et al., 2022): :func:`repeated_random_tokens`,
   :class:`AttentionOnlyTransformer`, :func:`induction_scores`.

Shapes in comments: ``B`` batch, ``T`` tokens, ``E`` embedding, ``H`` heads, ``D`` head dim,
``V`` vocabulary.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from course_utils.attention import MultiHeadAttention
from course_utils.checks import (
    check_bool,
    check_float_tensor,
    check_instance,
    check_int_tensor,
    check_like_module,
    check_non_negative_int,
    check_on_device,
    check_one_of,
    check_positive_int,
    check_probability,
    check_real,
    check_shape,
    check_str,
    check_tensor,
    check_token_ids,
    describe,
)
from course_utils.datasets.pydoc_text import sequential_windows
from course_utils.positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from course_utils.transformer import TransformerEncoderLayer

__all__ = [
    "GPT",
    "AttentionOnlyTransformer",
    "GPTBlock",
    "GPTConfig",
    "LMTrainer",
    "LlamaBlock",
    "LlamaGPT",
    "LlamaStyleConfig",
    "LayerNorm",
    "RMSNorm",
    "cosine_lr",
    "evaluate_loss",
    "gelu_tanh",
    "generate",
    "gpt_from_hf",
    "gpt_to_hf",
    "induction_scores",
    "llama_from_hf",
    "loss_by_position",
    "next_token_loss",
    "repeated_random_tokens",
    "SwiGLU",
]

POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
NORMS = ("layernorm", "rmsnorm")


# ---------------------------------------------------------------------------------------------
# 1. Normalisation, written out
# ---------------------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    r"""LayerNorm (Ba et al., 2016) over the last dim, written out.

    .. math:: \mu = \frac1E\sum_i x_i,\quad \sigma^2 = \frac1E\sum_i (x_i-\mu)^2,\quad
              y_i = \gamma_i\,\frac{x_i-\mu}{\sqrt{\sigma^2+\epsilon}} + \beta_i

    The variance is the biased one (divide by ``E``, not ``E - 1``), as in ``nn.LayerNorm``.
    ``bias=False`` drops :math:`\beta`.

    >>> x = torch.randn(2, 3, 8)
    >>> torch.allclose(LayerNorm(8)(x), nn.LayerNorm(8)(x), atol=1e-6)
    True
    """

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        check_real("eps", eps, 0.0, low_open=True)
        check_bool("bias", bias)
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))  # γ
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None  # β

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, bias={self.bias is not None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim("x", x, self.weight)
        mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
        var = (x - mean).pow(2).mean(dim=-1, keepdim=True)  # (..., 1), biased
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight
        return y if self.bias is None else y + self.bias


class RMSNorm(nn.Module):
    r"""RMSNorm (Zhang & Sennrich, 2019): LayerNorm without the mean and without :math:`\beta`.

    .. math:: y_i = \gamma_i\,\frac{x_i}{\sqrt{\frac1E\sum_j x_j^2+\epsilon}}

    One statistic instead of two, and the same results in practice (Llama, Mistral, Gemma).
    Computed in float32 for half-precision inputs, as transformers' ``LlamaRMSNorm``.

    >>> x = torch.randn(2, 3, 8)
    >>> torch.allclose(RMSNorm(8)(x), nn.RMSNorm(8, eps=1e-6)(x), atol=1e-6)
    True
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        check_real("eps", eps, 0.0, low_open=True)
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))  # γ

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim("x", x, self.weight)
        x32 = x.float()
        rms_inv = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., 1)
        return self.weight * (x32 * rms_inv).to(x.dtype)


def _check_last_dim(name: str, x: object, weight: torch.Tensor) -> None:
    """A float tensor ``(..., E)`` on the device of a layer whose ``weight`` is ``(E,)``."""
    check_float_tensor(name, x, min_dims=1)
    check_on_device(name, x, weight.device)
    if x.size(-1) != weight.size(-1):
        raise ValueError(f"{name} must have last dim {weight.size(-1)}, got {describe(x)}")


def make_norm(kind: str, dim: int, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    """``LayerNorm(dim, eps, bias)`` for ``"layernorm"``, ``RMSNorm(dim, eps)`` for ``"rmsnorm"``."""
    check_one_of("norm", kind, NORMS)
    return LayerNorm(dim, eps, bias) if kind == "layernorm" else RMSNorm(dim, eps)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU: the tanh approximation ``0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))``."""
    check_float_tensor("x", x)
    return F.gelu(x, approximate="tanh")


# ---------------------------------------------------------------------------------------------
# 2. The block: notebook 06's encoder layer with a causal mask
# ---------------------------------------------------------------------------------------------


class GPTBlock(TransformerEncoderLayer):
    """A decoder-only block: :class:`~course_utils.transformer.TransformerEncoderLayer`, causal.

    Pre-LN (``norm_first=True``, GPT-2)::

        x = x + dropout(self_attn(norm1(x), causal))      # attention dropout inside self_attn
        x = x + dropout(linear2(gelu(linear1(norm2(x)))))

    post-LN (``norm_first=False``, the 2017 paper): ``x = norm(x + sublayer(x))``. The norms are
    the written-out :class:`LayerNorm` (or :class:`RMSNorm`); the attention is the course's
    :class:`~course_utils.attention.MultiHeadAttention` with ``use_sdpa=True`` (PyTorch's fused
    kernel computes the same numbers faster). Call it as ``block(x, src_mask=bias,
    is_causal=True)``; ``src_mask`` is an optional float bias (ALiBi) added to the scores.

    >>> block = GPTBlock(16, 4, 64).eval()
    >>> x = torch.randn(2, 5, 16)
    >>> y = block(x, is_causal=True)
    >>> x2 = x.clone(); x2[:, -1] += 1                      # change the last token only
    >>> torch.allclose(block(x2, is_causal=True)[:, :-1], y[:, :-1])   # earlier outputs unchanged
    True
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        dropout: float = 0.0,
        norm_first: bool = True,
        norm: str = "layernorm",
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
    ) -> None:
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation=gelu_tanh,
                         layer_norm_eps=layer_norm_eps, norm_first=norm_first, bias=bias)
        self.norm1 = make_norm(norm, d_model, layer_norm_eps, bias)
        self.norm2 = make_norm(norm, d_model, layer_norm_eps, bias)
        self.self_attn.use_sdpa = True

    def step(self, x: torch.Tensor, cache, layer: int, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The block on new tokens only, ``x (B, T_new, E)``, reading and filling ``cache`` at ``layer``.

        The same sub-layers in the same order as ``forward``; the attention projects the new
        keys and values once and attends to every key in the cache. Equal to the last ``T_new``
        rows of ``forward`` on the whole sequence (inference only: no dropout).
        """
        if self.training:
            raise RuntimeError("cached decoding is for inference: call model.eval() first")

        def attend(h: torch.Tensor) -> torch.Tensor:
            return self.self_attn(h, attn_mask=attn_mask, is_causal=True, cache=cache, layer=layer)[0]

        def feed_forward(h: torch.Tensor) -> torch.Tensor:
            return self.linear2(self.activation(self.linear1(h)))

        if self.norm_first:  # pre-LN
            x = x + attend(self.norm1(x))
            return x + feed_forward(self.norm2(x))
        x = self.norm1(x + attend(x))  # post-LN
        return self.norm2(x + feed_forward(x))


# ---------------------------------------------------------------------------------------------
# 3. The model
# ---------------------------------------------------------------------------------------------


@dataclass
class GPTConfig:
    """The sizes and choices of a :class:`GPT` (the defaults: nanoGPT's CPU configuration).

    * ``block_size`` — the context the model is trained on (and the rows of a learned position
      table: a learned model cannot read past it);
    * ``positions`` — ``"learned"`` (GPT-2), ``"sinusoidal"``, ``"rope"``, ``"alibi"`` or ``"none"``;
    * ``norm_first`` — pre-LN (``True``, GPT-2) or post-LN (``False``, the 2017 paper);
    * ``norm`` — ``"layernorm"`` or ``"rmsnorm"``;
    * ``max_positions`` — the longest sequence a model with sinusoidal, rotary, ALiBi or no
      positions may read (their positions are computed, not learned).
    """

    vocab_size: int
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    positions: str = "learned"
    norm_first: bool = True
    norm: str = "layernorm"
    layer_norm_eps: float = 1e-5
    max_positions: int = 4096

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "max_positions"):
            check_positive_int(name, getattr(self, name))
        check_probability("dropout", self.dropout)
        check_bool("bias", self.bias)
        check_bool("norm_first", self.norm_first)
        check_one_of("positions", self.positions, POSITIONS)
        check_one_of("norm", self.norm, NORMS)
        check_real("layer_norm_eps", self.layer_norm_eps, 0.0, low_open=True)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd must be divisible by n_head, got n_embd={self.n_embd} and "
                             f"n_head={self.n_head}")
        if self.positions == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rope needs an even head dim, got n_embd / n_head = "
                             f"{self.n_embd // self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class GPT(nn.Module):
    """A GPT: ``logits = W_eᵀ · norm(blocks(embed(tokens) + positions))``.

    ``forward(tokens (B, T)) -> logits (B, T, V)``: position ``t`` scores the token at ``t + 1``
    given tokens ``0..t``. The output layer shares its weight with the token embedding
    (``lm_head.weight is wte.weight``), as in GPT-2. Weights start as GPT-2's: N(0, 0.02), and
    N(0, 0.02/√(2·n_layer)) for the two projections that write into the residual stream.

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32))
    >>> tokens = torch.randint(0, 50, (3, 16))
    >>> model(tokens).shape
    torch.Size([3, 16, 50])
    >>> model.lm_head.weight is model.wte.weight
    True
    >>> round(next_token_loss(model(tokens[:, :-1]), tokens[:, 1:]).item(), 1)   # ≈ ln 50 at start
    3.9
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {describe(config)}")
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.pos = self._make_positions(c)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            GPTBlock(c.n_embd, c.n_head, 4 * c.n_embd, c.dropout, c.norm_first, c.norm,
                     c.layer_norm_eps, c.bias)
            for _ in range(c.n_layer)
        )
        if c.positions == "rope":
            for block in self.blocks:
                _attach_rope(block.self_attn, c.head_dim)
        # pre-LN leaves the residual stream un-normalised: one last norm before the output layer.
        # A post-LN stack's last block already ends in a norm.
        self.norm_f = make_norm(c.norm, c.n_embd, c.layer_norm_eps, c.bias) if c.norm_first else nn.Identity()
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one (V, E) matrix, used twice
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2: scale the residual projections by 1/√(2·n_layer)
            for proj in (block.self_attn.out_proj, block.linear2):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _make_positions(c: GPTConfig) -> nn.Module | None:
        if c.positions == "learned":
            return LearnedPositionalEmbedding(c.block_size, c.n_embd)
        if c.positions == "sinusoidal":
            return ScaledSinusoidalPositions(c.n_embd, c.max_positions, rms=0.02)
        return None  # rope: inside the attention; alibi: a bias on the scores; none: nothing

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, LearnedPositionalEmbedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        """Parameters, the tied matrix counted once."""
        return sum(p.numel() for p in self.parameters())

    def max_length(self) -> int:
        """The longest sequence this model can read: ``block_size`` if its positions are learned."""
        c = self.config
        return c.block_size if c.positions == "learned" else c.max_positions

    def _check_tokens(self, tokens: object, offset: int = 0) -> None:
        check_tensor("tokens", tokens, dims=2)
        check_token_ids("tokens", tokens, self.config.vocab_size)
        if tokens.device != self.wte.weight.device:
            raise ValueError(f"tokens must be on the model's device {self.wte.weight.device}, got "
                             f"{tokens.device}")
        end = offset + tokens.size(1)
        if end > self.max_length():
            why = ("its learned position table has block_size rows, and a position it never "
                   "trained on has no vector" if self.config.positions == "learned"
                   else "raise GPTConfig.max_positions")
            raise ValueError(f"tokens reach position {end - 1}, but this model reads at most "
                             f"{self.max_length()} positions ({why})")

    def attention_bias(self, lq: int, lk: int | None = None, offset: int = 0) -> torch.Tensor | None:
        """The float bias added to every layer's scores: ALiBi ``(1, H, Lq, Lk)``, else ``None``."""
        if self.config.positions != "alibi":
            return None
        from course_utils.positional import alibi_bias

        bias = alibi_bias(self.config.n_head, lq, lk, offset=offset, device=self.wte.weight.device,
                          dtype=self.wte.weight.dtype)
        return bias[None]  # (1, H, Lq, Lk): broadcasts over the batch

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self._check_tokens(tokens)
        t = tokens.size(1)
        x = self.wte(tokens)  # (B, T, E)
        if self.pos is not None:
            x = self.pos(x)  # + position vectors (learned or sinusoidal)
        x = self.drop(x)
        bias = self.attention_bias(t)  # (1, H, T, T) or None
        for block in self.blocks:
            x = block(x, src_mask=bias, is_causal=True)  # (B, T, E)
        return self.lm_head(self.norm_f(x))  # (B, T, V)

    # -- decoding with a KV cache ------------------------------------------------------------

    def new_cache(self, batch: int, max_len: int):
        """An empty :class:`~course_utils.kv_cache.KVCache` for ``batch`` sequences of ``max_len`` tokens."""
        from course_utils.kv_cache import KVCache

        c, w = self.config, self.wte.weight
        return KVCache(c.n_layer, batch, c.n_head, c.head_dim, max_len, dtype=w.dtype, device=w.device)

    def forward_cached(self, tokens: torch.Tensor, cache) -> torch.Tensor:
        """Logits ``(B, T_new, V)`` of the new ``tokens (B, T_new)`` that follow the ``cache.length()``
        tokens already in ``cache`` (which they join). Equal to the last ``T_new`` rows of ``forward``
        on the whole sequence."""
        offset = cache.length(0)
        self._check_tokens(tokens, offset)
        t = tokens.size(1)
        x = self.wte(tokens)  # (B, T_new, E)
        if self.pos is not None:
            x = self.pos(x, offset=offset)  # positions offset..offset+T_new-1
        bias = self.attention_bias(t, offset + t, offset)  # (1, H, T_new, offset+T_new) or None
        for i, block in enumerate(self.blocks):
            x = block.step(x, cache, i, bias)
        return self.lm_head(self.norm_f(x))

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, cache) -> tuple[torch.Tensor, object]:
        """The decoding protocol of :mod:`course_utils.decoding`: ``tokens (B, t)`` are all the
        tokens so far; only those not yet in ``cache`` are fed. Returns the next-token logits
        ``(B, V)`` and the cache."""
        logits = self.forward_cached(tokens[:, cache.length(0):], cache)
        return logits[:, -1], cache


class ScaledSinusoidalPositions(nn.Module):
    """The sinusoidal table of Vaswani et al. (2017), scaled to a root-mean-square of ``rms``.

    ``forward(x (B, T, E), offset=0) -> x + rms·√2·PE[offset : offset + T]``. The paper's sines
    and cosines have amplitude 1 (RMS 1/√2); next to GPT-2's token embeddings, N(0, 0.02²), they
    would drown the tokens 35 to 1. Scaled to the size of a learned position table at
    initialisation, the two start alike and differ only in that this one is fixed (and defined
    at every position).

    >>> pos = ScaledSinusoidalPositions(8, max_len=100, rms=0.02)
    >>> round(pos.pe.pow(2).mean().sqrt().item(), 3)
    0.02
    """

    def __init__(self, d_model: int, max_len: int, rms: float = 0.02) -> None:
        super().__init__()
        check_real("rms", rms, 0.0, low_open=True)
        table = SinusoidalPositionalEncoding(d_model, max_len=max_len).pe  # (max_len, E), amplitude 1
        self.register_buffer("pe", table * (rms * math.sqrt(2.0)), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        check_float_tensor("x", x, dims=3)
        check_non_negative_int("offset", offset)
        if offset + x.size(1) > self.pe.size(0):
            raise ValueError(f"positions {offset}..{offset + x.size(1) - 1} need a table of "
                             f"{offset + x.size(1)} rows, this one has {self.pe.size(0)}")
        return x + self.pe[offset : offset + x.size(1)].to(x.dtype)  # (B, T, E)


def _attach_rope(attn: MultiHeadAttention, head_dim: int) -> None:
    """Rotate queries and keys inside ``attn`` after the head split (RoPE)."""
    from course_utils.positional import RotaryEmbedding

    attn.rope = RotaryEmbedding(head_dim)


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``logits (B, T, V)`` against ``targets (B, T)``, the tokens shifted by one.

    ``reduction="none"`` returns the ``(B, T)`` loss of every position.

    >>> logits = torch.zeros(1, 2, 4)                     # uniform over 4 tokens
    >>> round(next_token_loss(logits, torch.tensor([[1, 3]])).item(), 4) == round(math.log(4), 4)
    True
    """
    check_float_tensor("logits", logits, dims=3)
    check_tensor("targets", targets, dims=2)
    check_on_device("targets", targets, logits.device, of="logits")
    check_token_ids("targets", targets, logits.size(-1))
    if targets.shape != logits.shape[:2]:
        raise ValueError(f"targets must have shape (B, T) = {tuple(logits.shape[:2])} of the logits, "
                         f"got {describe(targets)}")
    check_one_of("reduction", reduction, ("mean", "sum", "none"))
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction)
    return loss.view(targets.shape) if reduction == "none" else loss


# ---------------------------------------------------------------------------------------------
# 4. transformers' GPT2LMHeadModel: copy the weights across, both ways
# ---------------------------------------------------------------------------------------------

# GPT-2's Conv1D stores its weight as (in, out), the transpose of nn.Linear's (out, in).


def _hf_pairs(model: GPT, hf: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    """``(ours, theirs, how)`` for every tensor; ``how`` is "copy", "T" (transpose) or "qkv:i"."""
    t = hf.transformer
    pairs = [(model.wte.weight, t.wte.weight, "copy"), (model.pos.weight, t.wpe.weight, "copy")]
    for ours, theirs in zip(model.blocks, t.h, strict=True):
        a = ours.self_attn
        for i, proj in enumerate((a.q_proj, a.k_proj, a.v_proj)):
            pairs.append((proj.weight, theirs.attn.c_attn.weight, f"qkvT:{i}"))
            pairs.append((proj.bias, theirs.attn.c_attn.bias, f"qkv:{i}"))
        pairs += [
            (a.out_proj.weight, theirs.attn.c_proj.weight, "T"),
            (a.out_proj.bias, theirs.attn.c_proj.bias, "copy"),
            (ours.norm1.weight, theirs.ln_1.weight, "copy"),
            (ours.norm1.bias, theirs.ln_1.bias, "copy"),
            (ours.linear1.weight, theirs.mlp.c_fc.weight, "T"),
            (ours.linear1.bias, theirs.mlp.c_fc.bias, "copy"),
            (ours.linear2.weight, theirs.mlp.c_proj.weight, "T"),
            (ours.linear2.bias, theirs.mlp.c_proj.bias, "copy"),
            (ours.norm2.weight, theirs.ln_2.weight, "copy"),
            (ours.norm2.bias, theirs.ln_2.bias, "copy"),
        ]
    pairs += [(model.norm_f.weight, t.ln_f.weight, "copy"), (model.norm_f.bias, t.ln_f.bias, "copy")]
    return pairs


def _check_gpt2_like(config: GPTConfig) -> None:
    if (config.positions, config.norm_first, config.norm, config.bias) != ("learned", True, "layernorm", True):
        raise ValueError(
            "only a GPT-2-like model copies to or from GPT2LMHeadModel: positions='learned', "
            f"norm_first=True, norm='layernorm', bias=True; got positions={config.positions!r}, "
            f"norm_first={config.norm_first}, norm={config.norm!r}, bias={config.bias}"
        )


@torch.no_grad()
def _copy(pairs: list, to_hf: bool) -> None:
    e = None
    for ours, theirs, how in pairs:
        if how == "copy":
            (theirs if to_hf else ours).copy_(ours if to_hf else theirs)
        elif how == "T":
            (theirs if to_hf else ours).copy_((ours if to_hf else theirs).T)
        else:  # one third of c_attn: q, k or v
            e = ours.size(0)
            i = int(how.split(":")[1])
            part = theirs[..., i * e : (i + 1) * e]  # (in, E) slice of the weight, or (E,) bias
            if to_hf:
                part.copy_(ours.T if how.startswith("qkvT") else ours)
            else:
                ours.copy_(part.T if how.startswith("qkvT") else part)


def gpt_from_hf(hf: nn.Module) -> GPT:
    """A :class:`GPT` holding a copy of the weights of a ``transformers.GPT2LMHeadModel``.

    The configuration is read from ``hf.config`` (no download: build the HF model from a
    ``GPT2Config``). Dropout rates are copied; put both models in ``eval()`` to compare.
    """
    _check_hf_class(hf, "GPT2LMHeadModel")
    hc = hf.config
    if hc.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"GPT2 activation_function must be the tanh GELU ('gelu_new'), got "
                         f"{hc.activation_function!r}")
    if hc.n_inner not in (None, 4 * hc.n_embd) or hc.scale_attn_by_inverse_layer_idx or not hc.scale_attn_weights:
        raise ValueError("only GPT-2's standard blocks are supported (n_inner = 4·n_embd, "
                         "scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False)")
    config = GPTConfig(vocab_size=hc.vocab_size, block_size=hc.n_positions, n_layer=hc.n_layer,
                       n_head=hc.n_head, n_embd=hc.n_embd, dropout=float(hc.attn_pdrop),
                       layer_norm_eps=hc.layer_norm_epsilon)
    ref = hf.transformer.wte.weight
    model = GPT(config).to(device=ref.device, dtype=ref.dtype)
    _copy(_hf_pairs(model, hf), to_hf=False)
    return model


def gpt_to_hf(model: GPT, attn_implementation: str = "sdpa") -> nn.Module:
    """A ``transformers.GPT2LMHeadModel`` holding a copy of ``model``'s weights (same config).

    Use it to train transformers' GPT-2 from exactly the same initial weights.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if not isinstance(model, GPT):
        raise TypeError(f"model must be a course_utils.gpt.GPT, got {describe(model)}")
    check_str("attn_implementation", attn_implementation, allow_empty=False)
    c = model.config
    _check_gpt2_like(c)
    hc = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                    n_layer=c.n_layer, n_head=c.n_head, resid_pdrop=c.dropout, embd_pdrop=c.dropout,
                    attn_pdrop=c.dropout, layer_norm_epsilon=c.layer_norm_eps,
                    activation_function="gelu_new", bos_token_id=None, eos_token_id=None,
                    tie_word_embeddings=True)
    hc._attn_implementation = attn_implementation
    ref = model.wte.weight
    hf = GPT2LMHeadModel(hc).to(device=ref.device, dtype=ref.dtype)
    _copy(_hf_pairs(model, hf), to_hf=True)
    return hf.train(model.training)


def _check_hf_class(hf: object, name: str) -> None:
    if type(hf).__name__ != name:
        raise TypeError(f"hf must be a transformers {name}, got {describe(hf)}")


def _check_prompt(prompt: object, model: nn.Module) -> None:
    """At least one row of token ids of ``model``'s vocabulary, on its device."""
    weight = next(model.parameters())
    check_int_tensor("prompt", prompt, dims=2, device=weight.device, what="(B, T0)")
    if prompt.size(0) == 0:
        raise ValueError(f"prompt must hold at least one sequence, got {describe(prompt)}")
    check_token_ids("prompt", prompt, model.config.vocab_size)


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Continue ``prompt (B, T0)`` by ``max_new_tokens`` tokens; returns ``(B, T0 + max_new_tokens)``.

    ``temperature=0`` is greedy decoding; otherwise tokens are sampled with the temperature,
    top-k and top-p filters of :func:`course_utils.decoding.sample_next`. With ``use_cache`` the
    model's ``step`` feeds only the newest token and keeps keys and values in a KV cache;
    without it every step re-runs the whole prefix (the same tokens, more work), or, past the
    positions a :class:`GPT` can read (``max_length()``: ``block_size`` for learned positions),
    its last ``max_length()`` tokens: a sliding window, as nanoGPT samples.
    ``key_padding_mask (B, T0)`` (True = padding, on the left) is for :class:`LlamaGPT`.

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = GPT(GPTConfig(vocab_size=20, block_size=32, n_layer=2, n_head=2, n_embd=16))
    >>> prompt = torch.randint(0, 20, (2, 5))
    >>> torch.equal(generate(model, prompt, 10), generate(model, prompt, 10, use_cache=False))
    True
    """
    from course_utils import decoding

    if not isinstance(model, (GPT, LlamaGPT)):
        raise TypeError(f"model must be a course_utils.gpt.GPT or LlamaGPT, got {describe(model)}")
    _check_prompt(prompt, model)
    check_non_negative_int("max_new_tokens", max_new_tokens)
    check_bool("use_cache", use_cache)
    if key_padding_mask is not None and not isinstance(model, LlamaGPT):
        raise ValueError("key_padding_mask (left padding) is supported by LlamaGPT only")
    was_training = model.training
    model.eval()
    try:
        if isinstance(model, LlamaGPT):
            state = model.new_state(prompt, max_new_tokens, key_padding_mask)
            step = model.step if use_cache else model.step_without_cache
        elif use_cache:
            last = prompt.size(1) + max_new_tokens - 2  # the position of the last token fed
            if max_new_tokens and last >= model.max_length():
                raise ValueError(
                    f"the prompt ({prompt.size(1)} tokens) and {max_new_tokens} new tokens reach "
                    f"position {last}, but this model reads at most {model.max_length()} positions; "
                    "with use_cache=False, generate slides a window over the last "
                    f"{model.max_length()} tokens instead (as nanoGPT does)")
            state, step = model.new_cache(prompt.size(0), prompt.size(1) + max_new_tokens), model.step
        else:
            state, window = None, model.max_length()

            def step(tokens: torch.Tensor, state: None) -> tuple[torch.Tensor, None]:
                return model(tokens[:, -window:])[:, -1], state  # the last `window` tokens only
        if temperature == 0.0:
            result = decoding.greedy(step, prompt, state, max_new_tokens=max_new_tokens)
        else:
            result = decoding.sample(step, prompt, state, max_new_tokens=max_new_tokens,
                                     temperature=temperature, top_k=top_k, top_p=top_p,
                                     generator=generator)
    finally:
        model.train(was_training)
    return result.tokens


# ---------------------------------------------------------------------------------------------
# 4b. A Llama-style model: RMSNorm, SwiGLU, RoPE inside grouped-query attention
# ---------------------------------------------------------------------------------------------


@dataclass
class LlamaStyleConfig:
    """Sizes of a :class:`LlamaGPT`. ``head_dim`` may differ from ``n_embd / n_head`` (the query
    and output projections then change width); ``n_kv_head`` key/value heads are shared by
    ``n_head / n_kv_head`` query heads each (grouped-query attention)."""

    vocab_size: int
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int = 2
    n_embd: int = 64
    head_dim: int = 32
    intermediate_size: int = 172
    rms_norm_eps: float = 1e-6
    rope_base: float = 10000.0
    tie_weights: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "head_dim",
                     "intermediate_size"):
            check_positive_int(name, getattr(self, name))
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head must be a multiple of n_kv_head, got n_head={self.n_head} "
                             f"and n_kv_head={self.n_kv_head}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (RoPE rotates pairs of dims), got {self.head_dim}")
        check_real("rms_norm_eps", self.rms_norm_eps, 0.0, low_open=True)
        check_real("rope_base", self.rope_base, 1.0, low_open=True)
        check_bool("tie_weights", self.tie_weights)


class SwiGLU(nn.Module):
    """The gated feed-forward network of Llama (Shazeer, 2020): ``down(silu(gate(x)) · up(x))``.

    >>> SwiGLU(8, 20)(torch.randn(2, 3, 8)).shape
    torch.Size([2, 3, 8])
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("hidden", hidden)
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim("x", x, self.gate_proj.weight)
        check_like_module("x", x, self.gate_proj.weight)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (..., dim)


class LlamaBlock(nn.Module):
    """Pre-RMSNorm block: ``x + attn(rms1(x))``, then ``x + swiglu(rms2(x))``.

    The attention is the course's :class:`~course_utils.attention.GroupedQueryAttention` with
    an explicit ``head_dim`` and RoPE applied to queries and keys after the head split.
    """

    def __init__(self, c: LlamaStyleConfig) -> None:
        super().__init__()
        from course_utils.attention import GroupedQueryAttention
        from course_utils.positional import RotaryEmbedding

        check_instance("c", c, LlamaStyleConfig)
        self.norm1 = RMSNorm(c.n_embd, c.rms_norm_eps)
        self.self_attn = GroupedQueryAttention(
            c.n_embd, c.n_head, c.n_kv_head, bias=False, head_dim=c.head_dim,
            rope=RotaryEmbedding(c.head_dim, base=c.rope_base))
        self.norm2 = RMSNorm(c.n_embd, c.rms_norm_eps)
        self.mlp = SwiGLU(c.n_embd, c.intermediate_size)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, cache=None, layer: int = 0) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), is_causal=True, key_padding_mask=key_padding_mask,
                               cache=cache, layer=layer, positions=positions)
        return x + self.mlp(self.norm2(x))


class LlamaGPT(nn.Module):
    """A Llama-style causal language model built from the course's pieces.

    ``forward(tokens (B, T), key_padding_mask=None, positions=None, cache=None) -> logits (B, T, V)``:

    * ``key_padding_mask (B, L)``, True = padding (a left-padded batch), covers every key: the
      ``T`` new tokens, after those already in ``cache`` if there is one;
    * ``positions (B, T)`` are the RoPE positions of the new tokens; by default they count the
      real tokens of each row (a left-padded row starts at 0 after its padding), as
      transformers' ``generate`` does.

    :func:`llama_from_hf` copies a ``transformers.LlamaForCausalLM``; :func:`generate` decodes.
    """

    def __init__(self, config: LlamaStyleConfig) -> None:
        super().__init__()
        if not isinstance(config, LlamaStyleConfig):
            raise TypeError(f"config must be a LlamaStyleConfig, got {describe(config)}")
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.n_embd)
        self.layers = nn.ModuleList(LlamaBlock(c) for _ in range(c.n_layer))
        self.norm_f = RMSNorm(c.n_embd, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.embed.weight
        self.apply(GPT._init_weights)

    @staticmethod
    def default_positions(key_padding_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` positions that count only real tokens: ``cumsum(not padding) - 1``, 0 on padding.

        >>> LlamaGPT.default_positions(torch.tensor([[True, True, False, False]])).tolist()
        [[0, 0, 0, 1]]
        """
        real = (~key_padding_mask).long()
        return (real.cumsum(-1) - 1).clamp(min=0)

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        check_int_tensor("tokens", tokens, dims=2, device=self.embed.weight.device)
        check_token_ids("tokens", tokens, self.config.vocab_size)
        b, t = tokens.shape
        offset = 0 if cache is None else cache.length(0)
        if key_padding_mask is not None:
            check_tensor("key_padding_mask", key_padding_mask, dims=2)
            if key_padding_mask.dtype != torch.bool or key_padding_mask.shape != (b, offset + t):
                raise ValueError(f"key_padding_mask must be a bool (B, cached + T) = "
                                 f"{(b, offset + t)} tensor (True = padding) for tokens "
                                 f"{tuple(tokens.shape)} after {offset} cached, got "
                                 f"{describe(key_padding_mask)}")
            check_on_device("key_padding_mask", key_padding_mask, tokens.device, of="tokens")
            if positions is None:
                positions = self.default_positions(key_padding_mask)[:, offset:]
        elif positions is None:
            positions = torch.arange(offset, offset + t, device=tokens.device).expand(b, t)
        x = self.embed(tokens)  # (B, T, E)
        for i, layer in enumerate(self.layers):
            x = layer(x, key_padding_mask, positions, cache, i)
        return self.lm_head(self.norm_f(x))  # (B, T, V)

    # -- decoding ------------------------------------------------------------------------------

    def new_state(self, prompt: torch.Tensor, max_new_tokens: int,
                  key_padding_mask: torch.Tensor | None = None) -> dict:
        """What :meth:`step` carries: an empty KV cache, and the padding mask and positions of
        every slot up to ``T0 + max_new_tokens`` (new tokens are never padding)."""
        from course_utils.kv_cache import KVCache

        c, w = self.config, self.embed.weight
        b, t0 = prompt.shape
        pad = torch.zeros(b, t0 + max_new_tokens, dtype=torch.bool, device=prompt.device)
        if key_padding_mask is not None:
            check_tensor("key_padding_mask", key_padding_mask, dims=2)
            if key_padding_mask.dtype != torch.bool or key_padding_mask.shape != prompt.shape:
                raise ValueError(f"key_padding_mask must be a bool tensor shaped like the prompt "
                                 f"{tuple(prompt.shape)} (True = padding), got {describe(key_padding_mask)}")
            pad[:, :t0] = key_padding_mask
        cache = KVCache(c.n_layer, b, c.n_kv_head, c.head_dim, t0 + max_new_tokens, dtype=w.dtype,
                        device=w.device)
        return {"cache": cache, "padding": pad, "positions": self.default_positions(pad)}

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """The decoding protocol with the KV cache: feed only the tokens not yet in the cache."""
        cache = state["cache"]
        start, end = cache.length(0), tokens.size(1)
        logits = self(tokens[:, start:], state["padding"][:, :end], state["positions"][:, start:end], cache)
        return logits[:, -1], state

    @torch.no_grad()
    def step_without_cache(self, tokens: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """The decoding protocol without a cache: re-run the whole prefix."""
        end = tokens.size(1)
        logits = self(tokens, state["padding"][:, :end], state["positions"][:, :end])
        return logits[:, -1], state


def llama_from_hf(hf: nn.Module) -> LlamaGPT:
    """A :class:`LlamaGPT` holding a copy of a ``transformers.LlamaForCausalLM``'s weights.

    Build the transformers model from a ``LlamaConfig`` (no download). Default RoPE only, no
    biases, SiLU gate (the Llama architecture).
    """
    _check_hf_class(hf, "LlamaForCausalLM")
    hc = hf.config
    rope = dict(getattr(hc, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default" or hc.hidden_act != "silu" or hc.attention_bias or hc.mlp_bias:
        raise ValueError("only the plain Llama architecture is supported: default RoPE, SiLU, no "
                         f"biases; got rope {rope}, hidden_act={hc.hidden_act!r}, "
                         f"attention_bias={hc.attention_bias}, mlp_bias={hc.mlp_bias}")
    config = LlamaStyleConfig(
        vocab_size=hc.vocab_size, n_layer=hc.num_hidden_layers, n_head=hc.num_attention_heads,
        n_kv_head=hc.num_key_value_heads, n_embd=hc.hidden_size, head_dim=hc.head_dim,
        intermediate_size=hc.intermediate_size, rms_norm_eps=hc.rms_norm_eps,
        rope_base=float(rope.get("rope_theta", getattr(hc, "rope_theta", 10000.0))),
        tie_weights=bool(hc.tie_word_embeddings))
    ref = hf.model.embed_tokens.weight
    model = LlamaGPT(config).to(device=ref.device, dtype=ref.dtype)
    theirs = hf.model
    with torch.no_grad():
        model.embed.weight.copy_(theirs.embed_tokens.weight)
        for ours, layer in zip(model.layers, theirs.layers, strict=True):
            a, h = ours.self_attn, layer.self_attn
            for mine, their in ((a.q_proj, h.q_proj), (a.k_proj, h.k_proj), (a.v_proj, h.v_proj),
                                (a.out_proj, h.o_proj), (ours.mlp.gate_proj, layer.mlp.gate_proj),
                                (ours.mlp.up_proj, layer.mlp.up_proj),
                                (ours.mlp.down_proj, layer.mlp.down_proj)):
                mine.weight.copy_(their.weight)
            ours.norm1.weight.copy_(layer.input_layernorm.weight)
            ours.norm2.weight.copy_(layer.post_attention_layernorm.weight)
        model.norm_f.weight.copy_(theirs.norm.weight)
        if not config.tie_weights:
            model.lm_head.weight.copy_(hf.lm_head.weight)
    return model.train(hf.training)


# ---------------------------------------------------------------------------------------------
# 5. Training and evaluation
# ---------------------------------------------------------------------------------------------


def cosine_lr(step: int, lr: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """nanoGPT's schedule: linear warm-up over ``warmup`` steps, then a cosine down to ``min_lr`` at ``total``.

    >>> [round(cosine_lr(s, 1e-3, warmup=10, total=110, min_lr=1e-4), 6) for s in (0, 9, 10, 60, 110, 200)]
    [0.0001, 0.001, 0.001, 0.00055, 0.0001, 0.0001]
    """
    check_non_negative_int("step", step)
    _check_lrs(lr, min_lr)
    check_non_negative_int("warmup", warmup)
    check_positive_int("total", total)
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def _check_lrs(lr: object, min_lr: object) -> None:
    """A learning rate > 0 and the floor of its decay, in [0, lr]."""
    check_real("lr", lr, 0.0, low_open=True)
    check_real("min_lr", min_lr, 0.0, lr)


def _check_betas(betas: object) -> None:
    """Adam's two decay rates, each in [0, 1)."""
    if isinstance(betas, str) or not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair of real numbers in [0, 1) such as (0.9, 0.99), "
                        f"got {describe(betas)}")
    for i, beta in enumerate(betas):
        check_real(f"betas[{i}]", beta, 0.0, 1.0, high_open=True)


def _vocab_size(model: nn.Module) -> int | None:
    """The vocabulary of a course model or a transformers model (``config.vocab_size``)."""
    return getattr(getattr(model, "config", None), "vocab_size", None)


def _check_token_batch(name: str, t: object, vocab_size: int | None, device: torch.device,
                       dims: int = 2) -> None:
    """Token ids (of ``vocab_size`` if known) on the CPU or on the model's ``device``."""
    check_int_tensor(name, t, dims=dims)
    if t.device not in (torch.device("cpu"), device):
        raise ValueError(f"{name} must be on the CPU or on the model's device {device}, got "
                         f"{name} on {t.device}")
    if vocab_size is not None:
        check_token_ids(name, t, vocab_size)


def _logits_of(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    out = model(tokens)
    return out if isinstance(out, torch.Tensor) else out.logits  # transformers returns an object


class LMTrainer:
    """One optimisation step at a time, with nanoGPT's recipe, and the time of each step.

    AdamW with weight decay on the matrices only (not on biases or norm gains), the learning
    rate of :func:`cosine_lr`, gradients clipped to a global norm of ``grad_clip``. Works for the
    course's :class:`GPT` and for transformers' models alike (their logits are read from
    ``output.logits``). ``step(x, y)`` moves the batch to the model's device and returns the
    loss; ``seconds`` holds the wall time of every step (forward, backward and update; on a GPU
    it includes the wait for the loss value, so it is the real time of the step), ``losses`` the
    losses.

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=16))
    >>> trainer = LMTrainer(model, lr=1e-2, total_steps=30, warmup=0)
    >>> x = torch.randint(0, 10, (4, 8))
    >>> losses = [trainer.step(x, x) for _ in range(30)]       # learn to copy the input
    >>> losses[-1] < 0.2 * losses[0]
    True
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        total_steps: int = 2000,
        warmup: int = 100,
        min_lr: float | None = None,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.99),
        grad_clip: float | None = 1.0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {describe(model)}")
        check_real("lr", lr, 0.0, low_open=True)
        check_positive_int("total_steps", total_steps)
        check_non_negative_int("warmup", warmup)
        check_real("weight_decay", weight_decay, 0.0)
        if min_lr is not None:
            check_real("min_lr", min_lr, 0.0, lr)
        _check_betas(betas)
        if grad_clip is not None:
            check_real("grad_clip", grad_clip, 0.0, low_open=True)
        self.model, self.lr, self.total_steps, self.warmup = model, lr, total_steps, warmup
        self.min_lr = lr / 10 if min_lr is None else min_lr
        self.grad_clip = grad_clip
        params = [p for p in model.parameters() if p.requires_grad]  # a tied matrix once
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas)
        self.steps_done = 0
        self.losses: list[float] = []
        self.seconds: list[float] = []

    def current_lr(self) -> float:
        return cosine_lr(self.steps_done, self.lr, self.warmup, self.total_steps, self.min_lr)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One update on inputs ``x (B, T)`` and next-token targets ``y (B, T)``; returns the loss."""
        start = time.perf_counter()
        device = next(self.model.parameters()).device
        vocab = _vocab_size(self.model)
        _check_token_batch("x", x, vocab, device)
        _check_token_batch("y", y, vocab, device)
        check_shape("y", y, tuple(x.shape), what=f"{tuple(x.shape)}, the shape of x")
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # CPU batches, any device
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.current_lr()
        loss = next_token_loss(_logits_of(self.model, x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        value = loss.item()
        self.seconds.append(time.perf_counter() - start)
        self.losses.append(value)
        self.steps_done += 1
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss became {value} at step {self.steps_done - 1}; lower "
                                     "the learning rate or add a warm-up")
        return value


@torch.no_grad()
def evaluate_loss(model: nn.Module, data: torch.Tensor, block_size: int, batch_size: int = 32) -> float:
    """Mean next-token loss over every non-overlapping window of ``block_size`` tokens of ``data``.

    The whole held-out text, once, in order: the same number on every run (no sampling).
    """
    total, count = _sum_losses(model, data, block_size, batch_size, "block_size")
    return (total.sum() / count).item()


@torch.no_grad()
def loss_by_position(model: nn.Module, data: torch.Tensor, length: int, batch_size: int = 32) -> torch.Tensor:
    """The mean loss at each position ``0..length-1`` of windows of ``length`` tokens, ``(length,)``.

    Position ``t`` predicts its token from ``t`` tokens of context (the loss falls with ``t``
    while the model uses more context, and rises where it meets positions it never trained on).
    """
    total, count = _sum_losses(model, data, length, batch_size, "length")
    return total / (count / length)


def _sum_losses(model: nn.Module, data: torch.Tensor, length: int, batch_size: int,
                length_name: str) -> tuple[torch.Tensor, int]:
    check_instance("model", model, nn.Module)
    check_positive_int(length_name, length)
    check_positive_int("batch_size", batch_size)
    device = next(model.parameters()).device
    _check_token_batch("data", data, _vocab_size(model), device, dims=1)
    was_training = model.training
    model.eval()
    total = torch.zeros(length, dtype=torch.float64)
    count = 0
    try:
        for x, y in sequential_windows(data, length, batch_size):
            x, y = x.to(device), y.to(device)  # the text may stay on the CPU, the model anywhere
            losses = next_token_loss(_logits_of(model, x), y, reduction="none")  # (B, T)
            total += losses.double().sum(0).cpu()
            count += y.numel()
    finally:
        model.train(was_training)
    return total, count


# ---------------------------------------------------------------------------------------------
# 6. Induction heads
# ---------------------------------------------------------------------------------------------


def repeated_random_tokens(batch: int, length: int, vocab_size: int,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """``(batch, 2·length)`` tokens: ``length`` random tokens, then the same ``length`` again.

    The first copy cannot be predicted; every token of the second copy can, by a model that
    finds the earlier occurrence of the current token and copies the token that followed it.

    >>> seq = repeated_random_tokens(2, 5, 100, torch.Generator().manual_seed(0))
    >>> seq.shape, torch.equal(seq[:, :5], seq[:, 5:])
    (torch.Size([2, 10]), True)
    """
    for name, n in (("batch", batch), ("length", length), ("vocab_size", vocab_size)):
        check_positive_int(name, n)
    first = torch.randint(vocab_size, (batch, length), generator=generator)
    return torch.cat([first, first], dim=1)


class AttentionOnlyTransformer(nn.Module):
    """Token and learned position embeddings, ``n_layer`` pre-LN attention layers (no MLP), an output layer.

    The model of Olsson et al. (2022) in which induction heads are easiest to see: only
    attention moves information, so two layers are the least that can implement "find the
    previous occurrence of this token, copy what came next". Each layer is the course's
    :class:`~course_utils.attention.MultiHeadAttention` with ``store_weights=True``:
    ``layers[i].last_attn_weights`` holds ``(B, H, T, T)`` after a forward pass.

    >>> model = AttentionOnlyTransformer(vocab_size=20, max_len=16, d_model=32, n_head=4)
    >>> model(torch.randint(0, 20, (2, 16))).shape
    torch.Size([2, 16, 20])
    >>> model.layers[1].last_attn_weights.shape
    torch.Size([2, 4, 16, 16])
    """

    def __init__(self, vocab_size: int, max_len: int, d_model: int = 64, n_head: int = 4,
                 n_layer: int = 2) -> None:
        super().__init__()
        for name, n in (("vocab_size", vocab_size), ("max_len", max_len), ("d_model", d_model),
                        ("n_head", n_head), ("n_layer", n_layer)):
            check_positive_int(name, n)
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = LearnedPositionalEmbedding(max_len, d_model)
        self.norms = nn.ModuleList(LayerNorm(d_model) for _ in range(n_layer))
        self.layers = nn.ModuleList(MultiHeadAttention(d_model, n_head) for _ in range(n_layer))
        for layer in self.layers:
            layer.store_weights = True
        self.norm_f = LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, vocab_size, bias=False)
        # token and position vectors on one scale (GPT-2's N(0, 0.02) for both): with nn.Embedding's
        # default N(0, 1) the positions would be drowned 50:1, and a head that attends to "the
        # previous token" (which reads positions) would take far longer to form
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        check_int_tensor("tokens", tokens, dims=2, device=self.embed.weight.device)
        check_token_ids("tokens", tokens, self.vocab_size)
        x = self.pos(self.embed(tokens))  # (B, T, E)
        for norm, attn in zip(self.norms, self.layers, strict=True):
            x = x + attn(norm(x), is_causal=True)[0]  # the residual stream only gains attention outputs
        return self.unembed(self.norm_f(x))  # (B, T, V)


def induction_scores(weights: torch.Tensor, length: int) -> torch.Tensor:
    """Per head, the mean attention from each token of the second copy to the token after its first occurrence.

    ``weights (B, H, 2L, 2L)`` on sequences made of ``L`` tokens repeated twice
    (:func:`repeated_random_tokens`). The query at position ``i ≥ L`` holds the same token as
    position ``i - L``; an induction head attends to ``i - L + 1``, the token that came next.
    Returns ``(H,)``: 1 for a perfect induction head, about ``1/i`` for a uniform one.

    >>> L = 4
    >>> perfect = torch.zeros(1, 1, 2 * L, 2 * L)
    >>> for i in range(2 * L):
    ...     perfect[0, 0, i, i - L + 1 if i >= L else 0] = 1.0
    >>> induction_scores(perfect, L).tolist()
    [1.0]
    """
    check_float_tensor("weights", weights, dims=4)
    check_positive_int("length", length)
    if weights.size(0) == 0 or weights.size(1) == 0:
        raise ValueError(f"weights must hold at least one sequence and one head, got "
                         f"{describe(weights)}")
    if weights.shape[-2:] != (2 * length, 2 * length):
        raise ValueError(f"weights must have shape (B, H, 2·length, 2·length) = (B, H, "
                         f"{2 * length}, {2 * length}), got {describe(weights)}")
    queries = torch.arange(length, 2 * length, device=weights.device)  # the second copy
    keys = queries - length + 1  # the token after the earlier occurrence
    return weights[:, :, queries, keys].mean(dim=(0, 2))  # (H,)
