"""Positions: sinusoidal (Vaswani et al., 2017), learned (BERT, GPT-2, ViT) and rotary (RoPE).

Attention by itself is permutation-equivariant: shuffle the tokens and the outputs shuffle the
same way. It has no idea of order. Three ways to tell it where each token is:

* :class:`SinusoidalPositionalEncoding` — add a fixed pattern of sines and cosines;
* :class:`LearnedPositionalEmbedding` — add a learned vector per position;
* :class:`RotaryEmbedding` — *rotate* queries and keys by an angle proportional to their
  position (Su et al., 2021), so that ``q_m · k_n`` depends only on the offset ``m - n``.
  The layout is the "rotate half" convention of Hugging Face's LLaMA (tested equal).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "apply_rotary",
    "rotate_half",
    "sinusoidal_table",
]


def _check_positive_int(name: str, n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"{name} must be a positive int, got {n!r}")


def _check_offset(offset: object) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")


def _check_float_tensor(name: str, x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _check_input(
    x: object, d_model: int, max_len: int, offset: int = 0, table: torch.Tensor | None = None
) -> None:
    _check_float_tensor("x", x)
    _check_offset(offset)
    if table is not None and x.device != table.device:
        raise ValueError(
            f"x must be on the module's device {table.device}, got x on {x.device} "
            "(move the module with .to(device))"
        )
    if x.dim() < 2 or x.size(-1) != d_model:
        raise ValueError(f"x must have shape (..., T, d_model={d_model}), got {tuple(x.shape)}")
    if offset + x.size(-2) > max_len:
        raise ValueError(
            f"sequence too long: positions {offset}..{offset + x.size(-2) - 1} need "
            f"max_len >= {offset + x.size(-2)}, got max_len={max_len} (x {tuple(x.shape)})"
        )


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
    _check_positive_int("max_len", max_len)
    _check_positive_int("d_model", d_model)
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
        self.d_model, self.max_len = d_model, max_len
        self.register_buffer("pe", sinusoidal_table(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        _check_input(x, self.d_model, self.max_len, offset, self.pe)
        t = x.size(-2)
        return self.dropout(x + self.pe[offset : offset + t].to(x.dtype))  # (..., T, D)


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
        _check_positive_int("max_len", max_len)
        _check_positive_int("d_model", d_model)
        self.max_len, self.d_model = max_len, d_model
        self.weight = nn.Parameter(torch.randn(max_len, d_model) * 0.02)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        _check_input(x, self.d_model, self.max_len, offset, self.weight)
        return x + self.weight[offset : offset + x.size(-2)].to(x.dtype)  # (..., T, D)


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
    _check_float_tensor("x", x)
    if x.dim() < 1 or x.size(-1) % 2 != 0:
        raise ValueError(f"the last dim of x must be even, got x {tuple(x.shape)}")
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair ``(x_i, x_{i+D/2})`` by its angle: ``x·cos + rotate_half(x)·sin``.

    ``cos`` and ``sin`` (from :meth:`RotaryEmbedding.cos_sin`) broadcast to ``x (..., T, D)``.

    >>> x = torch.tensor([[1., 0.]])                   # one position, D = 2: a single pair
    >>> angle = torch.full((1, 2), torch.pi / 2)        # rotate it by 90 degrees
    >>> torch.allclose(apply_rotary(x, angle.cos(), angle.sin()), torch.tensor([[0., 1.]]), atol=1e-6)
    True
    """
    for name, t in (("x", x), ("cos", cos), ("sin", sin)):
        _check_float_tensor(name, t)
    try:
        shape = torch.broadcast_shapes(x.shape, cos.shape, sin.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"cos and sin must broadcast to x {tuple(x.shape)}, got cos {tuple(cos.shape)} and "
            f"sin {tuple(sin.shape)}"
        )
    if not x.device == cos.device == sin.device:
        raise ValueError(f"x, cos and sin must be on one device, got {x.device}, {cos.device}, {sin.device}")
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    r"""Rotary position embedding (RoPE, Su et al. 2021) for ``(..., T, head_dim)`` tensors.

    Pair ``i`` of dims (``i`` and ``i + head_dim/2``) at position ``m`` is rotated by the angle
    ``m·θ_i`` with ``θ_i = base^(-2i/head_dim)``. Because rotations compose,
    ``R(m)q · R(n)k = q · R(n-m)k``: the score depends on the positions only through
    ``m - n``. Apply it to queries and keys (not values), after splitting heads.

    * ``forward(x, positions=None)``: ``positions`` is ``(T,)`` or ``(B, T)`` (for
      ``x (B, H, T, D)`` the head axis is inserted for you); default ``0..T-1``.
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
        _check_positive_int("head_dim", head_dim)
        if head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even (dims are rotated in pairs), got {head_dim}")
        self.head_dim, self.base = head_dim, base
        # θ_i = base^(-2i/D), i = 0..D/2-1 — computed exactly as HF's LLaMA does (float32)
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (D/2,)

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions (..., T)`` -> ``cos, sin`` of shape ``(..., T, head_dim)``."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        freqs = positions[..., None].to(work) * self.inv_freq.to(work)  # (..., T, D/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (..., T, D): pair i uses dims i, i+D/2
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        _check_float_tensor("x", x)
        if x.dim() < 2 or x.size(-1) != self.head_dim:
            raise ValueError(
                f"x must have shape (..., T, head_dim={self.head_dim}), got {tuple(x.shape)}"
            )
        t = x.size(-2)
        if x.device != self.inv_freq.device:
            raise ValueError(
                f"x must be on the module's device {self.inv_freq.device}, got x on {x.device} "
                "(move the module with .to(device))"
            )
        if positions is None:
            positions = torch.arange(t, device=x.device)
        if not isinstance(positions, torch.Tensor):
            raise TypeError(f"positions must be a torch.Tensor or None, got {type(positions).__name__}")
        if positions.dtype == torch.bool or positions.is_complex():
            raise TypeError(f"positions must be an integer (or float) tensor, got dtype {positions.dtype}")
        if positions.device != x.device:
            raise ValueError(f"positions must be on the device of x {x.device}, got {positions.device}")
        if positions.dim() not in (1, 2) or positions.size(-1) != t:
            raise ValueError(
                f"positions must have shape (T,) or (B, T) with T = {t}, got "
                f"{tuple(positions.shape)}"
            )
        cos, sin = self.cos_sin(positions, dtype=x.dtype)  # (T, D) or (B, T, D)
        if positions.dim() == 2 and x.dim() == 4:  # (B, T, D) -> (B, 1, T, D) for the heads
            cos, sin = cos[:, None], sin[:, None]
        return apply_rotary(x, cos, sin)

    def rotate(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Apply RoPE with positions ``offset, offset+1, ...`` along dim -2."""
        _check_float_tensor("x", x)
        _check_offset(offset)
        if x.dim() < 2:
            raise ValueError(f"x must have shape (..., T, head_dim={self.head_dim}), got {tuple(x.shape)}")
        positions = torch.arange(offset, offset + x.size(-2), device=x.device)
        return self.forward(x, positions)
