"""The checkers of notebooks 01-03: each passes its own solution and names typical mistakes."""

from __future__ import annotations

import math

import pytest
import torch

from course_utils.exercises import check, solution, solution_function

IDS = ["01.1", "01.2", "02.1", "02.2", "03.1", "03.2"]


@pytest.mark.parametrize("exercise_id", IDS)
def test_solution_passes(exercise_id):
    result = check(exercise_id, solution_function(exercise_id))
    assert result.passed, repr(result)


@pytest.mark.parametrize("exercise_id", IDS)
def test_stub_reads_not_attempted(exercise_id):
    def stub(*args):
        raise NotImplementedError

    result = check(exercise_id, stub)
    assert not result.passed and result.kind == "not attempted"
    assert result.hint  # the exercise's hint is attached


@pytest.mark.parametrize("exercise_id", IDS)
def test_solution_prints(exercise_id, capsys):
    source = solution(exercise_id)
    assert "def " in source and "return" in source
    assert f"exercise {exercise_id}" in capsys.readouterr().out


def test_crash_is_reported_not_raised():
    result = check("01.1", lambda q, k, v: q @ v)  # shapes do not match: matmul raises
    assert not result.passed and result.kind == "error" and "RuntimeError" in result.message


# ---- 01.1 scaled dot-product attention ----


def _attn(scale_fn, dim=-1, softmax=True, transpose=False):
    def fn(q, k, v):
        s = q @ k.transpose(-2, -1)
        s = scale_fn(s, q.size(-1))
        w = torch.softmax(s, dim=dim) if softmax else s
        if transpose:
            w = w.transpose(-2, -1)
            return w.transpose(-2, -1) @ v, w
        return w @ v, w

    return fn


@pytest.mark.parametrize(
    "fn, kind, text",
    [
        (_attn(lambda s, d: s), "values", "forgot to scale"),
        (_attn(lambda s, d: s / d), "values", "divided the scores by d"),
        (_attn(lambda s, d: s / math.sqrt(d), dim=-2), "values", "wrong axis"),
        (_attn(lambda s, d: s / math.sqrt(d), softmax=False), "values", "forgot the softmax"),
        (_attn(lambda s, d: s / math.sqrt(d), transpose=True), "shape", "k qᵀ instead of q kᵀ"),
    ],
)
def test_01_1_mistakes(fn, kind, text):
    result = check("01.1", fn)
    assert not result.passed and result.kind == kind and text in result.message, repr(result)


def test_01_1_output_not_weights_times_v():
    def fn(q, k, v):
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), -1)
        return w @ v + 1.0, w

    result = check("01.1", fn)
    assert result.kind == "values" and "not weights @ v" in result.message


# ---- 01.2 Nadaraya-Watson ----


def _nw(score, dim=1, normalise=True, return_weights=False):
    def fn(xq, xt, yt, sigma):
        s = score(xq[:, None] - xt[None, :], sigma)
        w = torch.softmax(s, dim=dim) if normalise else torch.exp(s)
        return w if return_weights else w @ yt

    return fn


@pytest.mark.parametrize(
    "fn, kind, text",
    [
        (_nw(lambda d, s: d**2 / (2 * s**2)), "values", "forgot the minus sign"),
        (_nw(lambda d, s: -(d**2) / (2 * s**2), dim=0), "values", "wrong axis"),
        (_nw(lambda d, s: -d.abs() / (2 * s**2)), "values", "squared distance"),
        (_nw(lambda d, s: -(d**2) / s**2), "values", "not σ²"),
        (_nw(lambda d, s: -(d**2) / (2 * s**2), normalise=False), "values", "do not sum to 1"),
        (_nw(lambda d, s: -(d**2) / (2 * s**2), return_weights=True), "shape", "attention matrix"),
    ],
)
def test_01_2_mistakes(fn, kind, text):
    result = check("01.2", fn)
    assert not result.passed and result.kind == kind and text in result.message, repr(result)


# ---- 02.1 additive scores ----


def _additive(act=torch.tanh, outer_tanh=False, softmax=False, transpose=False):
    def fn(query, keys, W_q, W_k, w_v):
        pre = (query @ W_q)[:, :, None, :] + (keys @ W_k)[:, None, :, :]
        s = torch.tanh(pre @ w_v) if outer_tanh else act(pre) @ w_v
        if softmax:
            s = torch.softmax(s, -1)
        return s.transpose(-2, -1) if transpose else s

    return fn


@pytest.mark.parametrize(
    "fn, kind, text",
    [
        (_additive(act=lambda x: x), "values", "forget the tanh"),
        (_additive(outer_tanh=True), "values", "tanh goes inside"),
        (_additive(softmax=True), "values", "returned softmax weights"),
        (_additive(act=torch.relu), "values", "ReLU"),
        (_additive(transpose=True), "shape", "(B, Lk, Lq)"),
    ],
)
def test_02_1_mistakes(fn, kind, text):
    result = check("02.1", fn)
    assert not result.passed and result.kind == kind and text in result.message, repr(result)


