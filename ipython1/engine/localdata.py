"""The engine's end of same-host transfers: its abstract Unix socket (`LocalServer`).

The socket is in the abstract namespace, so it vanishes with the engine
however the engine ends (SIGKILL, ``os._exit``): no file is left behind, and
no path length limit applies. Anyone on the host may connect to it, so the
uid check (``SO_PEERCRED``) comes first, before a byte is read.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
import struct
import threading
import time
import weakref
from typing import Any

from ipython1.engine.blobs import BlobStore
from ipython1.kernel.listenguard import ListenerGuard
from ipython1.kernel.localhost import peer_credentials as _peer
from ipython1.kernel.localhost import socket_address as _address
from ipython1.transport.data import local
from ipython1.transport.data.local import BOOK_TTL, BOOK_USES, LOCAL_HEAD, STATUS_OK
from ipython1.transport.data.refs import MAX_FRAMES, TransferError
from ipython1.transport.data.stream import PAIR_TIMEOUT, recv_exact, recv_frame


class LocalServer:
    """The engine's end of same-host transfers: an abstract Unix socket.

    Serves peers of the engine's own uid that present a pairing id and
    secret announced with `expect`, each good for a number of transfers (a
    *book* of tickets) until BOOK_TTL; the client names each transfer
    (direction, blob id, sizes) after the secret.
    """

    def __init__(self, store: BlobStore, uid: int | None = None) -> None:
        self.store = store
        self.uid = os.getuid() if uid is None else uid
        self.pid = os.getpid()
        self.name = f"@ipython1-engine-{self.pid}-{secrets.token_hex(8)}"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(_address(self.name))
        self._listener.listen(128)
        # A process user code forks must not keep the name alive after the
        # engine ends: nobody would accept, and clients would wait in vain.
        os.register_at_fork(after_in_child=functools.partial(_close_in_child,
                                                             weakref.ref(self)))
        self._books: dict[bytes, list[Any]] = {}  # pairing id -> [expiry, secret, uses left]
        self._lock = threading.Lock()
        self._closed = False
        self.transfers = 0
        self.guard = ListenerGuard(f"engine data socket {self.name}")
        threading.Thread(target=self._accept_loop, name="local-data", daemon=True).start()

    def info(self) -> dict[str, Any]:
        """What the engine advertises at registration (``info["local_data"]``)."""
        return {"host": local.host_key(), "socket": self.name, "pid": self.pid, "uid": self.uid}

    def expect(self, pairing_id: bytes, secret: bytes, uses: int = BOOK_USES) -> None:
        """Allow uses transfers by whoever presents pairing_id and secret, within BOOK_TTL."""
        now = time.monotonic()
        with self._lock:
            for key in [k for k, book in self._books.items() if book[0] < now]:
                del self._books[key]
            self._books[pairing_id] = [now + BOOK_TTL, secret, uses]

    def pending(self) -> int:
        """Return how many announced transfers may still come."""
        return sum(book[2] for book in self._books.values())

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self.guard.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock = self.guard.accept(self._listener)  # capped; survives EMFILE
            except OSError:
                if self._closed:
                    return
                time.sleep(0.05)
                continue  # do not let one failure end the service
            if sock is None:
                continue
            try:
                threading.Thread(target=self._serve, args=(sock,), daemon=True).start()
            except RuntimeError:  # no more threads: shed it, keep accepting
                self.guard.release()
                sock.close()

    def _use(self, pairing_id: bytes, secret: bytes) -> str | None:
        """Spend one ticket of a book; return why not, or None."""
        with self._lock:  # every try spends a ticket, even a wrong guess
            book = self._books.get(pairing_id)
            if book is None or book[0] < time.monotonic():
                self._books.pop(pairing_id, None)
                return "unknown or expired transfer"
            book[2] -= 1
            if book[2] <= 0:
                del self._books[pairing_id]
        return None if secrets.compare_digest(secret, book[1]) else "wrong transfer secret"

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            try:
                try:
                    local.tune(sock)
                    _pid, uid = _peer(sock)
                    if uid != self.uid:  # not our user: hang up before reading a byte
                        local.refuse(sock, f"uid {uid} is not the engine's user")
                        return
                    sock.settimeout(self.guard.deadline)  # unauthenticated: be quick
                    head = bytes(recv_exact(sock, LOCAL_HEAD.size))
                except TimeoutError:
                    self.guard.timed_out_one()
                    raise
                finally:
                    self.guard.release()
                sock.settimeout(PAIR_TIMEOUT)
                pairing_id, secret, direction, blob_id, count = LOCAL_HEAD.unpack(head)
                refused = self._use(pairing_id, secret)
                if refused is None and (direction not in b"UD" or count > MAX_FRAMES):
                    refused = "malformed transfer"
                if refused is not None:
                    local.refuse(sock, refused)
                    return
                sizes = list(struct.unpack(f"<{count}Q", recv_exact(sock, 8 * count)))
                if direction == b"U":
                    # The client may send the command using this value as soon
                    # as we accept: announce it, so that command waits for it.
                    self.store.arriving(blob_id)
                    try:
                        sock.sendall(STATUS_OK)
                        frames = [recv_frame(sock, size) for size in sizes]
                    except BaseException as e:
                        self.store.failed(blob_id, str(e) or type(e).__name__)
                        raise
                    self.store.put(blob_id, frames)
                    sock.sendall(STATUS_OK)
                else:
                    try:
                        with self.store.lend(blob_id) as frames:
                            if [len(f) for f in frames] != sizes:
                                raise TransferError("the value held by the engine has other sizes")
                            sock.sendall(STATUS_OK)
                            for frame in frames:
                                sock.sendall(frame)
                    except TransferError as e:
                        local.refuse(sock, str(e))
                        return
                self.transfers += 1
            except (OSError, TransferError, struct.error):
                pass  # the client went away: it gets its own error


def _close_in_child(server_ref: weakref.ref[LocalServer]) -> None:
    server = server_ref()
    if server is not None:
        server._closed = True
        server._listener.close()  # this process's descriptor only: no shutdown

