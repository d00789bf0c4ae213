"""Offline guard for the test suite: any connection beyond this machine fails, naming the host.

`make test` puts this folder on PYTHONPATH, so Python imports this file at start-up in *every*
process of the run: pytest and its xdist workers, the Jupyter kernels nbval starts, torchrun's
workers. An accidental download anywhere in the course then fails CI with a message that says
which host it tried, instead of passing on a machine that happens to be online.

Loopback (127.0.0.0/8, ::1, localhost) and Unix sockets stay allowed: JupyterLab, kernels,
gloo and the test HTTP servers all talk over them. Blocked: TCP connects, UDP datagrams
(``sendto``/``sendmsg``: DNS queries, telemetry pings) and name lookups of other hosts
(``getaddrinfo``, ``gethostbyname``, ``gethostbyname_ex``).
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
_real_gethostbyname = socket.gethostbyname
_real_gethostbyname_ex = socket.gethostbyname_ex
_real_sendto = socket.socket.sendto
_real_sendmsg = getattr(socket.socket, "sendmsg", None)  # not on Windows


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


def _check_lookup(host: object, port: object = None) -> None:
    if not _is_local(host):
        # Resolving our own hostname is local (gloo and torchrun do it); anything else is a lookup
        # of a remote host, the first step of a download.
        if str(host) not in {socket.gethostname(), socket.getfqdn()}:
            raise _blocked(host, port)


def _guarded_getaddrinfo(host, port, *args, **kwargs):
    _check_lookup(host, port)
    return _real_getaddrinfo(host, port, *args, **kwargs)


def _guarded_gethostbyname(host):
    _check_lookup(host)
    return _real_gethostbyname(host)


def _guarded_gethostbyname_ex(host):
    _check_lookup(host)
    return _real_gethostbyname_ex(host)


def _guarded_sendto(self, data, *args):
    # sendto(data, address) or sendto(data, flags, address)
    if args:
        _check_address(self, args[-1])
    return _real_sendto(self, data, *args)


def _guarded_sendmsg(self, buffers, ancdata=(), flags=0, address=None):
    if address is not None:
        _check_address(self, address)
        return _real_sendmsg(self, buffers, ancdata, flags, address)
    return _real_sendmsg(self, buffers, ancdata, flags)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
socket.socket.sendto = _guarded_sendto
if _real_sendmsg is not None:
    socket.socket.sendmsg = _guarded_sendmsg
socket.getaddrinfo = _guarded_getaddrinfo
socket.gethostbyname = _guarded_gethostbyname
socket.gethostbyname_ex = _guarded_gethostbyname_ex
