"""Notebook 09's checkers beyond their named mistakes: the generic fallbacks say where the answer
first goes wrong, and a learner's mistake in the form of the answer gets its own message."""

from __future__ import annotations

from course_utils.exercises import check


def test_09_1_far_off_prediction_is_located():
    result = check("09.1", 0.5)
    assert not result and "measured on the block mask: 0.9243" in result.message
    assert "yours is" in result.message


def test_09_1_placeholder_reads_as_not_attempted():
    assert check("09.1", None).kind == "not attempted"


def test_09_2_generic_miss_names_the_case():
    result = check("09.2", lambda cached, absorbed: 1000 * (cached + 1))
    assert not result and "with 0 tokens cached, absorbed=False" in result.message


def test_09_3_fallback_names_the_first_bad_step():
    def wrong_value(k_buf, v_buf, n, k_new, v_new):  # right keys, values of the previous token
        w = k_buf.size(2)
        k_buf[:, :, n % w] = k_new[:, :, 0]
        kept = min(n + 1, w)
        return k_buf[:, :, :kept], v_buf[:, :, :kept]

    result = check("09.3", wrong_value)
    assert not result and "first differs at step 0" in result.message


def test_09_3_wrong_shape_is_a_shape_message():
    result = check("09.3", lambda k_buf, v_buf, n, k_new, v_new: (k_new[0], v_new[0]))
    assert result.kind == "shape" and "(B, H, kept, D)" in result.message


def test_09_4_python_and_is_caught():
    def with_python_and(doc_ids, window):
        def mod(b, h, q_idx, kv_idx):
            return (doc_ids[b, q_idx] == doc_ids[b, kv_idx]) and (q_idx >= kv_idx)
        return mod

    result = check("09.4", with_python_and)
    assert result.kind == "error" and "& and |" in result.message


def test_09_4_fallback_names_query_and_key():
    def only_own_token(doc_ids, window):
        return lambda b, h, q_idx, kv_idx: q_idx == kv_idx

    result = check("09.4", only_own_token)
    assert not result and "row 0, query 1" in result.message
