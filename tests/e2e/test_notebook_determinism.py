"""Two representative notebooks, run twice in fast mode, print exactly the same text.

Seeds go through course_utils.seed_everything, so every printed number (losses, accuracies,
equality checks) repeats; only timings, addresses and paths may differ, and the nbval sanitize
file removes those before comparing.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import nbformat
import pytest
from conftest import REPO  # noqa: E402
from nbclient import NotebookClient

NOTEBOOKS = ["03_self_attention_and_positions", "05_cross_attention"]


def _sanitizers() -> list[tuple[re.Pattern[str], str]]:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "tests" / "nbval_sanitize.cfg", encoding="utf-8")
    return [(re.compile(cfg[s]["regex"]), cfg[s]["replace"]) for s in cfg.sections()]


def _text_outputs(path: Path) -> dict[int, str]:
    """Each code cell's printed text, joined: Jupyter may split one cell's prints into a
    different number of stream outputs from run to run (it did on a loaded machine), so the
    comparison is per cell, not per output."""
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    texts: dict[int, str] = {}
    for index, cell in enumerate(nb.cells):
        parts = []
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/plain", "")
            if output.get("name") == "stderr" or not text:
                continue
            if "<Figure" in text:  # the repr of a figure carries no numbers
                continue
            parts.append(text)
        joined = "".join(parts)
        for pattern, replacement in _sanitizers():
            joined = pattern.sub(replacement, joined)
        if joined:
            texts[index] = joined
    return texts


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_fast_mode_outputs_repeat(name, monkeypatch):
    path = REPO / "notebooks" / f"{name}.ipynb"
    if not path.exists():
        pytest.fail(f"{path} is missing: pick another representative notebook")
    monkeypatch.setenv("COURSE_FAST", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    first, second = _text_outputs(path), _text_outputs(path)
    assert first, f"{name} printed nothing to compare"
    assert first.keys() == second.keys(), f"{name}: cells {sorted(first.keys() ^ second.keys())} printed in one run only"
    diffs = [(i, first[i], second[i]) for i in first if first[i] != second[i]]
    assert not diffs, f"{name} differs between two runs (cell, first, second): {diffs[:3]}"
