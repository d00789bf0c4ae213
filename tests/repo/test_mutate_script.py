"""scripts/mutate.py (`make mutate`) keeps working: names, equivalents and the report it writes."""

from __future__ import annotations

import sys

from conftest import REPO  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))

import mutate  # noqa: E402


def test_function_names_are_read_from_mutmut_keys():
    assert mutate._function_of("course_utils.attention.x_causal_mask__mutmut_3") == "causal_mask"
    assert mutate._function_of("course_utils.attention.xǁMultiHeadAttentionǁforward__mutmut_12") == \
        "MultiHeadAttention.forward"


def test_the_changed_lines_of_a_diff():
    diff = "--- a.py\n+++ a.py\n@@ -1 +1 @@\n-    x = a - b\n+    x = a + b\n"
    assert mutate._changed_lines(diff) == ("x = a - b", "x = a + b")


def test_every_teaching_module_and_its_tests_exist():
    for module, tests in mutate.TEACHING.items():
        assert (REPO / module).is_file(), module
        for test in tests:
            assert (REPO / test).is_file(), f"{module}: {test} is missing"


def test_the_report_has_a_summary_row_and_a_section_per_module(tmp_path, monkeypatch):
    monkeypatch.setattr(mutate, "REPORT", tmp_path / "mutation.md")
    r = mutate.ModuleResult("course_utils/x.py", ["tests/unit/test_x.py"], counts={"killed": 19, "total": 21},
                            survivors=[("m_1 (survived)", "-a\n+b")],
                            equivalents=[("m_2", "-    y = 1\n+    y = 1.0", "same value")])
    mutate.write_report([r])
    text = (tmp_path / "mutation.md").read_text()
    assert "| `course_utils/x.py` | 21 | 19 | 1 | 1 | 95.0% |" in text
    assert "m_1 (survived)" in text and "`y = 1` → `y = 1.0` — same value" in text
    r.counts["killed"], r.survivors = 20, []
    mutate.write_report([r])  # a second run replaces the module's section, not appends
    text = (tmp_path / "mutation.md").read_text()
    assert text.count("## `course_utils/x.py`") == 1 and "| 100.0% |" in text
