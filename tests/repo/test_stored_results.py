"""Stored outputs, reports/metrics.json and reports/course_run.json describe the same full run.

``record_result`` prints ``name = value unit (target ≥ t)`` and, in full mode, writes the same
number to ``reports/metrics.json``; ``make execute`` stores the outputs and writes
``reports/course_run.json`` when the notebook ends. A notebook re-run by other means, or a
metrics file from an older run, leaves the three disagreeing — and the README's course map,
built from the reports, would then quote numbers that no stored output shows.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from pathlib import Path

import pytest
from conftest import REPO  # noqa: E402

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RESULT_LINE = re.compile(
    r"^(?P<name>[^=\n]+?) = (?P<value>\S+)(?: [^\n]*?)? \((?:target [≥≤] [^\n)]+|reported, no target)\)$", re.M)


def _printed_results(path: Path) -> dict[str, str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                for m in RESULT_LINE.finditer("".join(out["text"])):
                    found[m["name"]] = m["value"]
    return found


@functools.cache  # read once per test session, not once per notebook
def _metrics() -> dict[str, dict[str, dict]]:
    by_notebook: dict[str, dict[str, dict]] = {}
    for entry in json.loads((REPO / "reports" / "metrics.json").read_text(encoding="utf-8"))["results"]:
        by_notebook.setdefault(entry["notebook"], {})[entry["name"]] = entry
    return by_notebook


@functools.cache
def _course_run() -> dict[str, dict]:
    return json.loads((REPO / "reports" / "course_run.json").read_text(encoding="utf-8"))


def test_the_parser_reads_record_result_lines():
    text = ("x\nattention greedy return (median of seeds) = 500 (target ≥ 300)\nkv = 12.5 x at 64 tokens (target ≥ 5)\n"
            "test BLEU, transformer = 98.09 (reported, no target)\n")
    assert {m["name"]: m["value"] for m in RESULT_LINE.finditer(text)} == {
        "attention greedy return (median of seeds)": "500", "kv": "12.5", "test BLEU, transformer": "98.09"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_metrics_json_holds_the_numbers_the_stored_outputs_print(path):
    printed = _printed_results(path)
    recorded = _metrics().get(path.stem, {})
    assert printed, f"{path.name} prints no record_result line: every notebook records a headline result"
    assert set(printed) == set(recorded), (
        f"{path.name}: results printed but not in reports/metrics.json: {sorted(set(printed) - set(recorded))}; "
        f"in metrics.json but not printed: {sorted(set(recorded) - set(printed))}. Re-run it with "
        f"`make execute NOTEBOOKS=notebooks/{path.name}`."
    )
    stale = {name: (printed[name], f"{e['value']:.4g}") for name, e in recorded.items()
             if printed[name] != f"{e['value']:.4g}"}
    assert not stale, (
        f"{path.name}: stored output vs reports/metrics.json differ for {stale}; the two come from different "
        f"runs. Re-run it with `make execute NOTEBOOKS=notebooks/{path.name}`."
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_metrics_were_written_during_the_recorded_run(path):
    run = _course_run()[path.stem]
    assert run["status"] == "passed", f"{path.name}: the last `make execute` run did not pass"
    end = dt.datetime.fromisoformat(run["timestamp"])
    start = end - dt.timedelta(seconds=run["wall_time_s"] + 60)  # kernel start-up before the clock
    for name, entry in _metrics().get(path.stem, {}).items():
        written = dt.datetime.fromisoformat(entry["timestamp"])
        assert start <= written <= end + dt.timedelta(seconds=5), (
            f"{path.name}: metric {name!r} was written at {written}, outside the recorded run "
            f"({start} to {end}); re-run it with `make execute NOTEBOOKS=notebooks/{path.name}`."
        )


TIME_PARAGRAPH = re.compile(r"\*\*Time:?\*\*:?(?P<text>.*?)(?:\n\n|$)", re.S)
DURATION = re.compile(r"(?P<n>\d+(?:\.\d+)?)\**\s?(?P<unit>s|seconds|min|minutes?)\b")


def stated_run_time(path: Path) -> float | None:
    """The first duration in the notebook's **Time** paragraph, in seconds (None if it states none)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"][:3]:
        if cell["cell_type"] != "markdown":
            continue
        para = TIME_PARAGRAPH.search("".join(cell["source"]))
        if para:
            after_run = para["text"].split("run", 1)[-1]  # skip "30 minutes of reading"
            m = DURATION.search(after_run)
            if m:
                return float(m["n"]) * (60 if m["unit"].startswith("min") else 1)
    return None


def test_stated_run_time_parser():
    assert DURATION.search("the full-mode run measured **7 minutes** (427 s)")["n"] == "7"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_run_time_a_notebook_states_is_the_recorded_one(path):
    stated = stated_run_time(path)
    if stated is None:
        pytest.skip(f"{path.name} states no run time in seconds or minutes")
    measured = _course_run()[path.stem]["wall_time_s"]
    assert abs(stated - measured) <= max(5.0, 0.1 * measured), (
        f"{path.name} says its full-mode run takes {stated:.0f} s; `make execute` recorded {measured:.0f} s "
        "(reports/course_run.json). Update the **Time** line."
    )
