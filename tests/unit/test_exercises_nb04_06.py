"""The exercises of notebooks 04-06: metadata, solutions, the "not attempted" path, every named
mistake, and the fallback messages for answers no mistake describes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from course_utils.exercises import check, exercises, solution, solution_answer

IDS = ["04.1", "04.2", "04.3", "05.1", "05.2", "05.3", "06.1", "06.2", "06.3"]
PREDICT = {"04.1", "05.1"}


def _fails_with(result, *fragments: str) -> None:
    assert not result.passed, f"a wrong answer passed: {result!r}"
    for fragment in fragments:
        assert fragment in result.message, f"expected {fragment!r} in {result.message!r}"
    assert result.hint, "a failed check must carry the exercise's hint"


@pytest.mark.parametrize("exercise_id", IDS)
def test_metadata(exercise_id):
    ex = exercises()[exercise_id]
    assert ex.kind in ("predict", "derive", "debug", "extend")
    assert ex.minutes and ex.difficulty in (1, 2, 3)
    assert len(ex.mistakes) >= 3 and len({m.says for m in ex.mistakes}) == len(ex.mistakes)
    assert (ex.kind == "predict") == (exercise_id in PREDICT) == (ex.solution_args is not None)


@pytest.mark.parametrize("exercise_id", IDS)
def test_solution_passes_and_prints(exercise_id, capsys):
    assert check(exercise_id, *solution_answer(exercise_id)).passed
    source = solution(exercise_id)
    assert "def " in source and "return" in source
    assert f"exercise {exercise_id}" in capsys.readouterr().out


@pytest.mark.parametrize("exercise_id", IDS)
def test_each_named_mistake_fails_with_its_message(exercise_id):
    for mistake in exercises()[exercise_id].mistakes:
        _fails_with(check(exercise_id, *mistake.args), mistake.says)


@pytest.mark.parametrize("exercise_id", IDS)
def test_placeholder_reads_not_attempted(exercise_id):
    def stub(*args):
        raise NotImplementedError

    placeholder = None if exercise_id in PREDICT else stub
    result = check(exercise_id, placeholder)
    assert not result.passed and result.kind == "not attempted", repr(result)


# ---- 04.1 predict the memory of the weights -------------------------------------------------


def test_04_1_measurement_and_fallback():
    from course_utils.exercises.nb04 import _measure_attention_memory

    mib, count, activation = _measure_attention_memory()
    assert (mib, count, activation) == (16.0, 1, 1.0)  # B·H·L²·4 bytes, kept once; (B, L, E) = 1 MiB
    _fails_with(check("04.1", 40.0), "you predicted 40 MiB", "2.5 times the truth")


# ---- 04.2 derive the FLOPs ------------------------------------------------------------------


def test_04_2_measurement_is_flop_counter_on_a_real_layer():
    from course_utils.exercises.nb04 import _measure_flops

    b, length, e, h = 2, 16, 32, 4
    assert _measure_flops(b, length, e, h) == 8 * b * length * e * e + 4 * b * length * length * e
    assert _measure_flops(b, length, e, 8) == _measure_flops(b, length, e, 2)


def test_04_2_fallbacks():
    sol = solution_answer("04.2")[0]
    _fails_with(check("04.2", lambda B, L, E, H: sol(B, L, E, H) + 7), "FlopCounterMode measures",
                "Count the projections")
    _fails_with(check("04.2", lambda B, L, E, H: sol(B, L, E, H) + H), "changes with H")
    _fails_with(check("04.2", lambda B, L, E, H: None), "return a number")


# ---- 04.3 debug the per-head matrices -------------------------------------------------------


def test_04_3_notebook_broken_code_is_recognised_and_fallback():
    def broken(mha):  # the notebook's broken version, verbatim
        E, H = mha.embed_dim, mha.num_heads
        D = E // H
        w_q, w_k, w_v = mha.in_proj_weight.detach().chunk(3, dim=1)
        return tuple(w.reshape(H, E, D) for w in (w_q, w_k, w_v))

    _fails_with(check("04.3", broken), "both bugs")
    sol = solution_answer("04.3")[0]
    _fails_with(check("04.3", lambda m: (sol(m)[0], sol(m)[1], -sol(m)[2])), "W_v differs", "(head=0, in=")


def test_04_3_solution_gives_torch_per_head_outputs():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, bias=False, batch_first=True)
    w_q, w_k, w_v = solution_answer("04.3")[0](mha)
    x = torch.randn(2, 5, 16)
    q, k, v = x[:, None] @ w_q, x[:, None] @ w_k, x[:, None] @ w_v  # (B, H, T, D)
    heads = torch.softmax(q @ k.transpose(-2, -1) / 2, -1) @ v
    out = mha.out_proj(heads.transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(out, mha(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-5)


# ---- 05.1 predict the padding share ---------------------------------------------------------


def test_05_1_per_word_fallback_and_input_checks():
    _fails_with(check("05.1", [0.0, 0.5, 0.0, 0.97]), "You said 0.5 for green")
    _fails_with(check("05.1", [0.3, 0.23, 0.0, 0.97]), "You said 0.3 for red")
    assert check("05.1", torch.tensor([0.01, 0.25, 0.0, 0.95])).passed
    assert check("05.1", [None] * 4).kind == "not attempted"
    assert "must be 4 numbers" in check("05.1", [0.1, 0.2]).message


def test_05_1_measurement_is_the_notebooks_picture():
    from course_utils.exercises.nb05 import _measured_padding_share, _picture

    image = _picture()
    assert image.shape == (3, 64, 64)
    assert abs(image[0, 10, 10].item() - 0.9) < 0.2  # inside the red square
    share = _measured_padding_share()
    assert share[0] < 0.01 and share[2] < 0.01 and 0.2 < share[1] < 0.27 and share[3] > 0.95


# ---- 05.2 extend: the patch padding mask ----------------------------------------------------


def test_05_2_fallback_names_the_patch():
    sol = solution_answer("05.2")[0]

    def one_wrong(h, w, size, patch):
        m = sol(h, w, size, patch)
        m[1, 5] = ~m[1, 5]
        return m

    _fails_with(check("05.2", one_wrong), "picture 1 (9×13 pixels), patch 5 (row 1, column 1)")
    _fails_with(check("05.2", lambda h, w, s, p: sol(h, w, s, p).float()), "bool")


# ---- 05.3 debug nn.MultiheadAttention with the course's conventions ------------------------


def test_05_3_notebook_broken_code_is_recognised():
    def torch_cross_attention(mha, text, patches, key_padding_mask):  # the notebook's, verbatim
        keep = ~key_padding_mask
        return mha(text, patches, patches, key_padding_mask=keep)

    _fails_with(check("05.3", torch_cross_attention), "both bugs are still there")


def test_05_3_fallback():
    sol = solution_answer("05.3")[0]

    def shifted(*args):
        out, w = sol(*args)
        return out + 1, w

    _fails_with(check("05.3", shifted), "the output differs")


# ---- 06.1 debug the decoder mask ------------------------------------------------------------


def test_06_1_fallback_shows_the_expected_mask():
    sol = solution_answer("06.1")[0]

    def one_off(lq, lk):
        m = sol(lq, lk)
        if lq == 3:
            m[0, 0] = False
        return m

    _fails_with(check("06.1", one_off), "for lq = 3, lk = 7: query 0 (position 4) and key 0")
    _fails_with(check("06.1", lambda lq, lk: sol(lq, lk).int()), "bool")


def test_06_1_solution_is_the_last_rows_of_the_full_mask():
    sol = solution_answer("06.1")[0]
    for lq, lk in ((1, 9), (3, 7), (5, 5)):
        assert torch.equal(sol(lq, lk), torch.ones(lk, lk, dtype=torch.bool).tril()[lk - lq:])


# ---- 06.2 extend: DeepNorm ------------------------------------------------------------------


def test_06_2_one_missing_residual_is_named():
    names = {m.name for m in exercises()["06.2"].mistakes}
    assert {"no attention residual", "no FFN residual", "no residuals"} <= names


def test_06_2_alpha_one_is_post_ln():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 3, 8)

    def sa(y):
        return layer.self_attn(y, y, y, need_weights=False)[0]

    def ff(y):
        return layer.linear2(torch.relu(layer.linear1(y)))

    with torch.no_grad():
        ours = solution_answer("06.2")[0](x, sa, ff, layer.norm1, layer.norm2, 1.0)
        torch.testing.assert_close(ours, layer(x), atol=1e-5, rtol=1e-5)


def test_06_2_fallback():
    sol = solution_answer("06.2")[0]
    _fails_with(check("06.2", lambda x, *a: sol(x, *a) + 0.5), "differs from norm2")


# ---- 06.3 derive LayerNorm's backward -------------------------------------------------------


def test_06_3_autograd_is_switched_off_and_fallback():
    def by_autograd(x, gamma, grad_out, eps):
        x = x.clone().requires_grad_(True)
        (torch.nn.functional.layer_norm(x, x.shape[-1:], gamma, None, eps) * grad_out).sum().backward()
        return x.grad

    result = check("06.3", by_autograd)
    assert result.kind == "error" and "Autograd is switched off" in result.message
    sol = solution_answer("06.3")[0]
    _fails_with(check("06.3", lambda *a: sol(*a) * 1.01), "differs from autograd's", "(b=0, t=0, feature=")


def test_06_3_solution_rows_sum_to_zero():
    g = torch.Generator().manual_seed(0)
    x, grad = torch.randn(4, 16, generator=g, dtype=torch.float64), torch.randn(4, 16, generator=g, dtype=torch.float64)
    dx = solution_answer("06.3")[0](x * 5, torch.ones(16, dtype=torch.float64), grad)
    assert torch.allclose(dx.sum(-1), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert math.isfinite(dx.abs().max().item())
