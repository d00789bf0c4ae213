"""scripts/mutate.py (`make mutate`) keeps working: names, equivalents and the report it writes."""

from __future__ import annotations

import ast
import fnmatch
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
    assert "| `course_utils/x.py` | 21 | 19 | 1 | 1 | 95.0% | 0.0 min |" in text
    assert "m_1 (survived)" in text and "`y = 1` → `y = 1.0` — same value" in text
    r.counts["killed"], r.survivors = 20, []
    mutate.write_report([r])  # a second run replaces the module's section, not appends
    text = (tmp_path / "mutation.md").read_text()
    assert text.count("## `course_utils/x.py`") == 1 and "| 100.0% |" in text


def test_a_scope_names_functions_of_its_module_and_selects_exactly_their_mutants():
    for module, functions in mutate.SCOPE.items():
        assert module in mutate.TEACHING, module
        tree = ast.parse((REPO / module).read_text(encoding="utf-8"))
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)} | {
            f"{c.name}.{n.name}" for c in tree.body if isinstance(c, ast.ClassDef)
            for n in c.body if isinstance(n, ast.FunctionDef)}
        assert set(functions) <= defined, f"{module}: {set(functions) - defined} not defined there"
    globs = mutate.scope_globs("course_utils/x.py", ["f", "Cache.update"])
    assert globs == ["course_utils.x.x_f__mutmut_*", "course_utils.x.xǁCacheǁupdate__mutmut_*"]
    for name in ("course_utils.x.x_f__mutmut_3", "course_utils.x.xǁCacheǁupdate__mutmut_12"):
        assert any(fnmatch.fnmatchcase(name, g) for g in globs)
        assert mutate._function_of(name) in ("f", "Cache.update")
    assert not any(fnmatch.fnmatchcase("course_utils.x.x_f_twice__mutmut_1", g) for g in globs)


def test_a_scoped_section_says_so_and_counts_timeouts_as_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(mutate, "REPORT", tmp_path / "mutation.md")
    r = mutate.ModuleResult("scripts/x.py", ["tests/unit/test_x.py"], counts={"killed": 4, "timeout": 1, "total": 4},
                            scope=["micro_batches"], seconds=90)
    mutate.write_report([r])
    text = (tmp_path / "mutation.md").read_text()
    assert "Scope: `micro_batches`" in text and "1 of the killed mutants made the tests run out of time" in text
    assert "| `scripts/x.py` | 4 | 4 | 0 | 0 | 100.0% | 1.5 min |" in text


def test_the_scratch_copy_of_each_module_has_its_own_folder():
    dirs = {mutate.scratch_dir(m) for m in mutate.TEACHING}
    assert len(dirs) == len(mutate.TEACHING)
    assert mutate.scratch_dir("course_utils/inference/flex.py").name == "course_utils_inference_flex"


def test_every_listed_equivalent_names_its_module_function_lines_and_reason():
    entries = mutate.load_equivalents()
    assert entries, "tests/mutation_equivalents.toml lists none"
    for e in entries:
        assert set(e) == {"module", "function", "before", "after", "reason"}, e
        assert e["module"] in mutate.TEACHING, e
        assert e["before"].strip() and e["before"] != e["after"] and len(e["reason"]) > 10, e
    keys = [(e["module"], e["function"], e["before"], e["after"]) for e in entries]
    assert len(keys) == len(set(keys)), "an equivalent is listed twice"


def test_a_modules_behaviour_test_file_is_run_with_its_own():
    assert mutate.tests_for("course_utils/rl.py") == ["tests/unit/test_rl.py", "tests/unit/test_rl_behaviour.py"]
    assert mutate.tests_for("scripts/train_distributed.py") == ["tests/unit/test_train_distributed.py"]
