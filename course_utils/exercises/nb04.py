"""Exercises of notebook 04 (multi-head attention): split heads, merge heads, the whole layer.

Each checker calls the learner's function on small random inputs, compares it with the worked
solution and, when it differs, recognises the typical mistakes (a reshape without a transpose,
heads made of strided instead of contiguous features, the wrong scale, a missing output
projection) and says which one it is.

>>> from course_utils.exercises import check
>>> check("04.1", _solution_split_heads)
✅ Correct! Each head is a contiguous slice of the features, and heads come before time.
"""

from __future__ import annotations

import math

import torch

from course_utils.exercises import CheckResult, exercise, fail, ok

__all__ = ["check_merge_heads", "check_multi_head_attention", "check_split_heads"]


def _close(a: object, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return (
        isinstance(a, torch.Tensor)
        and tuple(a.shape) == tuple(b.shape)
        and torch.allclose(a.double(), b.double(), atol=atol)
    )


def _not_a_tensor(out: object) -> CheckResult | None:
    if not isinstance(out, torch.Tensor):
        return fail("type", f"your function must return a torch.Tensor, got {type(out).__name__}")
    return None


# --------------------------------------------------------------------------------------------
# 04.1 split_heads
# --------------------------------------------------------------------------------------------


def _solution_split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, E) -> (B, H, T, D) with D = E // H: head h gets features h*D:(h+1)*D."""
    b, t, e = x.shape
    d = e // num_heads
    x = x.reshape(b, t, num_heads, d)  # (B, T, H, D): cut the features into H slices
    return x.transpose(1, 2)  # (B, H, T, D): heads become a batch dimension


@exercise(
    "04.1",
    title="Split the embedding into heads",
    hint="First x.reshape(B, T, H, D) (cut the features), then .transpose(1, 2) (move the "
    "heads before time). A single reshape to (B, H, T, D) is not the same thing.",
    solution=_solution_split_heads,
)
def check_split_heads(fn) -> CheckResult:
    b, t, h, d = 2, 5, 3, 4
    x = torch.randn(b, t, h * d, generator=torch.Generator().manual_seed(4))
    out = fn(x.clone(), h)
    if (bad := _not_a_tensor(out)) is not None:
        return bad
    want = _solution_split_heads(x, h)
    if tuple(out.shape) == (b, t, h, d):
        return fail("shape", f"got shape {tuple(out.shape)} = (B, T, H, D): you cut the features "
                    "but forgot to move the heads before time; expected (B, H, T, D) = "
                    f"{tuple(want.shape)}")
    if tuple(out.shape) != tuple(want.shape):
        return fail("shape", f"expected (B, H, T, D) = {tuple(want.shape)} for x of shape "
                    f"{tuple(x.shape)} and H = {h}, got {tuple(out.shape)}")
    if torch.equal(out, x.reshape(b, h, t, d)):
        return fail("values", "the shape is right but you reshaped (B, T, E) straight to (B, H, T, D) "
                    "without a transpose: each 'head' now holds pieces of several time steps, so "
                    "tokens get mixed up")
    if torch.equal(out, x.reshape(b, t, d, h).permute(0, 3, 1, 2)):
        return fail("values", "your heads take every H-th feature (strided) instead of a "
                    "contiguous slice of D features; nn.MultiheadAttention and its weights use "
                    "contiguous slices (head h = features h*D:(h+1)*D)")
    if not _close(out, want):
        return fail("values", "the shape is right but the values differ from the expected split")
    return ok("Correct! Each head is a contiguous slice of the features, and heads come before time.")


# --------------------------------------------------------------------------------------------
# 04.2 merge_heads
# --------------------------------------------------------------------------------------------


