"""Offline guard for the test suite: any connection beyond this machine fails, naming the host.

`make test` puts this folder on PYTHONPATH, so Python imports this file at start-up in *every*
process of the run: pytest and its xdist workers, the Jupyter kernels nbval starts, torchrun's
workers. An accidental download anywhere in the course then fails CI with a message that says
which host it tried, instead of passing on a machine that happens to be online.

Loopback (127.0.0.0/8, ::1, localhost) and Unix sockets stay allowed: JupyterLab, kernels,
gloo and the test HTTP servers all talk over them.
"""

from __future__ import annotations

import ipaddress
import socket

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


class NetworkBlockedError(ConnectionError):
    """Raised for any connection to a host that is not this machine."""


def _is_local(host: object) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").lower()
    if host in _LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _blocked(host: object, port: object = None) -> NetworkBlockedError:
    where = f"{host}:{port}" if port is not None else f"{host}"
    return NetworkBlockedError(
        f"network access to {where} is blocked in the course's tests: the course must run offline "
        "(generate data locally or ship it in data/; never download at run time)"
    )


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _check_address(sock: socket.socket, address: object) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        if not _is_local(address[0]):
            raise _blocked(address[0], address[1] if len(address) > 1 else None)


def _guarded_connect(self, address):
    _check_address(self, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    _check_address(self, address)
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, port, *args, **kwargs):
    if not _is_local(host):
        # Resolving our own hostname is local (gloo and torchrun do it); anything else is a lookup
        # of a remote host, the first step of a download.
        if str(host) not in {socket.gethostname(), socket.getfqdn()}:
            raise _blocked(host, port)
    return _real_getaddrinfo(host, port, *args, **kwargs)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
socket.getaddrinfo = _guarded_getaddrinfo
