"""`make lab` starts JupyterLab on 127.0.0.1 with a token, and the notebooks are listed."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from conftest import REPO  # noqa: E402
from lab_server import running_lab

pytestmark = pytest.mark.slow  # starts a JupyterLab server


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


def _non_loopback_address() -> str | None:
    """One of this machine's own IPv4 addresses that is not loopback (read locally, no traffic)."""
    import socket

    import psutil

    for addresses in psutil.net_if_addrs().values():
        for addr in addresses:
            if addr.family == socket.AF_INET and not addr.address.startswith("127."):
                return addr.address
    return None


def test_lab_is_not_reachable_from_other_interfaces(lab_server):
    import socket

    base, _ = lab_server
    port = int(base.rsplit(":", 1)[1])
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    # The offline guard refuses non-loopback connects before they leave the process; this one is to
    # the machine's own address, so use the real connect to reach the kernel's answer.
    try:
        import sitecustomize

        connect = getattr(sitecustomize, "_real_connect", socket.socket.connect)
    except ImportError:
        connect = socket.socket.connect
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(3)
    try:
        with pytest.raises(ConnectionRefusedError):  # bound to 127.0.0.1 only: the LAN address is refused
            connect(sock, (address, port))
    finally:
        sock.close()
