"""The same-host path's wire: who may take it, its header and status bytes.

When the client runs on the engine's host as the engine's user (same
`host_key`), the bytes go over the engine's abstract Unix socket: no TLS, no
relay. The client sends the transfer's `HEAD` and sizes, as on every path
(see `stream`).
"""

from __future__ import annotations

import socket

from ipython1.common.localhost import env_enabled
from ipython1.common.localhost import host_key as localhost_key
from ipython1.transport.data.stream import HEAD, STATUS_OK, STATUS_REFUSED, expect_ok, refuse

__all__ = ["BOOK_TTL", "BOOK_USES", "LOCAL_ENV", "LOCAL_HEAD", "STATUS_OK", "STATUS_REFUSED",
           "expect_ok", "host_key", "local_enabled", "refuse", "tune"]

LOCAL_ENV = "IPYTHON1_LOCAL_DATA"  # "0" turns the same-host path off
BOOK_USES = 64  # transfers one local ticket (pairing id + secret) is good for
BOOK_TTL = 300.0  # seconds a local ticket is good for
SOCKET_BUFFER = 2**20
LOCAL_HEAD = HEAD  # the same-host path's header is every path's


def local_enabled() -> bool:
    """Tell whether IPYTHON1_LOCAL_DATA lets this process use the local path."""
    return env_enabled(LOCAL_ENV)


def host_key() -> str:
    """Name this host, user and namespaces (see `localhost`); "" if the local path is off."""
    return localhost_key() if local_enabled() else ""


def tune(sock: socket.socket) -> None:
    """Give a local socket larger buffers: bigger and fewer skbs, fewer wake-ups.

    The default (~208 KiB) caps a 256 MiB transfer at ~5 GB/s; 1 MiB (the
    kernel doubles it, within net.core.wmem_max) gives ~8 GB/s on 2 cores.
    """
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except OSError:
            pass
