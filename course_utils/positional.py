"""Positions: sinusoidal (Vaswani et al., 2017), learned (BERT, GPT-2, ViT), rotary (RoPE) and
linear biases (ALiBi).

Attention by itself is permutation-equivariant: shuffle the tokens and the outputs shuffle the
same way. It has no idea of order. Four ways to tell it where each token is:

* :class:`SinusoidalPositionalEncoding` — add a fixed pattern of sines and cosines;
* :class:`LearnedPositionalEmbedding` — add a learned vector per position;
* :class:`RotaryEmbedding` — *rotate* queries and keys by an angle proportional to their
  position (Su et al., 2021), so that ``q_m · k_n`` depends only on the offset ``m - n``.
  The layout is the "rotate half" convention of Hugging Face's LLaMA (tested equal).
  Pass one as ``rope=`` to :class:`~course_utils.attention.MultiHeadAttention` or
  :class:`~course_utils.attention.GroupedQueryAttention` to apply it after the head split;
* :func:`alibi_bias` — add ``-m_h · (i - j)`` to the score of query ``i`` and key ``j``
  (Press et al., 2022): no position vectors at all, a penalty that grows with distance, one
  slope ``m_h`` per head (:func:`alibi_slopes`). It is a float mask, usable as ``attn_mask``
  anywhere in the course::

    >>> bias = alibi_bias(num_heads=4, lq=3)                      # (H, Lq, Lk)
    >>> bias[0]                                                    # head 0: slope 1/4
    tensor([[ 0.0000, -0.2500, -0.5000],
            [-0.2500,  0.0000, -0.2500],
            [-0.5000, -0.2500,  0.0000]])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from course_utils.checks import (
    check_broadcast_to,
    check_divisible,
    check_dtype,
    check_float_tensor,
    check_probability,
    check_real,
    check_sequence_input,
    check_sizes,
)

__all__ = [
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "alibi_bias",
    "alibi_slopes",
    "apply_rotary",
    "rotate_half",
    "sinusoidal_table",
]


def _add_positions(x: torch.Tensor, table: torch.Tensor, offset: int) -> torch.Tensor:
    """``x + table[offset : offset + T]``: the vectors of positions ``offset..`` added."""
    check_sequence_input("x", x, table.size(-1), table.device, offset, max_len=table.size(0))
    return x + table[offset : offset + x.size(-2)].to(x.dtype)  # (..., T, D)


# ---------------------------------------------------------------------------------------------
# Sinusoidal
# ---------------------------------------------------------------------------------------------


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    r"""The ``(max_len, d_model)`` table of Vaswani et al. (2017), section 3.5.

    PE[pos, 2i] = sin(pos / 10000^(2i/d_model)),  PE[pos, 2i+1] = cos(pos / 10000^(2i/d_model)).

    Each pair of dims is a clock turning at its own speed, from one turn every 2π positions
    down to one every 10000·2π. If ``d_model`` is odd, the last dim is a sine without its
    cosine partner.

    >>> pe = sinusoidal_table(4, 6)
    >>> pe.shape
    torch.Size([4, 6])
    >>> pe[0]                                     # position 0: sin 0 = 0, cos 0 = 1
    tensor([0., 1., 0., 1., 0., 1.])
    >>> round(pe[1, 0].item(), 4), round(pe[1, 1].item(), 4)   # sin(1), cos(1)
    (0.8415, 0.5403)
    """
    check_sizes(max_len=max_len, d_model=d_model)
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (max_len, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # 0, 2, 4, ... (ceil(d/2),)
    angle = pos / 10000.0 ** (two_i / d_model)  # (max_len, ceil(d/2))
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)  # even dims
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])  # odd dims (one fewer if d is odd)
    return pe.float()  # computed in float64 so long tables stay accurate


class SinusoidalPositionalEncoding(nn.Module):
    """Add the fixed sinusoidal table: ``x (..., T, d_model) -> dropout(x + pe[:T])``.

    ``pe`` is a (non-persistent) buffer of shape ``(max_len, d_model)`` (see
    :func:`sinusoidal_table`). ``T > max_len`` raises ``ValueError``; odd ``d_model`` is
    allowed. The paper also multiplies the token embeddings by √d_model before adding —
    that belongs to the embedding, not here. ``offset`` shifts the positions (for decoding
    one token at a time: the token at step t gets ``pe[t]``).

    >>> pos = SinusoidalPositionalEncoding(d_model=8, max_len=100)
    >>> x = torch.zeros(2, 5, 8)                                  # (B, T, D)
    >>> y = pos(x)
    >>> y.shape
    torch.Size([2, 5, 8])
    >>> torch.equal(y[0], pos.pe[:5])
    True
    """

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0) -> None:
        super().__init__()
        check_probability("dropout", dropout)
        self.d_model, self.max_len = d_model, max_len
        self.register_buffer("pe", sinusoidal_table(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return self.dropout(_add_positions(x, self.pe, offset))  # (..., T, D)


# ---------------------------------------------------------------------------------------------
# Learned
# ---------------------------------------------------------------------------------------------


class LearnedPositionalEmbedding(nn.Module):
    """Add a learned vector per position: ``x (..., T, d_model) -> x + weight[:T]``.

    ``weight`` is an ``nn.Parameter`` of shape ``(max_len, d_model)``, initialised
    N(0, 0.02²) as in GPT-2 and ViT. It cannot extrapolate: position ``max_len`` was never
    trained, so ``T > max_len`` raises ``ValueError``.

    >>> pos = LearnedPositionalEmbedding(max_len=16, d_model=4)
    >>> x = torch.zeros(3, 7, 4)
    >>> torch.equal(pos(x)[1], pos.weight[:7])
    True
    """

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        check_sizes(max_len=max_len, d_model=d_model)
        self.max_len, self.d_model = max_len, d_model
        self.weight = nn.Parameter(torch.randn(max_len, d_model) * 0.02)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return _add_positions(x, self.weight, offset)  # (..., T, D)


# ---------------------------------------------------------------------------------------------
# Rotary (RoPE)
# ---------------------------------------------------------------------------------------------


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dim (halves, as in HF transformers' LLaMA).

    Dim ``i`` is paired with dim ``i + D/2``; for each pair this is the 90° rotation
    ``(a, b) -> (-b, a)``.

    >>> rotate_half(torch.tensor([1., 2., 3., 4.]))
    tensor([-3., -4.,  1.,  2.])
    """
    check_float_tensor("x", x, min_dims=1, last_dim_multiple_of=2)  # dims rotate in pairs
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair ``(x_i, x_{i+D/2})`` by its angle: ``x·cos + rotate_half(x)·sin``.

    ``cos`` and ``sin`` (from :meth:`RotaryEmbedding.cos_sin`) broadcast to ``x (..., T, D)``.

    >>> x = torch.tensor([[1., 0.]])                   # one position, D = 2: a single pair
    >>> angle = torch.full((1, 2), torch.pi / 2)        # rotate it by 90 degrees
    >>> apply_rotary(x, angle.cos(), angle.sin()).round(decimals=6).abs()
    tensor([[0., 1.]])
    """
    rotated = rotate_half(x)  # (..., T, D): each pair turned by 90°
    check_broadcast_to("x", x, cos=cos, sin=sin)
    return x * cos + rotated * sin


class RotaryEmbedding(nn.Module):
    r"""Rotary position embedding (RoPE, Su et al. 2021) for ``(..., T, head_dim)`` tensors.

    Pair ``i`` of dims (``i`` and ``i + head_dim/2``) at position ``m`` is rotated by the angle
    ``m·θ_i`` with ``θ_i = base^(-2i/head_dim)``. Because rotations compose,
    ``R(m)q · R(n)k = q · R(n-m)k``: the score depends on the positions only through
    ``m - n``. Apply it to queries and keys (not values), after splitting heads.

    * ``forward(x, positions=None, offset=0)``: integer ``positions`` ``(T,)`` or ``(B, T)``
      (for ``x (B, H, T, D)`` the head axis is inserted for you); default ``offset..offset+T-1``.
    * ``rotate(x, offset=0)``: positions ``offset..offset+T-1`` (KV-cache decoding).
    * ``cos_sin(positions)``: the ``(..., T, head_dim)`` tables, as HF's ``LlamaRotaryEmbedding``.

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> rope = RotaryEmbedding(head_dim=8)
    >>> q, k = torch.randn(8), torch.randn(8)
    >>> def score(m, n):                       # q at position m, k at position n
    ...     qm = rope.rotate(q.expand(m + 1, 8))[m]
    ...     kn = rope.rotate(k.expand(n + 1, 8))[n]
    ...     return qm @ kn
    >>> torch.allclose(score(5, 3), score(12, 10), atol=1e-5)    # only m - n = 2 matters
    True
    >>> torch.allclose(score(5, 3), score(3, 5), atol=1e-5)     # but the sign of m - n does
    False
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        check_divisible("head_dim", head_dim, None, 2)  # dims are rotated in pairs
        check_real("base", base, 0.0, low_open=True)
        self.head_dim, self.base = head_dim, base
        # θ_i = base^(-2i/D), i = 0..D/2-1 — computed exactly as HF's LLaMA does (float32)
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim  # 2i/D
        inv_freq = 1.0 / (base**exponents)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (D/2,)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions (..., T)`` -> ``cos, sin`` of shape ``(..., T, head_dim)``."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        freqs = positions[..., None].to(work) * self.inv_freq.to(work)  # (..., T, D/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (..., T, D): pair i uses dims i, i+D/2
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor | None = None, offset: int = 0
    ) -> torch.Tensor:
        device, d = self.inv_freq.device, self.head_dim
        check_sequence_input("x", x, d, device, offset, width_name="head_dim", positions=positions)
        t = x.size(-2)
        if positions is None:  # offset, offset + 1, ...: the tokens after `offset` cached ones
            positions = torch.arange(offset, offset + t, device=x.device)
        cos, sin = self.cos_sin(positions, dtype=x.dtype)  # (T, D) or (B, T, D)
        if positions.dim() == 2 and x.dim() == 4:  # (B, T, D) -> (B, 1, T, D) for the heads
            cos, sin = cos[:, None], sin[:, None]
        return apply_rotary(x, cos, sin)

    def rotate(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Apply RoPE with positions ``offset, offset+1, ...`` along dim -2."""
        return self.forward(x, offset=offset)


# ---------------------------------------------------------------------------------------------
# ALiBi: attention with linear biases
# ---------------------------------------------------------------------------------------------


def alibi_slopes(num_heads: int) -> torch.Tensor:
    r"""The per-head slopes ``m_h`` of ALiBi (Press et al., 2022), shape ``(num_heads,)``.

    For ``n`` heads, ``n`` a power of two, the slopes are the geometric sequence that starts at
    ``2^(-8/n)`` with that same ratio: ``m_h = 2^(-8h/n)``, ``h = 1..n`` (8 heads: 1/2, 1/4, …,
    1/256). For other ``n`` the paper takes the ``2^⌊log2 n⌋`` slopes of the nearest power of two
    below, then every other slope of ``2n'``'s sequence for the remaining heads (the authors'
    reference code, also in BLOOM).

    >>> alibi_slopes(8).tolist()
    [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625]
    >>> [round(m, 4) for m in alibi_slopes(6).tolist()]          # 4 of n=4, then 2 of n=8
    [0.25, 0.0625, 0.0156, 0.0039, 0.5, 0.125]
    """
    check_sizes(num_heads=num_heads)

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    p = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two(p) + power_of_two(2 * p)[0::2][: num_heads - p]
    return torch.tensor(slopes, dtype=torch.float64).float()


def alibi_bias(
    num_heads: int,
    lq: int,
    lk: int | None = None,
    offset: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""The ALiBi bias ``-m_h · |i + offset - j|``, shape ``(num_heads, lq, lk)``.

    Query ``i`` sits at position ``i + offset`` (``offset`` = the tokens already in a KV cache),
    key ``j`` at position ``j``. Added to the scores it penalises distant keys linearly, more
    steeply for heads with a larger slope. Under a causal mask only ``j <= i + offset`` counts
    and the bias is exactly Press et al.'s ``m_h · (j - i)``; without one (an encoder) the
    distance is symmetric. Pass it as a float ``attn_mask`` (``bias[None]`` broadcasts over the
    batch); combine it with the causal mask of :func:`~course_utils.attention.causal_mask`.

    >>> alibi_bias(2, 1, 4, offset=3)[:, 0]                     # one new query after 3 cached
    tensor([[-0.1875, -0.1250, -0.0625,  0.0000],
            [-0.0117, -0.0078, -0.0039,  0.0000]])
    """
    lk = lq if lk is None else lk
    check_sizes(0, lq=lq, lk=lk, offset=offset)
    check_dtype("dtype", dtype)
    i = torch.arange(offset, offset + lq, device=device, dtype=torch.float64)[:, None]  # (Lq, 1)
    j = torch.arange(lk, device=device, dtype=torch.float64)  # (Lk,)
    slopes = alibi_slopes(num_heads).to(device=device, dtype=torch.float64)[:, None, None]
    distance = (i - j).abs()  # (Lq, Lk): how far key j is from query i
    return (0.0 - slopes * distance).to(dtype)  # (H, Lq, Lk); 0 - 0 is +0, not -0
