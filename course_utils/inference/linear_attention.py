r"""Linear attention (Katharopoulos et al., 2020): attention as an RNN, constant memory per step.

Softmax attention weighs value ``v_j`` by ``exp(q_i · k_j)``. Replace that similarity by a dot
product of feature maps, ``φ(q_i) · φ(k_j)`` with ``φ(x) = elu(x) + 1 > 0``, and the sum can be
regrouped:

.. math::

   o_i = \frac{\sum_{j \le i} (\varphi(q_i)\cdot\varphi(k_j))\, v_j}{\sum_{j \le i}
          \varphi(q_i)\cdot\varphi(k_j)}
       = \frac{\varphi(q_i)^\top S_i}{\varphi(q_i)^\top z_i}, \qquad
   S_i = \sum_{j \le i} \varphi(k_j)\, v_j^\top, \quad z_i = \sum_{j \le i} \varphi(k_j).

``S_i`` (``D × Dv``) and ``z_i`` (``D``) are updated with one outer product per token: the causal
layer **is an RNN** whose state has a fixed size, however long the text. Decoding needs no KV
cache; a step costs ``O(D · Dv)`` whatever the position. The price: everything the layer knows
about the past must fit in that ``D × Dv`` state, where softmax attention keeps every key.

Three ways to compute the same causal output, tested equal:

* :func:`linear_attention` — the *parallel* form: the ``(N, N)`` matrix
  ``φ(Q) φ(K)ᵀ`` masked causally, row-normalised, times ``V`` (quadratic,
  as softmax attention);
* :func:`linear_attention_recurrent` — the RNN, one token at a time
  (:class:`LinearAttentionState`);
* :func:`linear_attention_chunked` — chunks of ``C`` tokens: quadratic inside a chunk, the state
  carried between chunks: ``O(N · C · D + N · D · Dv)`` time, linear in ``N``.

>>> q, k, v = torch.randn(3, 1, 2, 20, 8).unbind(0)              # (B, H, N, D)
>>> par = linear_attention(q, k, v)
>>> torch.allclose(par, linear_attention_recurrent(q, k, v), atol=1e-5)
True
>>> torch.allclose(par, linear_attention_chunked(q, k, v, chunk=6), atol=1e-5)
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course_utils.checks import (
    check_broadcasts,
    check_divisible,
    check_finite,
    check_float_tensor,
    check_module_input,
    check_positive_int,
    check_qkv,
    check_real,
    check_same_device,
    check_same_dtype,
    check_same_size,
    check_shape,
)

__all__ = [
    "LinearAttention",
    "LinearAttentionState",
    "feature_map",
    "linear_attention",
    "linear_attention_chunked",
    "linear_attention_recurrent",
]

EPS = 1e-6  # keeps the normaliser away from zero (the paper's implementation uses the same)


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """``φ(x) = elu(x) + 1``: positive, so the normaliser ``φ(q)·Σφ(k)`` never changes sign.

    >>> feature_map(torch.tensor([-2.0, 0.0, 1.5]))
    tensor([0.1353, 1.0000, 2.5000])
    """
    check_float_tensor("x", x)
    return F.elu(x) + 1.0


def linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, eps: float = EPS
) -> torch.Tensor:
    """The parallel form: ``(φ(Q) φ(K)ᵀ ⊙ mask) V``, each row divided by its sum (+ ``eps``).

    ``q (..., N, D)``, ``k (..., M, D)``, ``v (..., M, Dv)``; ``causal`` (``N == M``) keeps
    ``j <= i``. Quadratic in time and memory: the reference the other forms are tested against.
    """
    check_qkv(q, k, v, causal=causal)
    if causal:
        check_same_size(-2, "causal: one key per query", q=q, k=k)
    check_real("eps", eps, low=0.0)
    sim = feature_map(q) @ feature_map(k).transpose(-2, -1)  # (..., N, M): φ(q_i)·φ(k_j) > 0
    if causal:
        sim = sim.tril()  # zero similarity to the future
    return (sim @ v) / (sim.sum(-1, keepdim=True) + eps)  # (..., N, Dv)


class LinearAttentionState:
    """The recurrent state of causal linear attention: ``S (..., D, Dv)`` and ``z (..., D)``.

    ``step(q_t, k_t, v_t)`` with ``(..., D)``/``(..., Dv)`` vectors adds token ``t`` and returns its
    output. The state's size never grows: ``nbytes()`` is the same after 10 tokens or 10⁶.
    """

    def __init__(self, s: torch.Tensor, z: torch.Tensor, eps: float = EPS) -> None:
        _check_state(s, z, eps)
        self.s, self.z, self.eps = s, z, eps

    @classmethod
    def zeros(
        cls,
        lead: tuple[int, ...],
        d: int,
        dv: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        eps: float = EPS,
    ) -> LinearAttentionState:
        return cls(
            torch.zeros(*lead, d, dv, dtype=dtype, device=device),
            torch.zeros(*lead, d, dtype=dtype, device=device),
            eps,
        )

    def step(self, q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
        self._check_token(q_t, k_t, v_t)
        phi_q, phi_k = feature_map(q_t), feature_map(k_t)  # (..., D)
        self.s = self.s + phi_k[..., :, None] * v_t[..., None, :]  # S += φ(k) vᵀ: (..., D, Dv)
        self.z = self.z + phi_k  # z += φ(k): (..., D)
        num = (phi_q[..., None, :] @ self.s)[..., 0, :]  # φ(q)ᵀ S: (..., Dv)
        den = (phi_q * self.z).sum(-1, keepdim=True) + self.eps  # φ(q)ᵀ z: (..., 1)
        return num / den

    def nbytes(self) -> int:
        return self.s.numel() * self.s.element_size() + self.z.numel() * self.z.element_size()

    def _check_token(self, q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor) -> None:
        """``q_t, k_t (..., D)`` and ``v_t (..., Dv)`` for the state's ``S (..., D, Dv)``, with
        its dtype and device."""
        lead, (d, dv) = tuple(self.s.shape[:-2]), self.s.shape[-2:]
        for name, t, width in (("q_t", q_t, d), ("k_t", k_t, d), ("v_t", v_t, dv)):
            check_float_tensor(name, t)
            check_broadcasts(name, t, (*lead, width), what=f"(..., {'Dv' if name == 'v_t' else 'D'})"
                             f" of the state S (..., D, Dv) = {tuple(self.s.shape)}:")
            check_same_dtype(**{name: t, "state": self.s})
            check_same_device(**{name: t, "state": self.s})


def _check_state(s: torch.Tensor, z: torch.Tensor, eps: float) -> None:
    """``S (..., D, Dv)`` and ``z (..., D)``: finite, one dtype, one device; ``eps >= 0``."""
    check_float_tensor("s", s, min_dims=2)
    check_float_tensor("z", z)
    check_shape("z", z, s.shape[:-1], what=f"(..., D) = {tuple(s.shape[:-1])} (s is (..., D, Dv) "
                f"= {tuple(s.shape)})")
    check_same_dtype(s=s, z=z)
    check_same_device(s=s, z=z)
    check_finite("s", s)
    check_finite("z", z)
    check_real("eps", eps, low=0.0)


def linear_attention_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """Causal linear attention as an RNN, token by token: ``(..., N, D) -> (..., N, Dv)``."""
    check_qkv(q, k, v)
    check_same_size(-2, "causal: one key per query", q=q, k=k)
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    state = LinearAttentionState.zeros(lead, q.size(-1), v.size(-1), q.dtype, q.device, eps)
    return torch.stack(
        [state.step(q[..., t, :], k[..., t, :], v[..., t, :]) for t in range(q.size(-2))], dim=-2
    )


def linear_attention_chunked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int = 64, eps: float = EPS
) -> torch.Tensor:
    """Causal linear attention in chunks of ``chunk`` tokens: linear time in ``N``.

    Inside a chunk, the masked ``(C, C)`` form; across chunks, the state ``S, z`` of every earlier
    token (one matrix product per chunk). ``N`` need not be a multiple of ``chunk``.
    """
    check_qkv(q, k, v)
    check_same_size(-2, "causal: one key per query", q=q, k=k)
    check_positive_int("chunk", chunk)
    check_real("eps", eps, low=0.0)
    phi_q, phi_k = feature_map(q), feature_map(k)
    lead, d, dv = q.shape[:-2], q.size(-1), v.size(-1)
    s = q.new_zeros(*lead, d, dv)  # Σ φ(k) vᵀ over the earlier chunks
    z = q.new_zeros(*lead, 1, d)  # Σ φ(k) over the earlier chunks
    outs = []
    for c0 in range(0, q.size(-2), chunk):
        qc, kc, vc = (
            phi_q[..., c0 : c0 + chunk, :],
            phi_k[..., c0 : c0 + chunk, :],
            v[..., c0 : c0 + chunk, :],
        )
        sim = (qc @ kc.transpose(-2, -1)).tril()  # (..., C, C): within the chunk, causal
        num = qc @ s + sim @ vc  # (..., C, Dv): earlier chunks + this chunk
        den = (qc * z).sum(-1, keepdim=True) + sim.sum(-1, keepdim=True) + eps  # (..., C, 1)
        outs.append(num / den)
        s = s + kc.transpose(-2, -1) @ vc
        z = z + kc.sum(-2, keepdim=True)
    return torch.cat(outs, dim=-2)


class LinearAttention(nn.Module):
    """A multi-head causal self-attention layer with linear attention in place of the softmax.

    The same projections as the course's :class:`~course_utils.attention.MultiHeadAttention`
    (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``): ``forward(x (B, T, E)) -> (B, T, E)``.
    """

    def __init__(self, embed_dim: int, num_heads: int, chunk: int = 64) -> None:
        super().__init__()
        check_divisible("embed_dim", embed_dim, "num_heads", num_heads)
        check_positive_int("chunk", chunk)
        self.num_heads, self.chunk = num_heads, chunk
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(embed_dim, embed_dim) for _ in range(4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.q_proj.in_features
        check_module_input("x", x, self.q_proj.weight, (None, None, e), what=f"(B, T, E={e})")
        b, t, e = x.shape
        h = self.num_heads
        q, k, v = (
            p(x).view(b, t, h, e // h).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = linear_attention_chunked(q, k, v, chunk=self.chunk)  # (B, H, T, D)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, e))
