"""Stored outputs: one clean, in-order, full-mode run per notebook, small enough to read on GitHub."""

from __future__ import annotations

import json

import pytest
from conftest import REPO  # noqa: E402

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_BYTES = 2 * 1024 * 1024


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_executed_once_in_order_without_errors(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: execution counts {counts}; run `make execute`"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} stores an error output: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    warnings = [
        o.get("text", "")
        for c in code
        for o in c.get("outputs", [])
        if o.get("name") == "stderr" and "Warning" in "".join(o.get("text", ""))
    ]
    assert not warnings, f"{path.name} stores a warning: {''.join(warnings[0])[:300]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_size_and_shape(path):
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size / 2**20:.1f} MB (limit 2 MB)"
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3"
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert f'setup_notebook("{path.stem}"' in "".join(first_code["source"]), (
        f"{path.name}: the first code cell must call setup_notebook({path.stem!r})"
    )
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith("# ")
