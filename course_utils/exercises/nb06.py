"""Exercises of notebook 06 (transformer blocks): a causal mask and a pre-LN encoder block.

The checkers recognise the typical mistakes: a causal mask that is inverted, that excludes the
diagonal (off by one: a token may not see itself), that looks at the future; a block with its
LayerNorm in the wrong place (post-LN instead of pre-LN, the residual taken after the norm), a
missing residual connection, the two norms swapped.

>>> from course_utils.exercises import check
>>> check("06.1", _solution_causal_mask)
✅ Correct! Query i may attend to keys 0..i (True = may attend).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from course_utils.exercises import CheckResult, exercise, fail, ok

__all__ = ["check_causal_mask", "check_pre_ln_block"]


# --------------------------------------------------------------------------------------------
# 06.1 causal mask
# --------------------------------------------------------------------------------------------


def _solution_causal_mask(size: int) -> torch.Tensor:
    """(T, T) bool, True = may attend: query i sees keys j <= i (itself and the past)."""
    return torch.ones(size, size, dtype=torch.bool).tril()  # lower triangle, diagonal included


@exercise(
    "06.1",
    title="A causal mask (True = may attend)",
    hint="torch.ones(T, T, dtype=torch.bool).tril(): the lower triangle WITH the diagonal "
    "(a token may see itself). Row = query, column = key.",
    solution=_solution_causal_mask,
)
def check_causal_mask(fn) -> CheckResult:
    t = 5
    out = fn(t)
    want = _solution_causal_mask(t)
    if not isinstance(out, torch.Tensor):
        return fail("type", f"your function must return a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != (t, t):
        return fail("shape", f"expected (T, T) = {(t, t)} for T = {t}, got {tuple(out.shape)}")
    if out.dtype != torch.bool:
        if out.is_floating_point() and torch.equal(out, torch.zeros(t, t).masked_fill(~want, float("-inf"))):
            return fail("dtype", "this is the right ADDITIVE float mask (0 / -inf); this exercise "
                        "asks for the boolean one, True = may attend")
        return fail("dtype", f"expected a bool mask (True = may attend), got dtype {out.dtype}")
    if torch.equal(out, want):
        return ok("Correct! Query i may attend to keys 0..i (True = may attend).")
    if torch.equal(out, ~want):
        return fail("masking", "your mask is inverted (True above the diagonal): that is "
                    "nn.Transformer's convention (True = NOT allowed); the course's bool masks "
                    "mean True = may attend")
    if torch.equal(out, want.tril(-1)):
        return fail("masking", "off by one: you excluded the diagonal (tril(-1)), so a token cannot "
                    "attend to itself and the first query attends to nothing at all")
    if torch.equal(out, want.T):
        return fail("masking", "you built the upper triangle (triu): query i attends to keys "
                    "j >= i, i.e. to the FUTURE. Rows are queries, columns are keys: use tril")
    return fail("masking", f"wrong mask; expected\n{want.int()}\ngot\n{out.int()}")


# --------------------------------------------------------------------------------------------
# 06.2 pre-LN encoder block
# --------------------------------------------------------------------------------------------

Sublayer = Callable[[torch.Tensor], torch.Tensor]


def _solution_pre_ln_block(
    x: torch.Tensor, self_attn: Sublayer, feed_forward: Sublayer,
    norm1: Sublayer, norm2: Sublayer,
) -> torch.Tensor:
    """Pre-LN (Xiong et al. 2020): normalise INSIDE each residual branch, x + f(norm(x))."""
    x = x + self_attn(norm1(x))  # the residual path carries x itself, un-normalised
    x = x + feed_forward(norm2(x))
    return x


def _block_variants(x, sa, ff, n1, n2) -> list[tuple[torch.Tensor, str]]:
    post = n1(x + sa(x))
    post = n2(post + ff(post))
    h = n1(x)
    h = h + sa(h)
    h2 = n2(h)
    after_norm_residual = h2 + ff(h2)
    no_res = ff(n2(sa(n1(x))))
    y = x + sa(n2(x))
    swapped = y + ff(n1(y))
    y = x + ff(n1(x))
    order = y + sa(n2(y))
    return [
        (post, "this is post-LN (the 2017 paper): norm(x + f(x)). Pre-LN normalises inside the "
               "branch: x + f(norm(x))"),
        (after_norm_residual, "LayerNorm in the wrong place: you normalised x and then added the "
                              "residual to the NORMALISED x. Pre-LN keeps the raw x on the residual "
                              "path: x + f(norm(x))"),
        (no_res, "the residual connections are missing: each sub-layer's output must be ADDED to "
                 "its input (x + ...)"),
        (swapped, "norm1 and norm2 are swapped: norm1 belongs to the attention, norm2 to the "
                  "feed-forward network"),
        (order, "the sub-layers are in the wrong order: attention first, then the feed-forward "
                "network"),
    ]


@exercise(
    "06.2",
    title="A pre-LN encoder block",
    hint="Two residual steps: x = x + self_attn(norm1(x)); then x = x + feed_forward(norm2(x)). "
    "No LayerNorm on the residual path itself.",
    solution=_solution_pre_ln_block,
)
def check_pre_ln_block(fn) -> CheckResult:
    from course_utils.transformer import TransformerEncoderLayer

    torch.manual_seed(6)
    layer = TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, norm_first=True).double()
    with torch.no_grad():  # non-trivial LayerNorm parameters, so a norm in the wrong place shows
        for norm in (layer.norm1, layer.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 5, 16, dtype=torch.float64) * 3 + 1

    def sa(y):
        return layer.self_attn(y)[0]

    def ff(y):
        return layer.linear2(F.relu(layer.linear1(y)))

    with torch.no_grad():
        out = fn(x.clone(), sa, ff, layer.norm1, layer.norm2)
        want = layer(x)
        if not isinstance(out, torch.Tensor):
            return fail("type", f"your function must return a torch.Tensor, got {type(out).__name__}")
        if tuple(out.shape) != tuple(want.shape):
            return fail("shape", f"expected (B, T, E) = {tuple(want.shape)}, got {tuple(out.shape)}")
        if torch.allclose(out, want, atol=1e-10):
            return ok("Correct! Equal to course_utils' TransformerEncoderLayer(norm_first=True).")
        for variant, message in _block_variants(x, sa, ff, layer.norm1, layer.norm2):
            if torch.allclose(out, variant, atol=1e-10):
                return fail("values", message)
    return fail("values", "the shape is right but the values differ from a pre-LN block")