def _solution_merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H*D): the inverse of split_heads."""
    b, h, t, d = x.shape
    x = x.transpose(1, 2)  # (B, T, H, D): time back in front of the heads
    return x.reshape(b, t, h * d)  # (B, T, E): concatenate the heads' features


@exercise(
    "04.2",
    title="Merge the heads back (concatenate)",
    hint="Undo split_heads in reverse order: .transpose(1, 2) to get (B, T, H, D), then "
    ".reshape(B, T, H * D). (reshape copies when needed; .view would fail after a transpose.)",
    solution=_solution_merge_heads,
)
def check_merge_heads(fn) -> CheckResult:
    b, h, t, d = 2, 3, 5, 4
    x = torch.randn(b, h, t, d, generator=torch.Generator().manual_seed(42))
    out = fn(x.clone())
    if (bad := _not_a_tensor(out)) is not None:
        return bad
    want = _solution_merge_heads(x)
    if tuple(out.shape) == (b, h * t, d):
        return fail("shape", f"got shape {tuple(out.shape)} = (B, H*T, D): you stacked the heads "
                    f"along time; expected (B, T, H*D) = {tuple(want.shape)}")
    if tuple(out.shape) != tuple(want.shape):
        return fail("shape", f"expected (B, T, H*D) = {tuple(want.shape)} for x of shape "
                    f"{tuple(x.shape)}, got {tuple(out.shape)}")
    if torch.equal(out, x.reshape(b, t, h * d)):
        return fail("values", "the shape is right but you reshaped (B, H, T, D) straight to "
                    "(B, T, H*D) without transposing first: the output row of token t now holds "
                    "features of other tokens")
    if torch.equal(out, x.permute(0, 2, 3, 1).reshape(b, t, h * d)):
        return fail("values", "your features are interleaved across heads (order D, H instead of "
                    "H, D): concatenation puts head 0's D features first, then head 1's, ...")
    if not _close(out, want):
        return fail("values", "the shape is right but the values differ from concatenating the heads")
    if not torch.equal(_solution_split_heads(out, h), x):
        return fail("values", "merge_heads(split_heads(x)) does not give x back")
    return ok("Correct! merge_heads undoes split_heads.")


# --------------------------------------------------------------------------------------------
# 04.3 the whole multi-head attention (no biases)
# --------------------------------------------------------------------------------------------


def _solution_multi_head_attention(
    x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor, w_o: torch.Tensor,
    num_heads: int,
) -> torch.Tensor:
    """Multi-head self-attention of x (B, T, E) with (E, E) weights used as x @ W.T (nn.Linear)."""
    b, t, e = x.shape
    d = e // num_heads

    def split(y: torch.Tensor) -> torch.Tensor:  # (B, T, E) -> (B, H, T, D)
        return y.reshape(b, t, num_heads, d).transpose(1, 2)

    q, k, v = split(x @ w_q.T), split(x @ w_k.T), split(x @ w_v.T)  # (B, H, T, D) each
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, H, T, T): scale by the HEAD dim
    weights = scores.softmax(dim=-1)  # each query's row sums to 1
    heads = weights @ v  # (B, H, T, D)
    merged = heads.transpose(1, 2).reshape(b, t, e)  # (B, T, E)
    return merged @ w_o.T  # the output projection mixes the heads


def _mha_variant(x, w_q, w_k, w_v, w_o, h, scale_dim=None, softmax_dim=-1, out_proj=True,
                 transpose_w=True):
    b, t, e = x.shape
    d = e // h
    if not transpose_w:
        w_q, w_k, w_v, w_o = w_q.T, w_k.T, w_v.T, w_o.T

    def split(y):
        return y.reshape(b, t, h, d).transpose(1, 2)

    q, k, v = split(x @ w_q.T), split(x @ w_k.T), split(x @ w_v.T)
    scores = q @ k.transpose(-2, -1)
    if scale_dim is not None:
        scores = scores / math.sqrt(scale_dim)
    heads = scores.softmax(dim=softmax_dim) @ v
    merged = heads.transpose(1, 2).reshape(b, t, e)
    return merged @ w_o.T if out_proj else merged


@exercise(
    "04.3",
    title="Multi-head self-attention from the weight matrices",
    hint="Project (x @ W.T), split into heads, softmax(q kᵀ / √D) over the keys (last axis) "
    "with D = E / H the HEAD dim, multiply by v, merge the heads, then apply W_o.",
    solution=_solution_multi_head_attention,
)
def check_multi_head_attention(fn) -> CheckResult:
    b, t, e, h = 2, 6, 16, 4
    g = torch.Generator().manual_seed(7)
    x = torch.randn(b, t, e, generator=g, dtype=torch.float64)
    ws = [torch.randn(e, e, generator=g, dtype=torch.float64) / math.sqrt(e) for _ in range(4)]
    out = fn(x.clone(), *[w.clone() for w in ws], h)
    if (bad := _not_a_tensor(out)) is not None:
        return bad
    want = _solution_multi_head_attention(x, *ws, h)
    if tuple(out.shape) != tuple(want.shape):
        return fail("shape", f"expected (B, T, E) = {tuple(want.shape)}, got {tuple(out.shape)}")
    if _close(out, want):
        # and against the reference layer, with the same weights copied in
        from course_utils.attention import MultiHeadAttention

        ref = MultiHeadAttention(e, h, bias=False).double()
        with torch.no_grad():
            for lin, w in zip((ref.q_proj, ref.k_proj, ref.v_proj, ref.out_proj), ws, strict=True):
                lin.weight.copy_(w)
        if not _close(out, ref(x)[0]):
            return fail("values", "matches the worked solution but not MultiHeadAttention (report this)")
        return ok("Correct! Equal to course_utils.attention.MultiHeadAttention with the same weights.")
    diagnoses = [
        (dict(scale_dim=e), "you scaled by √E (the model dim); each head's scores must be "
                            "scaled by √D, the HEAD dim (E / H)"),
        (dict(scale_dim=None), "you forgot to scale the scores by 1/√D"),
        (dict(scale_dim=e // h, softmax_dim=-2), "softmax over the wrong axis: over the queries "
                                                  "(dim -2) instead of the keys (dim -1)"),
        (dict(scale_dim=e // h, out_proj=False), "you forgot the output projection W_o after "
                                                 "merging the heads"),
        (dict(scale_dim=e // h, transpose_w=False), "you multiplied by W instead of W.T: the weights "
                                                    "are stored as nn.Linear stores them, (out, in), "
                                                    "so a projection is x @ W.T"),
    ]
    for kwargs, message in diagnoses:
        if _close(out, _mha_variant(x, *ws, h, **kwargs)):
            return fail("values", message)
    return fail("values", "the shape is right but the values differ; test split/merge with "
                "check('04.1', ...) and check('04.2', ...) first")
