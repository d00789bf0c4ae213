"""The exercise checkers of notebooks 04-06: each passes its own solution and names the mistake
in at least two typical wrong answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course_utils.exercises import check, exercises, solution, solution_function

IDS = ["04.1", "04.2", "04.3", "05.1", "05.2", "06.1", "06.2"]


def _fails_with(result, *fragments: str) -> None:
    assert not result.passed, f"a wrong answer passed: {result!r}"
    for fragment in fragments:
        assert fragment in result.message, f"expected {fragment!r} in {result.message!r}"
    assert result.hint, "a failed check must carry a hint"


@pytest.mark.parametrize("exercise_id", IDS)
def test_solution_passes(exercise_id):
    result = check(exercise_id, solution_function(exercise_id))
    assert result.passed, repr(result)
    assert repr(result).startswith("✅")


@pytest.mark.parametrize("exercise_id", IDS)
def test_registered_with_solution_source(exercise_id):
    assert exercise_id in exercises()
    assert "def " in solution(exercise_id, show=False)


@pytest.mark.parametrize("exercise_id", IDS)
def test_stub_reads_as_not_attempted(exercise_id):
    def stub(*args, **kwargs):
        raise NotImplementedError

    result = check(exercise_id, stub)
    assert not result.passed and result.kind == "not attempted"


def test_crash_is_reported_not_raised():
    result = check("04.1", lambda x, h: x.reshape(7, 7))
    assert result.kind == "error" and "RuntimeError" in result.message


# ---------------------------------------------------------------- 04.1 split_heads


def test_split_heads_without_transpose():
    def wrong(x, h):
        b, t, e = x.shape
        return x.reshape(b, h, t, e // h)

    _fails_with(check("04.1", wrong), "without a transpose")


def test_split_heads_forgot_to_move_heads():
    def wrong(x, h):
        b, t, e = x.shape
        return x.reshape(b, t, h, e // h)

    _fails_with(check("04.1", wrong), "(B, T, H, D)", "forgot to move the heads")


def test_split_heads_strided():
    def wrong(x, h):
        b, t, e = x.shape
        return x.reshape(b, t, e // h, h).permute(0, 3, 1, 2)

    _fails_with(check("04.1", wrong), "strided")


# ---------------------------------------------------------------- 04.2 merge_heads


def test_merge_heads_without_transpose():
    def wrong(x):
        b, h, t, d = x.shape
        return x.reshape(b, t, h * d)

    _fails_with(check("04.2", wrong), "without transposing")


def test_merge_heads_stacked_along_time():
    def wrong(x):
        b, h, t, d = x.shape
        return x.reshape(b, h * t, d)

    _fails_with(check("04.2", wrong), "(B, H*T, D)")


def test_merge_heads_interleaved():
    def wrong(x):
        b, h, t, d = x.shape
        return x.permute(0, 2, 3, 1).reshape(b, t, h * d)

    _fails_with(check("04.2", wrong), "interleaved")


# ---------------------------------------------------------------- 04.3 multi-head attention


def _mha(scale_by_model_dim=False, scale=True, softmax_dim=-1, out_proj=True):
    def fn(x, w_q, w_k, w_v, w_o, h):
        b, t, e = x.shape
        d = e // h
        q, k, v = (
            (x @ w.T).reshape(b, t, h, d).transpose(1, 2) for w in (w_q, w_k, w_v)
        )
        s = q @ k.transpose(-2, -1)
        if scale:
            s = s / math.sqrt(e if scale_by_model_dim else d)
        o = (s.softmax(softmax_dim) @ v).transpose(1, 2).reshape(b, t, e)
        return o @ w_o.T if out_proj else o

    return fn


def test_mha_scaled_by_model_dim():
    _fails_with(check("04.3", _mha(scale_by_model_dim=True)), "√E", "HEAD dim")


def test_mha_forgot_scale():
    _fails_with(check("04.3", _mha(scale=False)), "forgot to scale")


def test_mha_softmax_wrong_axis():
    _fails_with(check("04.3", _mha(softmax_dim=-2)), "wrong axis")


def test_mha_forgot_output_projection():
    _fails_with(check("04.3", _mha(out_proj=False)), "output projection")


def test_mha_weights_not_transposed():
    def wrong(x, w_q, w_k, w_v, w_o, h):
        return _mha()(x, w_q.T, w_k.T, w_v.T, w_o.T, h)

    _fails_with(check("04.3", wrong), "instead of W.T")


def test_mha_learner_version_equals_torch():
    """The solution also equals torch.nn.MultiheadAttention with the same (bias-free) weights."""
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(16, 4, bias=False, batch_first=True)
    x = torch.randn(2, 5, 16)
    w_q, w_k, w_v = ref.in_proj_weight.detach().split(16)
    ours = solution_function("04.3")(x, w_q, w_k, w_v, ref.out_proj.weight.detach(), 4)
    torch.testing.assert_close(ours, ref(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- 05.1 padding mask


def test_padding_mask_inverted():
    _fails_with(check("05.1", lambda lengths, n: torch.arange(n)[None] < lengths[:, None]),
                "inverted")


def test_padding_mask_off_by_one():
    _fails_with(check("05.1", lambda lengths, n: torch.arange(n)[None] > lengths[:, None]),
                "off by one", "j >= length")


def test_padding_mask_transposed():
    _fails_with(check("05.1", lambda lengths, n: torch.arange(n)[:, None] >= lengths[None]),
                "(L, B)")


def test_padding_mask_float():
    _fails_with(check("05.1", lambda lengths, n: (torch.arange(n)[None] >= lengths[:, None]).float()),
                "bool")


# ---------------------------------------------------------------- 05.2 masked cross-attention


def _cross(invert=False, on_queries=False, nan_guard=False, big_negative=False):
    def fn(q, k, v, pad):
        s = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
        m = ~pad if invert else pad
        m = m[:, :, None] if on_queries else m[:, None, :]
        s = s.masked_fill(m, -1e9 if big_negative else float("-inf"))
        w = s.softmax(-1)
        if nan_guard:
            w = torch.nan_to_num(w)
        return w @ v, w

    return fn


def test_cross_attention_nan_on_fully_padded_row():
    _fails_with(check("05.2", _cross()), "NaN", "rows that have real keys are right")


def test_cross_attention_inverted_mask():
    _fails_with(check("05.2", _cross(invert=True, nan_guard=True)), "inverted")


def test_cross_attention_mask_on_queries():
    _fails_with(check("05.2", _cross(on_queries=True, nan_guard=True)), "to the queries")


def test_cross_attention_big_negative_gives_uniform_not_zero():
    _fails_with(check("05.2", _cross(big_negative=True)), "all padding must give zero")


def test_cross_attention_solution_equals_course_sdpa():
    from course_utils.attention import padding_mask_to_attn_mask, scaled_dot_product_attention

    torch.manual_seed(1)
    q, k, v = torch.randn(2, 3, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 4)
    pad = torch.tensor([[False] * 4 + [True] * 2, [True] * 6])
    out, w = solution_function("05.2")(q, k, v, pad)
    ref_out, ref_w = scaled_dot_product_attention(
        q, k, v, padding_mask_to_attn_mask(pad)[:, 0], return_weights=True
    )
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(w, ref_w)
    assert torch.equal(out[1], torch.zeros_like(out[1]))


# ---------------------------------------------------------------- 06.1 causal mask


def test_causal_mask_inverted():
    _fails_with(check("06.1", lambda t: torch.ones(t, t, dtype=torch.bool).triu(1)), "inverted")


def test_causal_mask_diagonal_excluded():
    _fails_with(check("06.1", lambda t: torch.ones(t, t, dtype=torch.bool).tril(-1)),
                "off by one", "diagonal")


def test_causal_mask_future():
    _fails_with(check("06.1", lambda t: torch.ones(t, t, dtype=torch.bool).triu()), "FUTURE")


def test_causal_mask_float():
    def additive(t):
        return torch.zeros(t, t).masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))

    _fails_with(check("06.1", additive), "ADDITIVE")


def test_causal_mask_equals_course_and_torch():
    ours = solution_function("06.1")(6)
    from course_utils.attention import causal_mask

    assert torch.equal(ours, causal_mask(6))
    # torch's helper is additive (0 / -inf) with the opposite meaning of True
    torch_mask = torch.nn.Transformer.generate_square_subsequent_mask(6)
    assert torch.equal(ours, torch_mask == 0)


# ---------------------------------------------------------------- 06.2 pre-LN block


def test_pre_ln_block_post_ln():
    def post(x, sa, ff, n1, n2):
        x = n1(x + sa(x))
        return n2(x + ff(x))

    _fails_with(check("06.2", post), "post-LN")


def test_pre_ln_block_residual_after_norm():
    def wrong(x, sa, ff, n1, n2):
        h = n1(x)
        h = h + sa(h)
        h2 = n2(h)
        return h2 + ff(h2)

    _fails_with(check("06.2", wrong), "wrong place", "NORMALISED")


def test_pre_ln_block_no_residual():
    _fails_with(check("06.2", lambda x, sa, ff, n1, n2: ff(n2(sa(n1(x))))), "residual")


def test_pre_ln_block_norms_swapped():
    def wrong(x, sa, ff, n1, n2):
        x = x + sa(n2(x))
        return x + ff(n1(x))

    _fails_with(check("06.2", wrong), "swapped")


def test_pre_ln_block_equals_torch_layer():
    """The solution, fed the pieces of torch's own pre-LN layer, equals that layer."""
    torch.manual_seed(2)
    ref = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True,
                                           norm_first=True).eval()
    x = torch.randn(2, 5, 16)

    def sa(y):
        return ref.self_attn(y, y, y, need_weights=False)[0]

    def ff(y):
        return ref.linear2(F.relu(ref.linear1(y)))

    with torch.no_grad():
        ours = solution_function("06.2")(x, sa, ff, ref.norm1, ref.norm2)
        torch.testing.assert_close(ours, ref(x), atol=1e-5, rtol=1e-5)
