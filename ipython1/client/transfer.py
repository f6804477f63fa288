"""The client's end of a transfer: to or from an engine, same-host or through the relay.

`client_transfer` takes a ticket the controller handed out (`open_transfer`)
and moves the frames; `TicketBook` keeps a same-host ticket's other uses, so
a client asks the controller once per engine, not once per value.
"""

from __future__ import annotations

import collections
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from ipython1.kernel.localhost import peer_credentials as _peer
from ipython1.kernel.localhost import socket_address as _address
from ipython1.transport.data.local import LOCAL_HEAD, expect_ok, tune
from ipython1.transport.data.refs import LocalUnavailable, TransferError
from ipython1.transport.data.stream import (
    PAIR_TIMEOUT,
    client_context,
    connect,
    recv_exact,
    recv_frame,
    tubid_of,
)

# Transfers this process completed as a client, by path ("local", "relay").
TRANSFERS: collections.Counter[str] = collections.Counter()


def client_transfer(ticket: dict[str, Any], frames: Sequence[Any] | None = None,
                    sizes: Sequence[int] | None = None,
                    accepted: Callable[[], None] | None = None) -> list[Any] | None:
    """Upload frames to, or download sizes from, an engine (blocking).

    A ticket with a ``"local"`` entry goes over the engine's local socket
    (raising LocalUnavailable if it cannot be reached), any other through the
    relay. A failure is a TransferError. For a local upload, accepted() is
    called as soon as the engine has announced the value (see
    `BlobStore.arriving`): a command using it may go from then on.
    """
    path = "local" if "local" in ticket else "relay"
    try:
        if path == "local":
            result = _local_client_transfer(ticket, frames, sizes, accepted)
        else:
            result = _relay_client_transfer(ticket, frames, sizes)
        TRANSFERS[path] += 1
        return result
    except OSError as e:  # reset, broken pipe, timeout: the engine or the relay went away
        peer = (f"engine process {ticket['local']['pid']}" if path == "local"
                else f"the engine through the relay at {ticket.get('relay')}")
        raise TransferError(f"the transfer with {peer} failed: {e}") from e


def _relay_client_transfer(ticket: dict[str, Any], frames: Sequence[Any] | None,
                           sizes: Sequence[int] | None) -> list[Any] | None:
    with connect(ticket["relay"], PAIR_TIMEOUT) as raw:
        raw.sendall(ticket["pairing_id"])
        with client_context().wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True) or b""
            if tubid_of(der) != ticket["tubid"]:
                raise TransferError("the engine's TLS certificate does not match its tubid")
            tls.sendall(ticket["secret"])
            if frames is not None:
                for frame in frames:
                    tls.sendall(frame)
                recv_exact(tls, 1)
                return None
            received = [recv_frame(tls, size) for size in sizes or ()]
            tls.sendall(b"K")
            return received


class TicketBook:
    """A client's same-host ticket for one engine, and the uses it has left."""

    def __init__(self, ticket: dict[str, Any]) -> None:
        self.ticket = ticket
        self.uses = int(ticket.get("uses", 1))
        # Stop well before the engine forgets it: no transfer fails for a late ticket.
        self.deadline = time.monotonic() + float(ticket.get("ttl", 0)) / 2

    def spend(self) -> bool:
        """Take one use; return False if none is left (or the ticket is too old)."""
        if self.uses <= 0 or time.monotonic() > self.deadline:
            return False
        self.uses -= 1
        return True


def _local_client_transfer(ticket: dict[str, Any], frames: Sequence[Any] | None,
                           sizes: Sequence[int] | None,
                           accepted: Callable[[], None] | None = None) -> list[Any] | None:
    local = ticket["local"]
    who = f"engine process {local['pid']}"
    if frames is not None:
        sizes = [len(f) for f in frames]
    sizes = list(sizes or ())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(PAIR_TIMEOUT)
        tune(sock)
        try:
            sock.connect(_address(local["socket"]))
        except OSError as e:
            raise LocalUnavailable(f"cannot reach the local socket of {who}: {e}") from e
        pid, uid = _peer(sock)
        if (pid, uid) != (local["pid"], local["uid"]):
            raise TransferError(f"the local socket of {who} is served by process {pid} of "
                                f"uid {uid}, not by the engine (uid {local['uid']})")
        head = LOCAL_HEAD.pack(ticket["pairing_id"], ticket["secret"],
                                b"U" if frames is not None else b"D", ticket["blob_id"],
                                len(sizes))
        try:
            sock.sendall(head + struct.pack(f"<{len(sizes)}Q", *sizes))
        except OSError:
            pass  # refused already? The reason waits in our receive queue.
        expect_ok(sock, who)
        if frames is not None:
            if accepted is not None:
                accepted()
            for frame in frames:
                sock.sendall(frame)
            expect_ok(sock, who)
            return None
        return [recv_frame(sock, size) for size in sizes]
