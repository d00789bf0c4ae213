"""The exercises of notebooks 01-03: metadata, solutions, the "not attempted" path, every named
mistake, and the fallback messages for answers no mistake describes."""

from __future__ import annotations

import math

import pytest
import torch

from course_utils.exercises import check, exercises, solution, solution_answer

IDS = ["01.1", "01.2", "01.3", "02.1", "02.2", "02.3", "03.1", "03.2", "03.3"]
PREDICT = {"01.1", "02.1", "03.2"}


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


# ---- 01.1 predict Var(q·k/√d) --------------------------------------------------------------


def test_01_1_tolerance_and_fallback():
    assert check("01.1", 16.3).passed and check("01.1", torch.tensor(15.8)).passed
    _fails_with(check("01.1", 20.0), "you predicted 20", "exact 16", "1.25 times the truth")
    _fails_with(check("01.1", 8.0), "2 times too small")


def test_01_1_bad_input_is_a_message():
    result = check("01.1", "sixteen")
    assert result.kind == "answer" and "must be a finite number" in result.message


# ---- 01.2 derive dO/dT ----------------------------------------------------------------------


def test_01_2_autograd_is_switched_off():
    def with_autograd(scores, values, T):
        t = torch.tensor(T, requires_grad=True)
        out = (torch.softmax(scores / t, -1)[:, :, None] * values).sum(1)
        return torch.stack([torch.autograd.grad(o, t, retain_graph=True)[0] for o in out.flatten()])

    result = check("01.2", with_autograd)
    assert result.kind == "error" and "Autograd is switched off" in result.message


def test_01_2_fallback_locates_first_difference():
    def off(scores, values, T):
        return solution_answer("01.2")[0](scores, values, T) + torch.tensor([[0.0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])

    _fails_with(check("01.2", off), "at (b=1, v=2)", "1 of 12 entries differ")


def test_01_2_shape():
    _fails_with(check("01.2", lambda s, v, T: s), "(B, dv)")


# ---- 01.3 debug the stable softmax ----------------------------------------------------------


def test_01_3_library_softmax_in_any_spelling_is_refused():
    import torch.nn.functional as F

    for fn in (lambda s: F.softmax(s, -1), lambda s: s.softmax(dim=-1), lambda s: s.log_softmax(-1).exp()):
        _fails_with(check("01.3", fn), "library softmax")


def test_01_3_fallback():
    def nearly(s):
        e = torch.exp(s - s.amax(-1, keepdim=True))
        w = e / e.sum(-1, keepdim=True)
        w[2, 1] += 0.1
        return w

    _fails_with(check("01.3", nearly), "at (row=2, col=1)")


def test_01_3_the_broken_notebook_code_really_gives_nan():
    def broken(scores):
        e = torch.exp(scores - scores.max())
        return e / e.sum(dim=-1, keepdim=True)

    scores = torch.tensor([[1000.0, 999.0], [0.0, -1.0]])
    assert broken(scores)[1].isnan().all()
    assert torch.allclose(solution_answer("01.3")[0](scores), torch.softmax(scores, -1))


# ---- 02.1 predict the saved tensor ----------------------------------------------------------


def test_02_1_measurement_matches_the_formula():
    from course_utils.exercises.nb02 import _measure_saved

    largest, shape, total = _measure_saved()
    assert largest == 32 * 64 * 64 * 64 * 4 / 2**20 and shape == (32 * 64 * 64, 64)
    assert largest < total < largest + 2  # the rest: inputs, scores, weights (0.5 MiB each)


def test_02_1_fallback():
    _fails_with(check("02.1", 100.0), "you predicted 100 MiB", "32.0 MiB")


# ---- 02.2 derive the score gradient ---------------------------------------------------------


def test_02_2_fallback_and_shape():
    sol = solution_answer("02.2")[0]
    _fails_with(check("02.2", lambda *a: 2 * sol(*a)), "differs from autograd's", "at (key j=0, dim=0)")
    _fails_with(check("02.2", lambda q, k, W_q, W_k, w_v: W_q), "(Lk, dq)")


# ---- 02.3 extend: chunked scores ------------------------------------------------------------


def test_02_3_chunks_over_queries_are_too_big():
    def query_chunks(q_h, k_h, w_v, chunk):
        return torch.cat([torch.tanh(q_h[:, s:s + 2, None] + k_h[:, None]) @ w_v
                          for s in range(0, q_h.size(1), 2)], dim=1)  # 2 queries × all keys

    _fails_with(check("02.3", query_chunks), "more than one chunk of keys")


def test_02_3_any_chunking_of_keys_passes():
    def two_at_a_time(q_h, k_h, w_v, chunk):
        return torch.cat([torch.tanh(q_h[:, :, None] + k_h[:, None, s:s + 2]) @ w_v
                          for s in range(0, k_h.size(1), 2)], dim=-1)

    assert check("02.3", two_at_a_time).passed


def test_02_3_fallback():
    sol = solution_answer("02.3")[0]
    _fails_with(check("02.3", lambda *a: sol(*a) * 1.5), "at (b=0, i=0, j=0)")


# ---- 03.1 extend: relative bias -------------------------------------------------------------


def test_03_1_fallback_and_out():
    sol = solution_answer("03.1")[0]

    def bias_doubled(q, k, v, b):
        return sol(q, k, v, 2 * b)

    def wrong_out(q, k, v, b):
        out, w = sol(q, k, v, b)
        return out + 1, w

    _fails_with(check("03.1", bias_doubled), "softmax(q kᵀ/√d + b[j - i])", "(b=0, query i=0, key j=")
    _fails_with(check("03.1", wrong_out), "not weights @ v")


def test_03_1_solution_copies_the_previous_token():
    sol = solution_answer("03.1")[0]
    v = torch.eye(6)[None]
    bias = torch.zeros(11)
    bias[6 - 1 - 1] = 30.0
    out, _ = sol(torch.zeros(1, 6, 2), torch.zeros(1, 6, 2), v, bias)
    assert torch.equal(out[0, 1:].argmax(-1), torch.arange(5))


# ---- 03.2 predict RoPE's slowest turn -------------------------------------------------------


def test_03_2_measurement_and_fallback():
    from course_utils.exercises.nb03 import _measured_turn

    assert math.isclose(_measured_turn(), 2 * math.pi * 500_000 ** (126 / 128), rel_tol=1e-5)
    _fails_with(check("03.2", 1e5), "you predicted 100,000 positions")


# ---- 03.3 debug RoPE with an offset ---------------------------------------------------------


def test_03_3_notebook_broken_code_is_recognised():
    def broken_rope(x, offset=0, base=10000.0):  # the notebook's broken version, verbatim
        T, D = x.shape[-2:]
        theta = base ** (torch.arange(0, D, 2) / D)
        angle = torch.arange(T)[:, None] * theta
        cos, sin = angle.cos(), angle.sin()
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    _fails_with(check("03.3", broken_rope), "all three bugs are still there")


def test_03_3_fallback():
    _fails_with(check("03.3", lambda x, offset: x), "differs from RotaryEmbedding(8).rotate(x, 7)")
