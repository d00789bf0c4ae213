"""Start `make lab` on a free port with a known token, for the tests that need a live JupyterLab."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from conftest import REPO  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A loaded 2-core machine (CI runs two test workers and their kernels at once) can take minutes
# to start JupyterLab; the wait is generous and can be raised without editing the tests.
START_TIMEOUT_S = float(os.environ.get("COURSE_E2E_START_TIMEOUT", "300"))


@contextmanager
def running_lab(extra_env: dict[str, str] | None = None, timeout: float = START_TIMEOUT_S) -> Iterator[tuple[str, str]]:
    """Yield (base URL, token) of a `make lab` server; stop it (and its kernels) afterwards."""
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_TOKEN": token, **(extra_env or {})}
    # The server's log goes to a file, not a pipe: an unread pipe fills up and blocks the server.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        ["make", "-s", "lab", f"LAB_PORT={port}", "LAB_ARGS=--no-browser"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError) as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace")
                    raise RuntimeError(f"JupyterLab did not start on {base} (exit {proc.poll()}): {exc}\n{output[-3000:]}") from exc
                time.sleep(0.5)
        yield base, token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()
