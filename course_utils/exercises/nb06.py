"""Exercises of notebook 06 (transformer blocks).

* ``06.1`` (debug) — the causal mask of a decoder that processes the last ``lq`` tokens of a
  sequence of ``lk`` (decoding with a cache): ``fn(lq, lk) -> (lq, lk)`` bool, True = may attend.
  The broken version is aligned top-left.
* ``06.2`` (extend) — a post-LN block with up-weighted residuals (DeepNorm, Wang et al. 2022):
  ``fn(x, self_attn, feed_forward, norm1, norm2, alpha) -> (B, T, E)``. The checker recognises a
  missing residual (either one, or both), the scale on the wrong side, plain post-LN and pre-LN.
* ``06.3`` (derive) — the backward pass of LayerNorm with respect to its input,
  ``fn(x (..., E), gamma (E,), grad_out (..., E), eps) -> grad_x``, without autograd.

>>> from course_utils.exercises import check, solution_answer
>>> all(check(i, *solution_answer(i)).passed for i in ("06.1", "06.2", "06.3"))
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import CheckResult, Mistake, exercise, fail, ok
from .nb01 import _as_tensor, _diagnose, _first_difference, _run_without_autograd, _same

__all__ = ["check_decoder_mask", "check_deepnorm_block", "check_layer_norm_backward"]


# --------------------------------------------------------------------------------------------
# 06.1 debug: a causal mask for the newest lq tokens of lk
# --------------------------------------------------------------------------------------------


def _solution_decoder_mask(lq: int, lk: int) -> torch.Tensor:
    """(lq, lk) bool, True = may attend: query i is the token at position lk - lq + i."""
    newest_first_position = lk - lq  # the queries are the LAST lq of the lk tokens
    return torch.ones(lq, lk, dtype=torch.bool).tril(diagonal=newest_first_position)  # key j <= lk - lq + i


_CASES = [(3, 7), (1, 5), (4, 4), (2, 3)]


def _mask_variant(shift: int | None = 0, invert: bool = False, upper: bool = False):
    def fn(lq, lk):
        d = 0 if shift is None else lk - lq + shift
        m = torch.ones(lq, lk, dtype=torch.bool)
        m = m.triu(d) if upper else m.tril(d)
        return ~m if invert else m
    return fn


@exercise(
    "06.1",
    title="The causal mask of a decoder that reads its newest tokens after a cache",
    hint="Write the absolute position of query i when the queries are the last lq of the lk tokens; "
    "which keys may that token see? Look up tril's diagonal argument.",
    solution=_solution_decoder_mask,
    kind="debug",
    minutes=10,
    difficulty=1,
    mistakes=[
        Mistake("the broken code, unchanged (top-left)", (_mask_variant(shift=None),), "only key 0"),
        Mistake("shifted by one: sees the next token", (_mask_variant(shift=1),), "shifted by one"),
        Mistake("excludes the diagonal", (_mask_variant(shift=-1),), "cannot see itself"),
        Mistake("inverted", (_mask_variant(invert=True),), "inverted"),
        Mistake("upper triangle", (_mask_variant(upper=True),), "upper triangle"),
    ],
)
def check_decoder_mask(fn: Callable[..., Any]) -> CheckResult:
    results = []
    for lq, lk in _CASES:
        got = fn(lq, lk)
        r = _as_tensor(got, f"fn({lq}, {lk})")
        if isinstance(r, CheckResult):
            return r
        if got.shape != (lq, lk):
            return fail("shape", f"fn({lq}, {lk}) must be (lq, lk) = {(lq, lk)}, got {tuple(got.shape)}")
        if got.dtype != torch.bool:
            return fail("dtype", f"a bool mask (True = may attend), got {got.dtype}")
        results.append(got)
    wants = [_solution_decoder_mask(lq, lk) for lq, lk in _CASES]
    if all(torch.equal(g, w) for g, w in zip(results, wants, strict=False)):
        return ok("Correct! The last row is always all True (the newest token sees everything), and for "
                  "lq = lk it is the ordinary causal mask.")
    for variant, message in [
        (_mask_variant(shift=None), "for lq = 1 and lk = 5 (one new token after a cache of 4 tokens) "
                                    "your mask lets the new token see only key 0; it should see keys 0 "
                                    "to 4, the cached tokens and itself"),
        (_mask_variant(shift=1), "shifted by one: each query also sees the NEXT token. A model trained "
                                 "with this mask can copy the answer from the future; its loss looks "
                                 "great and its generation fails"),
        (_mask_variant(shift=-1), "the diagonal is excluded: a token cannot see itself, and the first "
                                  "query of a fresh sequence sees nothing at all"),
        (_mask_variant(invert=True), "your mask is inverted (True where attention is forbidden): that is "
                                     "nn.Transformer's convention; the course's bool masks mean True = "
                                     "may attend"),
        (_mask_variant(upper=True), "you built the upper triangle: queries see the future and not the "
                                    "past. Rows are queries, columns are keys: tril"),
    ]:
        if all(torch.equal(g, variant(lq, lk)) for g, (lq, lk) in zip(results, _CASES, strict=False)):
            return fail("masking", message)
    (lq, lk), g, w = next((c, g, w) for c, g, w in zip(_CASES, results, wants, strict=False) if not torch.equal(g, w))
    i, j = (g != w).nonzero()[0].tolist()
    return fail("masking", f"for lq = {lq}, lk = {lk}: query {i} (position {lk - lq + i}) and key {j}: "
                f"got {bool(g[i, j])}, expected {bool(w[i, j])}; expected\n{w.int()}")


# --------------------------------------------------------------------------------------------
# 06.2 extend: DeepNorm, a post-LN block with up-weighted residuals
# --------------------------------------------------------------------------------------------

Sublayer = Callable[[torch.Tensor], torch.Tensor]


def _solution_deepnorm_block(x: torch.Tensor, self_attn: Sublayer, feed_forward: Sublayer,
                             norm1: Sublayer, norm2: Sublayer, alpha: float) -> torch.Tensor:
    """Post-LN with the residual multiplied by alpha: LN(alpha·x + f(x)), for both sub-layers."""
    h = norm1(alpha * x + self_attn(x))  # the residual path carries alpha·x into the norm
    return norm2(alpha * h + feed_forward(h))


def _deep_variant(kind: str):
    def fn(x, sa, ff, n1, n2, a):
        if kind == "branch":
            h = n1(x + a * sa(x))
            return n2(h + a * ff(h))
        if kind == "post-LN":
            h = n1(x + sa(x))
            return n2(h + ff(h))
        if kind == "pre-LN":
            h = a * x + sa(n1(x))
            return a * h + ff(n2(h))
        if kind == "no attention residual":
            h = n1(sa(x))
            return n2(a * h + ff(h))
        if kind == "no FFN residual":
            h = n1(a * x + sa(x))
            return n2(ff(h))
        if kind == "no residuals":
            return n2(ff(n1(sa(x))))
        if kind == "alpha once":
            h = n1(a * x + sa(x))
            return n2(h + ff(h))
        raise ValueError(kind)
    return fn


_DEEP_MESSAGES = {
    "branch": "you scaled the sub-layer's output; DeepNorm scales the residual: LN(α·x + f(x)), "
              "not LN(x + α·f(x))",
    "post-LN": "this is plain post-LN: the residual x must be multiplied by alpha, LN(α·x + f(x))",
    "pre-LN": "this normalises inside the branch (pre-LN); DeepNorm is post-LN: the LayerNorm comes "
              "after the sum, LN(α·x + f(x))",
    "no attention residual": "the attention sub-layer's residual is missing: norm1(α·x + self_attn(x)), "
                             "not norm1(self_attn(x))",
    "no FFN residual": "the feed-forward sub-layer's residual is missing: norm2(α·h + feed_forward(h)), "
                       "not norm2(feed_forward(h))",
    "no residuals": "both residual connections are missing: each sub-layer's input, times alpha, must "
                    "be added to its output before the norm",
    "alpha once": "alpha is applied to the first residual only; both sub-layers use LN(α·x + f(x))",
}


@exercise(
    "06.2",
    title="DeepNorm: post-LN with up-weighted residuals",
    hint="Both sub-layers: h = norm1(alpha * x + self_attn(x)), then norm2(alpha * h + "
    "feed_forward(h)). The scale multiplies the residual (the input), not the sub-layer's output, "
    "and the norm comes after the sum.",
    solution=_solution_deepnorm_block,
    kind="extend",
    minutes=15,
    difficulty=2,
    mistakes=[Mistake(kind, (_deep_variant(kind),), says) for kind, says in (
        ("branch", "scales the residual"), ("post-LN", "plain post-LN"), ("pre-LN", "(pre-LN)"),
        ("no attention residual", "attention sub-layer's residual is missing"),
        ("no FFN residual", "feed-forward sub-layer's residual is missing"),
        ("no residuals", "both residual connections are missing"),
        ("alpha once", "first residual only"))],
)
def check_deepnorm_block(fn: Callable[..., Any]) -> CheckResult:
    torch.manual_seed(62)
    e = 16
    mha = nn.MultiheadAttention(e, 4, batch_first=True).double()
    ffn = nn.Sequential(nn.Linear(e, 32), nn.ReLU(), nn.Linear(32, e)).double()
    norm1, norm2 = nn.LayerNorm(e).double(), nn.LayerNorm(e).double()
    with torch.no_grad():  # non-trivial LayerNorm parameters, so a norm in the wrong place shows
        for norm in (norm1, norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 5, e, dtype=torch.float64) * 3 + 1
    alpha = (2 * 6) ** 0.25  # DeepNorm's alpha for a 6-layer encoder

    def self_attn(y):
        return mha(y, y, y, need_weights=False)[0]

    with torch.no_grad():
        got = fn(x.clone(), self_attn, ffn, norm1, norm2, alpha)
        r = _as_tensor(got, "the block's output")
        if isinstance(r, CheckResult):
            return r
        want = _solution_deepnorm_block(x, self_attn, ffn, norm1, norm2, alpha)
        if got.shape != want.shape:
            return fail("shape", f"the block keeps the shape (B, T, E) = {tuple(want.shape)}; got "
                        f"{tuple(got.shape)}")
        if _same(got, want, 1e-10):
            return ok("Correct! With alpha = 1 this is the post-LN block of section 2; alpha > 1 makes "
                      "the residual path outweigh the sub-layers' updates.")
        found = _diagnose(got, [("values", _deep_variant(kind)(x, self_attn, ffn, norm1, norm2, alpha), message)
                                for kind, message in _DEEP_MESSAGES.items()], atol=1e-10)
        if found is not None:
            return found
    return fail("values", f"the output differs from norm2(α·h + FFN(h)), h = norm1(α·x + Attn(x)) "
                f"{_first_difference(got, want, 'b, t, feature', 1e-10)}")


# --------------------------------------------------------------------------------------------
# 06.3 derive: the backward pass of LayerNorm
# --------------------------------------------------------------------------------------------


def _solution_layer_norm_backward(x: torch.Tensor, gamma: torch.Tensor, grad_out: torch.Tensor,
                                  eps: float = 1e-5) -> torch.Tensor:
    """∂loss/∂x for y = γ ⊙ x̂ + β, x̂ = (x - μ)/σ, σ = √(var + ε), over the last axis.

    With g = γ ⊙ ∂loss/∂y: ∂loss/∂x = (g - mean(g) - x̂ ⊙ mean(g ⊙ x̂)) / σ. The mean(g) term comes
    from μ depending on x, the x̂ term from σ depending on x.
    """
    mu = x.mean(dim=-1, keepdim=True)
    sigma = torch.sqrt(((x - mu) ** 2).mean(dim=-1, keepdim=True) + eps)  # biased variance, as LayerNorm
    x_hat = (x - mu) / sigma
    g = gamma * grad_out  # the gradient with respect to x_hat
    return (g - g.mean(dim=-1, keepdim=True) - x_hat * (g * x_hat).mean(dim=-1, keepdim=True)) / sigma


def _ln_variant(mean_term: bool = True, xhat_term: bool = True, use_gamma: bool = True,
                unbiased: bool = False, xhat_sign: float = -1.0):
    def fn(x, gamma, grad_out, eps=1e-5):
        mu = x.mean(-1, keepdim=True)
        sigma = torch.sqrt(x.var(-1, unbiased=unbiased, keepdim=True) + eps)
        x_hat = (x - mu) / sigma
        g = gamma * grad_out if use_gamma else grad_out
        out = g
        if mean_term:
            out = out - g.mean(-1, keepdim=True)
        if xhat_term:
            out = out + xhat_sign * x_hat * (g * x_hat).mean(-1, keepdim=True)
        return out / sigma
    return fn


@exercise(
    "06.3",
    title="Derive the backward pass of LayerNorm",
    hint="With g = γ ⊙ ∂L/∂y, the gradient with respect to x̂. Then x̂_j = (x_j - μ)/σ depends on x_i "
    "three ways: directly (δ_ij/σ), through μ (-1/(Eσ)) and through σ (-x̂_i x̂_j/(Eσ)). Sum "
    "g_j times these over j.",
    solution=_solution_layer_norm_backward,
    kind="derive",
    minutes=25,
    difficulty=3,
    mistakes=[
        Mistake("mean and std treated as constants", (_ln_variant(mean_term=False, xhat_term=False),),
                "treated the mean and the standard deviation as constants"),
        Mistake("forgets that σ depends on x", (_ln_variant(xhat_term=False),), "σ depends on x too"),
        Mistake("forgets that μ depends on x", (_ln_variant(mean_term=False),), "μ depends on x too"),
        Mistake("forgets γ", (_ln_variant(use_gamma=False),), "γ"),
        Mistake("unbiased variance", (_ln_variant(unbiased=True),), "biased variance"),
        Mistake("sign of the σ term", (_ln_variant(xhat_sign=1.0),), "sign"),
    ],
)
def check_layer_norm_backward(fn: Callable[..., Any]) -> CheckResult:
    g = torch.Generator().manual_seed(63)
    e, eps = 8, 1e-5
    x = torch.randn(2, 3, e, generator=g, dtype=torch.float64) * torch.tensor([[[0.5]], [[3.0]]],
                                                                                dtype=torch.float64) + 1
    gamma = torch.rand(e, generator=g, dtype=torch.float64) + 0.5
    beta = torch.randn(e, generator=g, dtype=torch.float64)
    grad_out = torch.randn(2, 3, e, generator=g, dtype=torch.float64)
    got = _run_without_autograd(fn, x.clone(), gamma.clone(), grad_out.clone(), eps)
    r = _as_tensor(got, "grad_x")
    if isinstance(r, CheckResult):
        return r
    xr = x.clone().requires_grad_(True)
    (F.layer_norm(xr, (e,), gamma, beta, eps) * grad_out).sum().backward()
    want = xr.grad
    if got.shape != want.shape:
        return fail("shape", f"grad_x has the shape of x, {tuple(want.shape)}; got {tuple(got.shape)}")
    if _same(got, want, 1e-9):
        return ok("Correct! Each row of grad_x sums to 0 and is orthogonal to x̂: LayerNorm's gradient "
                  "cannot change a token's mean or scale, and it is divided by σ, the token's own "
                  "standard deviation.")
    args = (x, gamma, grad_out, eps)
    found = _diagnose(got, [
        ("values", _ln_variant(mean_term=False, xhat_term=False)(*args),
         "you treated the mean and the standard deviation as constants (γ g/σ): both depend on x"),
        ("values", _ln_variant(xhat_term=False)(*args),
         "the term from σ is missing: σ depends on x too, which subtracts x̂ ⊙ mean(g ⊙ x̂)"),
        ("values", _ln_variant(mean_term=False)(*args),
         "the term from μ is missing: μ depends on x too, which subtracts mean(g)"),
        ("values", _ln_variant(use_gamma=False)(*args),
         "γ is missing: y = γ ⊙ x̂ + β, so the gradient reaching x̂ is γ ⊙ ∂L/∂y"),
        ("values", _ln_variant(unbiased=True)(*args),
         "LayerNorm uses the biased variance (divide by E, not E - 1)"),
        ("values", _ln_variant(xhat_sign=1.0)(*args),
         "the sign of the x̂ ⊙ mean(g ⊙ x̂) term is flipped: it is subtracted"),
    ], atol=1e-9)
    if found is not None:
        return found
    return fail("values", f"grad_x differs from autograd's {_first_difference(got, want, 'b, t, feature', 1e-9)}")
