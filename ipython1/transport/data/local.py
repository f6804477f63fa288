"""The same-host path's wire: who may take it, its header and status bytes.

When the client runs on the engine's host as the engine's user (same
`host_key`), the bytes go over the engine's abstract Unix socket: no TLS, no
relay. The client sends `LOCAL_HEAD` (pairing id, secret, direction, blob
id, frame count) and the sizes; the engine answers `STATUS_OK`, or
`STATUS_REFUSED` and its reason.
"""

from __future__ import annotations

import socket
import struct

from ipython1.kernel.localhost import env_enabled
from ipython1.kernel.localhost import host_key as localhost_key
from ipython1.transport.data.refs import TransferError
from ipython1.transport.data.stream import recv_exact

LOCAL_ENV = "IPYTHON1_LOCAL_DATA"  # "0" turns the same-host path off
BOOK_USES = 64  # transfers one local ticket (pairing id + secret) is good for
BOOK_TTL = 300.0  # seconds a local ticket is good for
SOCKET_BUFFER = 2**20
# pairing id, secret, direction (U or D), blob id, frame count; the sizes follow.
LOCAL_HEAD = struct.Struct("<16s32s1s16sI")
STATUS_OK = b"K"
STATUS_REFUSED = b"E"


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


def refuse(sock: socket.socket, reason: str) -> None:
    message = reason.encode()[:1000]
    try:
        sock.sendall(STATUS_REFUSED + struct.pack("<H", len(message)) + message)
    except OSError:
        pass


def expect_ok(sock: socket.socket, who: str) -> None:
    status = sock.recv(1)
    if status == STATUS_OK:
        return
    if status == STATUS_REFUSED:
        (size,) = struct.unpack("<H", recv_exact(sock, 2))
        reason = bytes(recv_exact(sock, size)).decode(errors="replace")
        raise TransferError(f"{who} refused the transfer: {reason}")
    raise TransferError(f"{who} closed the connection (it refused the transfer or went away)")

