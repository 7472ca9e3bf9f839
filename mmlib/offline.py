"""Network guard for the offline tests: refuse every connection that leaves this machine.

``block_network()`` patches :mod:`socket` so that connecting to any address other than loopback (or a Unix socket)
raises :class:`NetworkBlocked` at once. The test suite installs it in its own process and, through
``tests/offline/sitecustomize.py``, in every kernel and subprocess it starts — so nbval's notebook runs and the
experiment runs prove the course needs no network.
"""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["NetworkBlocked", "block_network", "is_blocked"]

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


class NetworkBlocked(OSError):
    """Raised instead of a connection that would leave the machine."""


def _is_local(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    host = host.strip("[]").split("%")[0]
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _check(address: object) -> None:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return
    if isinstance(address, tuple) and address and _is_local(address[0]):
        return
    raise NetworkBlocked(f"network access blocked (the course must run offline): tried to reach {address!r}")


def block_network() -> None:
    """Install the guard in this process (idempotent)."""
    if getattr(socket.socket, "_mmlib_blocked", False):
        return
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: object) -> None:
        if self.family != getattr(socket, "AF_UNIX", None):
            _check(address)
        return original_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        if self.family != getattr(socket, "AF_UNIX", None):
            _check(address)
        return original_connect_ex(self, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object):
        if host is not None and not _is_local(host):
            raise NetworkBlocked(f"network access blocked (the course must run offline): tried to resolve {host!r}")
        return original_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    socket.socket._mmlib_blocked = True  # type: ignore[attr-defined]


def is_blocked() -> bool:
    """Whether the guard is installed in this process."""
    return bool(getattr(socket.socket, "_mmlib_blocked", False))
