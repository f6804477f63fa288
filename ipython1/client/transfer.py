"""The client's end of a transfer: same-host, straight to the engine, or through the relay.

`client_transfer` takes a ticket the controller handed out (`open_transfer`)
and moves the frames; `TicketBook` keeps a same-host ticket's other uses, so
a client asks the controller once per engine, not once per value.
"""

from __future__ import annotations

import collections
import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ipython1.common.localhost import peer_credentials as _peer
from ipython1.common.localhost import socket_address as _address
from ipython1.transport.data.buffers import buffer_for
from ipython1.transport.data.local import tune
from ipython1.transport.data.refs import DirectUnavailable, LocalUnavailable, TransferError
from ipython1.transport.data.seal import OFFER, RECORDS, SEALED, TO_ENGINE, SealedStream, seal_key
from ipython1.transport.data.stream import (
    HEAD,
    NONCE_SIZE,
    PAIR_TIMEOUT,
    PLAIN_MAGIC,
    STRIPE,
    TLSStream,
    client_context,
    connect,
    expect_ok,
    plain_proof,
    recv_exact,
    recv_frame,
    recv_into_exact,
    streams,
    stripe_count,
    stripe_pieces,
    transfer_head,
    tubid_of,
)

DIRECT_TIMEOUT = 2.0  # seconds to reach an engine's data port before taking the relay
# Transfers this process completed as a client, by path ("local", "direct": sealed
# frames, "direct-tls": TLS records, "direct-unencrypted", "relay").
TRANSFERS: collections.Counter[str] = collections.Counter()


def client_transfer(ticket: dict[str, Any], frames: Sequence[Any] | None = None,
                    sizes: Sequence[int] | None = None,
                    accepted: Callable[[], None] | None = None) -> list[Any] | None:
    """Upload frames to, or download sizes from, an engine (blocking).

    A ticket with a ``"local"`` entry goes over the engine's local socket
    (raising LocalUnavailable if it cannot be reached), one with ``"direct"``
    straight to the engine's data port (DirectUnavailable if it cannot be
    reached within DIRECT_TIMEOUT), any other through the relay. A failure
    is a TransferError. For a local upload, accepted() is
    called as soon as the engine has announced the value (see
    `BlobStore.arriving`): a command using it may go from then on.
    """
    path = "local" if "local" in ticket else "direct" if "direct" in ticket else "relay"
    try:
        if path == "local":
            result = _local_client_transfer(ticket, frames, sizes, accepted)
        elif path == "direct":
            result = _direct_client_transfer(ticket, frames, sizes, accepted)
            path = ("direct-unencrypted" if ticket.get("plain") else
                    "direct" if ticket.get("seal") else "direct-tls")
        else:
            result = _relay_client_transfer(ticket, frames, sizes)
        TRANSFERS[path] += 1
        return result
    except OSError as e:  # reset, broken pipe, timeout: the engine or the relay went away
        peer = (f"engine process {ticket['local']['pid']}" if path == "local"
                else f"the engine at {ticket['direct']}" if path == "direct"
                else f"the engine through the relay at {ticket.get('relay')}")
        raise TransferError(f"the transfer with {peer} failed: {e}") from e


def _relay_client_transfer(ticket: dict[str, Any], frames: Sequence[Any] | None,
                           sizes: Sequence[int] | None) -> list[Any] | None:
    with connect(ticket["relay"], PAIR_TIMEOUT) as raw:
        raw.sendall(ticket["pairing_id"])
        tls = TLSStream(raw, client_context())
        tls.handshake()
        if tubid_of(tls.peer_certificate()) != ticket["tubid"]:
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
        try:
            sock.sendall(transfer_head(ticket, frames is not None, sizes))
        except OSError:
            pass  # refused already? The reason waits in our receive queue.
        return _move(sock, who, frames, sizes, accepted)


