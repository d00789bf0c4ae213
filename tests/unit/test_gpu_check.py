"""`make gpu-check`, the optional CPU-only install, and the README's layout section."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))

import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the real check runs")
def test_without_a_gpu_one_line_and_exit_zero():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py")], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU on this machine"), proc.stdout
    assert not (REPO / "reports" / "gpu_check.json").exists() or "gpu_check.json" not in proc.stdout


def test_no_gpu_line_names_the_build(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "a CPU-only build" in gpu_check.no_gpu_line()
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert "built for CUDA 13.0" in gpu_check.no_gpu_line()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_check.no_gpu_line() is None


def test_missing_summary_keys_are_named(tmp_path):
    result = tmp_path / "attention_cuda.json"
    result.write_text(json.dumps({"summary": {"tiled_over_sdpa_time_n4096": 3.2, "kv_cache_speedup_1024": 40.0}}))
    assert gpu_check.missing_summary_keys(result) == ["triton_over_sdpa_time_n4096_fp16", "sdpa_tflops_n4096_fp16"]
    complete = {k: 1.0 for k in gpu_check.REQUIRED_SUMMARY_KEYS}
    result.write_text(json.dumps({"summary": complete}))
    assert gpu_check.missing_summary_keys(result) == []
    result.write_text("{not json")
    assert "is not valid JSON" in gpu_check.missing_summary_keys(result)[0]


def test_stage_limits_fit_the_eight_minute_budget():
    assert sum(gpu_check.STAGE_LIMITS_S.values()) <= gpu_check.BUDGET_S == 480
    assert list(gpu_check.STAGES) == ["tests", "notebooks", "bench", "torchrun"]
    assert [n.split("/")[1][:2] for n in gpu_check.NOTEBOOKS] == ["00", "08", "15"]
    assert all((REPO / n).is_file() for n in gpu_check.NOTEBOOKS)


def test_the_gpu_tests_are_marked_and_skip_without_cuda():
    text = (REPO / "tests" / "gpu" / "test_cuda.py").read_text(encoding="utf-8")
    assert "pytest.mark.gpu" in text and "torch.cuda.is_available()" in text
    markers = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'"gpu: ', markers), "the gpu marker must be declared in pyproject.toml"
    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                               "tests/gpu"], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert proc.returncode == 0 and "skipped" in proc.stdout and "passed" not in proc.stdout, proc.stdout


def _dry_run(*args: str) -> str:
    proc = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_gpu_check_runs_the_script_offline():
    out = _dry_run("gpu-check")
    assert "scripts/gpu_check.py" in out and "tests/offline" in out


def test_torch_index_installs_torch_first_and_only_when_given(tmp_path):
    venv = tmp_path / "venv"
    with_index = _dry_run("install", f"VENV={venv}", "TORCH_INDEX=https://download.pytorch.org/whl/cpu").splitlines()
    torch_line = next(i for i, line in enumerate(with_index) if "--index-url" in line)
    course_line = next(i for i, line in enumerate(with_index) if 'pip install -e ".[test]"' in line)
    assert torch_line < course_line
    assert with_index[torch_line].endswith('--index-url "https://download.pytorch.org/whl/cpu" torch torchvision')
    default = _dry_run("install", f"VENV={tmp_path / 'other'}")
    assert "--index-url" not in default and 'pip install -e ".[test]"' in default
    assert not (tmp_path / "other").exists(), "the default install must not create anything in a dry run"


def test_readme_layout_matches_the_tree():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    listed = {line.split()[0].rstrip("/") for line in block.strip().splitlines() if line.strip()}
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, timeout=60).stdout.split()
    folders = {path.split("/")[0] for path in tracked if "/" in path and not path.startswith(".")}
    assert folders <= listed, f"folders missing from the README's layout: {sorted(folders - listed)}"
    missing = [name for name in listed if not (REPO / name).exists()]
    assert not missing, f"the README's layout lists what is not there: {missing}"
    tests = {p.name for p in (REPO / "tests").iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    described = block.split("tests/", 1)[1].splitlines()[0]
    assert all(f"{t}/" in described for t in tests - {"offline"}), (tests, described)
    assert (REPO / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert (REPO / "data" / "README.md").is_file()
