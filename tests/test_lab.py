"""`make lab` starts JupyterLab on 127.0.0.1 with a token, and the notebooks are listed."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lab_server import running_lab

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lab_server():
    with running_lab() as server:
        yield server


def test_lab_lists_the_notebooks(lab_server):
    base, token = lab_server
    with urllib.request.urlopen(f"{base}/api/contents/notebooks?token={token}", timeout=10) as response:
        listing = json.load(response)
    names = {item["name"] for item in listing["content"]}
    expected = {p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert expected and expected <= names


def test_lab_refuses_requests_without_the_token(lab_server):
    base, _ = lab_server
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{base}/api/contents/notebooks", timeout=10)
    assert info.value.code == 403


def test_lab_is_bound_to_localhost_only(lab_server):
    base, token = lab_server
    with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=10):
        pass
    assert base.startswith("http://127.0.0.1:")