def _direct_client_transfer(ticket: dict[str, Any], frames: Sequence[Any] | None,
                            sizes: Sequence[int] | None,
                            accepted: Callable[[], None] | None = None) -> list[Any] | None:
    """Move the frames over the engine's data port: one connection, or one per stripe."""
    who = f"the engine's data port {ticket['direct']}"
    upload = frames is not None
    sizes = [len(f) for f in frames] if frames is not None else list(sizes or ())
    count = stripe_count(sizes, streams())
    if count == 1:
        with _direct_connection(ticket, upload, sizes, 0, 1) as conn:
            return _move(conn, who, frames, sizes, accepted)
    received = None if frames is not None else [buffer_for(size) for size in sizes]
    once = threading.Lock()
    errors: list[BaseException] = []

    def stripe(index: int) -> None:
        try:
            with _direct_connection(ticket, upload, sizes, index, count) as conn:
                expect_ok(conn, who)
                pieces = stripe_pieces(sizes, index, count)
                if frames is None:
                    for frame, start, end in pieces:
                        with memoryview(received[frame]) as view:  # type: ignore[index]
                            recv_into_exact(conn, view[start:end])
                    return
                if accepted is not None and once.acquire(blocking=False):
                    accepted()  # the engine announced the value at its first stripe
                for frame, start, end in pieces:
                    with memoryview(frames[frame]) as view:
                        conn.sendall(view.cast("B")[start:end])
                expect_ok(conn, who)
        except BaseException as e:
            errors.append(e)

    others = [threading.Thread(target=stripe, args=(i,), daemon=True) for i in range(1, count)]
    for thread in others:
        thread.start()
    stripe(0)
    for thread in others:
        thread.join()
    if errors:  # unreachable first: the relay may still get there
        raise next((e for e in errors if isinstance(e, DirectUnavailable)), errors[0])
    return received


@contextlib.contextmanager
def _direct_connection(ticket: dict[str, Any], upload: bool, sizes: list[int], index: int,
                       count: int) -> Iterator[Any]:
    """Connect to the engine's data port, prove the ticket, send the header; yield the stream."""
    address = ticket["direct"]
    try:
        sock = connect(address, DIRECT_TIMEOUT)
    except OSError as e:  # refused, filtered, no route: the relay may still get there
        raise DirectUnavailable(f"cannot reach the engine's data port {address}: {e}") from e
    with sock:
        sock.settimeout(PAIR_TIMEOUT)
        conn: Any
        trailer = STRIPE.pack(index, count)
        if ticket.get("plain"):  # the controller's --data-encryption=off: prove, then raw bytes
            head = transfer_head(dict(ticket, secret=bytes(32)), upload, sizes)
            sock.sendall(PLAIN_MAGIC + ticket["pairing_id"])
            nonce = bytes(recv_exact(sock, NONCE_SIZE))
            sock.sendall(plain_proof(ticket["secret"], nonce, head[:HEAD.size]) + head + trailer)
            conn = sock
        else:
            conn = TLSStream(sock, client_context())
            conn.handshake()
            if tubid_of(conn.peer_certificate()) != ticket["tubid"]:
                # Not the engine (an address that means another host from here?): the
                # secret stays here, and the relay, which checks the same, may get there.
                raise DirectUnavailable(f"{address} answered with a certificate that does not "
                                        "match the engine's tubid")
            # The controller's --data-encryption=sealed (the default): past this header,
            # AES-GCM frames under a key from our random (see transport.data.seal).
            sealed = bool(ticket.get("seal"))
            offer = secrets.token_bytes(OFFER.size - 1)
            conn.sendall(OFFER.pack(SEALED if sealed else RECORDS, offer)
                         + transfer_head(ticket, upload, sizes) + trailer)
            if sealed:
                conn = SealedStream(sock, seal_key(offer, ticket["pairing_id"]), TO_ENGINE,
                                    raw=conn.leftover())
        yield conn


def _move(conn: Any, who: str, frames: Sequence[Any] | None, sizes: list[int],
          accepted: Callable[[], None] | None) -> list[Any] | None:
    """Send frames, or receive sizes, once the header went; the engine says yes first."""
    expect_ok(conn, who)
    if frames is None:
        return [recv_frame(conn, size) for size in sizes]
    if accepted is not None:
        accepted()
    for frame in frames:
        conn.sendall(frame)
    expect_ok(conn, who)
    return None
