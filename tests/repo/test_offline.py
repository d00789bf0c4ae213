"""The offline guard is active in this process and in every process it starts (kernels included)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from conftest import REPO

GUARD = REPO / "tests" / "offline"


def _guarded_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(GUARD), os.environ.get("PYTHONPATH")]))}


@pytest.mark.skipif(str(GUARD) not in os.environ.get("PYTHONPATH", ""), reason="run via `make test`, which sets the guard")
def test_this_process_is_guarded():
    with pytest.raises(ConnectionError, match=r"network access to 192\.0\.2\.1:80 is blocked"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)


def test_child_processes_are_guarded_and_name_the_host():
    code = "import urllib.request; urllib.request.urlopen('https://huggingface.co/bert-base-uncased', timeout=5)"
    result = subprocess.run([sys.executable, "-c", code], env=_guarded_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "network access to huggingface.co:443 is blocked" in result.stderr


@pytest.mark.parametrize("call, where", [
    ("s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x', ('8.8.8.8', 53))", "8.8.8.8:53"),
    ("s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x', 0, ('1.1.1.1', 123))", "1.1.1.1:123"),
    ("s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendmsg([b'x'], [], 0, ('9.9.9.9', 53))", "9.9.9.9:53"),
    ("socket.gethostbyname('pypi.org')", "pypi.org"),
    ("socket.gethostbyname_ex('huggingface.co')", "huggingface.co"),
])
def test_udp_and_name_lookups_are_blocked_too(call, where):
    code = (
        "import socket\n"
        f"try:\n    {call}\n    print('NOT BLOCKED')\n"
        "except ConnectionError as e:\n    print('BLOCKED', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=_guarded_env(), capture_output=True, text=True, timeout=60)
    assert f"BLOCKED network access to {where} is blocked" in result.stdout, result.stdout + result.stderr


def test_loopback_still_works():
    code = (
        "import socket\n"
        "server = socket.socket(); server.bind(('127.0.0.1', 0)); server.listen(1)\n"
        "client = socket.create_connection(server.getsockname(), timeout=5)\n"
        "client6 = socket.create_connection(('localhost', server.getsockname()[1]), timeout=5)\n"
        "udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(('127.0.0.1', 0))\n"
        "udp.sendto(b'ping', udp.getsockname()); assert udp.recv(4) == b'ping'\n"
        "assert socket.gethostbyname('localhost').startswith('127.')\n"
        "socket.gethostbyname(socket.gethostname())\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=_guarded_env(), capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_jupyter_kernels_inherit_the_guard():
    code = (
        "from jupyter_client.manager import start_new_kernel\n"
        "km, kc = start_new_kernel(kernel_name='python3')\n"
        "out = []\n"
        "kc.execute_interactive(\"import socket\\ntry:\\n    socket.create_connection(('192.0.2.1', 80), timeout=1)\\n"
        "except ConnectionError as e:\\n    print('BLOCKED', e)\", output_hook=lambda m: out.append(m['content'].get('text', '')), timeout=60)\n"
        "km.shutdown_kernel(now=True)\n"
        "print(''.join(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=_guarded_env(), capture_output=True, text=True, timeout=120)
    assert "BLOCKED network access to 192.0.2.1:80 is blocked" in result.stdout, result.stdout + result.stderr
