"""`make lab` starts JupyterLab on 127.0.0.1 with a token, and the notebooks are listed."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab_server():
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_TOKEN": token}
    proc = subprocess.Popen(
        ["make", "-s", "lab", f"LAB_PORT={port}", "LAB_ARGS=--no-browser"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    output = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
                    pytest.fail(f"JupyterLab did not start on {base} (exit {proc.poll()}):\n{output[-3000:]}")
                time.sleep(0.5)
        yield base, token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


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