def test_02_1_forgot_broadcasting():
    def fn(query, keys, W_q, W_k, w_v):  # pairs query i with key i only
        return torch.tanh(query @ W_q + (keys @ W_k)[:, : query.size(1)]) @ w_v

    result = check("02.1", fn)
    assert result.kind == "shape" and "Broadcast" in result.message


# ---- 02.2 masked softmax ----


def _ms_ignored(scores, pad):
    return torch.softmax(scores, -1)


def _ms_inverted(scores, pad):
    return torch.softmax(scores.masked_fill(~pad[:, None, :], float("-inf")), -1)


def _ms_after(scores, pad):
    return torch.softmax(scores, -1).masked_fill(pad[:, None, :], 0.0)


def _ms_nan(scores, pad):  # right for real rows, NaN for an all-padding row
    return torch.softmax(scores.masked_fill(pad[:, None, :], float("-inf")), -1)


def _ms_wrong_axis(scores, pad):
    return torch.softmax(scores.masked_fill(pad[:, None, :], float("-inf")), -2)


@pytest.mark.parametrize(
    "fn, kind, text",
    [
        (_ms_ignored, "masking", "padding is ignored"),
        (_ms_inverted, "masking", "mask is inverted"),
        (_ms_after, "masking", "after the softmax"),
        (_ms_nan, "masking", "all padding gives NaN"),
        (_ms_wrong_axis, "values", "wrong axis"),
    ],
)
def test_02_2_mistakes(fn, kind, text):
    result = check("02.2", fn)
    assert not result.passed and result.kind == kind and text in result.message, repr(result)


# ---- 03.1 sinusoidal ----


def _pe(kind):
    def fn(max_len, d):
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]
        i2 = torch.arange(0, d, 2, dtype=torch.float32)
        angle = pos / 10000 ** (i2 / d)
        pe = torch.zeros(max_len, d)
        if kind == "swapped":
            pe[:, 0::2], pe[:, 1::2] = angle.cos(), angle.sin()
        elif kind == "i_over_d":
            a = pos / 10000 ** (torch.arange(d // 2, dtype=torch.float32) / d)
            pe[:, 0::2], pe[:, 1::2] = a.sin(), a.cos()
        elif kind == "halves":
            pe = torch.cat((angle.sin(), angle.cos()), -1)
        elif kind == "transposed":
            pe[:, 0::2], pe[:, 1::2] = angle.sin(), angle.cos()
            pe = pe.T
        elif kind == "own_freq":
            a = pos / 10000 ** (torch.arange(d, dtype=torch.float32) / d)
            pe[:, 0::2], pe[:, 1::2] = a[:, 0::2].sin(), a[:, 1::2].cos()
        return pe

    return fn


@pytest.mark.parametrize(
    "kind, result_kind, text",
    [
        ("swapped", "values", "swapped"),
        ("i_over_d", "values", "2i/d, not i/d"),
        ("halves", "values", "interleaves"),
        ("transposed", "shape", "(d_model, max_len)"),
        ("own_freq", "values", "its own frequency"),
    ],
)
def test_03_1_mistakes(kind, result_kind, text):
    result = check("03.1", _pe(kind))
    assert not result.passed and result.kind == result_kind and text in result.message, repr(result)


# ---- 03.2 RoPE ----


def _rope(kind):
    def fn(x):
        t, d = x.shape
        half = d // 2
        exponent = torch.arange(half, dtype=torch.float32) / d if kind == "i_over_d" else \
            torch.arange(0, d, 2, dtype=torch.float32) / d
        theta = 10000.0 ** (-exponent)
        pos = torch.arange(t, dtype=torch.float32)[:, None]
        if kind == "from_one":
            pos = pos + 1
        angle = pos * theta
        if kind == "backwards":
            angle = -angle
        cos, sin = angle.cos(), angle.sin()
        if kind == "interleaved":
            a, b = x[:, 0::2], x[:, 1::2]
            y = x.clone()
            y[:, 0::2], y[:, 1::2] = a * cos - b * sin, a * sin + b * cos
            return y
        if kind == "identity":
            return x
        x1, x2 = x[:, :half], x[:, half:]
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1)

    return fn


@pytest.mark.parametrize(
    "kind, text",
    [
        ("backwards", "wrong way"),
        ("identity", "nothing was rotated"),
        ("from_one", "start at 0"),
        ("i_over_d", "2i, not i"),
        ("interleaved", "rotate half"),
    ],
)
def test_03_2_mistakes(kind, text):
    result = check("03.2", _rope(kind))
    assert not result.passed and result.kind == "values" and text in result.message, repr(result)


def test_03_2_wrong_shape():
    result = check("03.2", lambda x: x[:, : x.size(1) // 2])
    assert result.kind == "shape"
