"""Every torch.load in the course passes weights_only=True (no pickle code execution from a file)."""

from __future__ import annotations

import json
import re

from conftest import REPO  # noqa: E402

CALL = re.compile(r"torch\.load\s*\(")


def _sources():
    for folder in ("course_utils", "scripts", "benchmarks", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name != "test_safe_loading.py":
                yield path, path.read_text(encoding="utf-8")
    for path in (REPO / "notebooks").glob("*.ipynb"):
        nb = json.loads(path.read_text(encoding="utf-8"))
        yield path, "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def _calls(text: str):
    for match in CALL.finditer(text):
        depth, i = 0, match.end() - 1
        while i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        yield text[match.start(): i + 1]


def test_every_torch_load_is_weights_only():
    offenders = []
    for path, text in _sources():
        for call in _calls(text):
            if not re.search(r"weights_only\s*=\s*True", call):
                offenders.append(f"{path.relative_to(REPO)}: {call}")
    assert not offenders, "torch.load without weights_only=True:\n" + "\n".join(offenders)


def test_the_scanner_catches_an_unsafe_call():
    unsafe = "state = torch.load(path)\nok = torch.load(p, map_location='cpu', weights_only=True)"
    calls = list(_calls(unsafe))
    assert [bool(re.search(r"weights_only\s*=\s*True", c)) for c in calls] == [False, True]
