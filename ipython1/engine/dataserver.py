"""The engine's ends of transfers: its TCP listener for clients, and its end through the relay.

A client on another host connects straight to the engine's data port
(`DirectServer`, advertised at registration in ``info["direct_data"]``):
TLS with the engine's Foolscap certificate, then the transfer's header with
the secret, checked against the book the controller announced
(`TransferListener.expect`); the client says whether the rest goes as
sealed frames (`ipython1.transport.data.seal`, the default) or TLS
records. Unencrypted only if the controller said so for that book
(``ipcontroller --data-encryption=off``): an HMAC of the engine's nonce
proves the secret instead. When the client cannot reach the port, it
goes through the controller's relay (`engine_transfer`): the engine connects
there, and the same TLS runs inside the splice.

An unauthenticated peer costs the listener little: at most the guard's cap
of connections at once, each for its deadline (see `ListenerGuard`), one
TLS handshake, and one use of a book it names.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ipython1.common.listenguard import ListenerGuard
from ipython1.engine.blobs import BlobStore
from ipython1.transport.data.buffers import buffer_for
from ipython1.transport.data.local import BOOK_TTL, BOOK_USES
from ipython1.transport.data.refs import MAX_FRAMES, TransferError
from ipython1.transport.data.seal import OFFER, RECORDS, SEALED, TO_CLIENT, SealedStream, seal_key
from ipython1.transport.data.stream import (
    HEAD,
    MAX_STREAMS,
    NONCE_SIZE,
    PAIR_TIMEOUT,
    PLAIN_MAGIC,
    STATUS_OK,
    STRIPE,
    TLS_HANDSHAKE,
    TLSStream,
    connect,
    plain_proof,
    recv_exact,
    recv_frame,
    recv_into_exact,
    refuse,
    refuse_upload,
    stripe_pieces,
)


def serve_transfer(conn: Any, store: BlobStore, direction: bytes, blob_id: bytes,
                   sizes: list[int]) -> bool:
    """Receive an upload into store, or send a download, once the header was accepted."""
    if direction == b"U":
        # The client may send the command using this value as soon as we
        # accept: announce it, so that command waits for it.
        store.arriving(blob_id)
        try:
            conn.sendall(STATUS_OK)
            frames = [recv_frame(conn, size) for size in sizes]
        except BaseException as e:
            store.failed(blob_id, str(e) or type(e).__name__)
            if isinstance(e, TransferError):  # a sealed frame failed, say: tell the client
                refuse_upload(conn, str(e))
            raise
        store.put(blob_id, frames)
        conn.sendall(STATUS_OK)
        return True
    try:
        with store.lend(blob_id) as frames:
            if [len(f) for f in frames] != sizes:
                raise TransferError("the value held by the engine has other sizes")
            conn.sendall(STATUS_OK)
            for frame in frames:
                conn.sendall(frame)
    except TransferError as e:
        refuse(conn, str(e))
        return False
    return True


class TransferListener:
    """An engine's listener for transfers announced as books of tickets.

    A book (pairing id, secret) is good for a number of transfers until
    BOOK_TTL; every try spends a use, a wrong guess too. Subclasses say how
    a connection proves itself (`_serve`).
    """

    def __init__(self, store: BlobStore, listener: socket.socket, name: str) -> None:
        self.store = store
        self._listener = listener
        self._books: dict[bytes, list[Any]] = {}  # pairing id -> [expiry, secret, uses, plain]
        self._lock = threading.Lock()
        self._closed = False
        self.transfers = 0
        self.guard = ListenerGuard(name)
        threading.Thread(target=self.guard.serve, name=name, daemon=True,
                         args=(self._listener, self._serve_one, lambda: self._closed)).start()

    def expect(self, pairing_id: bytes, secret: bytes, uses: int = BOOK_USES,
               plain: bool = False) -> None:
        """Allow uses transfers by whoever presents pairing_id and secret, within BOOK_TTL."""
        now = time.monotonic()
        with self._lock:
            for key in [k for k, book in self._books.items() if book[0] < now]:
                del self._books[key]
            self._books[pairing_id] = [now + BOOK_TTL, secret, uses, plain]

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

    def _use(self, pairing_id: bytes, check: Callable[[bytes], bool],
             plain: bool = False) -> str | None:
        """Spend one ticket of a book if check(its secret) holds; return why not, or None."""
        with self._lock:  # every try spends a ticket, even a wrong guess
            book = self._books.get(pairing_id)
            if book is None or book[0] < time.monotonic():
                self._books.pop(pairing_id, None)
                return "unknown or expired transfer"
            book[2] -= 1
            if book[2] <= 0:
                del self._books[pairing_id]
        if plain and not book[3]:
            return ("unencrypted transfers are off: this controller was not started with "
                    "--data-encryption=off")
        return None if check(book[1]) else "wrong transfer secret"

    def _serve_one(self, sock: socket.socket) -> None:
        with sock:
            try:
                self._serve(sock)
            except (OSError, TransferError, ssl.SSLError, struct.error):
                pass  # the client went away: it gets its own error

    def _serve(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def _finish(self, conn: Any, head: bytes, refused: str | None) -> None:
        """Serve a transfer whose header was read and checked (refused: why not)."""
        _pairing, _secret, direction, blob_id, count = HEAD.unpack(head)
        if refused is None and (direction not in b"UD" or count > MAX_FRAMES):
            refused = "malformed transfer"
        if refused is not None:
            refuse(conn, refused)
            return
        sizes = list(struct.unpack(f"<{count}Q", recv_exact(conn, 8 * count)))
        if self._serve_body(conn, direction, blob_id, sizes):
            self.transfers += 1

    def _serve_body(self, conn: Any, direction: bytes, blob_id: bytes, sizes: list[int]) -> bool:
        return serve_transfer(conn, self.store, direction, blob_id, sizes)


class Stripes:
    """The transfers under way in stripes: one value over several connections at once.

    The first stripe of an upload makes the buffers every stripe fills and
    announces the value; the last one in stores it. The first stripe of a
    download lends the value's frames until every stripe has sent its slice
    (or, for stripes that never come, PAIR_TIMEOUT).
    """

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._uploads: dict[bytes, list[Any]] = {}  # blob id -> [frames, stripes to come]
        self._downloads: dict[bytes, _Lending] = {}

    def receive(self, conn: Any, blob_id: bytes, sizes: list[int], count: int,
                pieces: list[tuple[int, int, int]]) -> bool:
        with self._lock:
            entry = self._uploads.get(blob_id)
            if entry is None:
                entry = self._uploads[blob_id] = [[buffer_for(s) for s in sizes], count]
                self.store.arriving(blob_id)  # a command using it waits for the last stripe
        frames = entry[0]
        try:
            conn.sendall(STATUS_OK)
            for frame, start, end in pieces:
                with memoryview(frames[frame]) as view:
                    recv_into_exact(conn, view[start:end])
        except BaseException as e:
            with self._lock:
                self._uploads.pop(blob_id, None)
            self.store.failed(blob_id, str(e) or type(e).__name__)
            if isinstance(e, TransferError):
                refuse_upload(conn, str(e))
            raise
        with self._lock:
            entry[1] -= 1
            last = entry[1] == 0 and self._uploads.pop(blob_id, None) is entry
        if last:
            self.store.put(blob_id, frames)
        conn.sendall(STATUS_OK)
        return True

    def send(self, conn: Any, blob_id: bytes, sizes: list[int], count: int,
             pieces: list[tuple[int, int, int]]) -> bool:
        with self._lock:
            lending = self._downloads.get(blob_id)
            if lending is None:
                try:
                    lending = _Lending(self.store.lend(blob_id), count,
                                       lambda: self._downloads.pop(blob_id, None))
                except TransferError as e:
                    refuse(conn, str(e))
                    return False
                self._downloads[blob_id] = lending
            started = lending.start()
        if not started:
            refuse(conn, "a stripe came too late")
            return False
        try:
            if [len(f) for f in lending.frames] != sizes:
                raise TransferError("the value held by the engine has other sizes")
            conn.sendall(STATUS_OK)
            for frame, start, end in pieces:
                with memoryview(lending.frames[frame]) as view:
                    conn.sendall(view.cast("B")[start:end])
        except TransferError as e:
            refuse(conn, str(e))
            return False
        finally:
            lending.end()
        return True


class _Lending:
    """A value lent to the stripes of one download, given back when they are done."""

    def __init__(self, lent: Any, count: int, forget: Callable[[], Any]) -> None:
        self._lent = lent
        self.frames = lent.__enter__()
        self._waiting, self._running = count, 0
        self._forget = forget
        self._lock = threading.Lock()
        self._timer = threading.Timer(PAIR_TIMEOUT, self._give_up)
        self._timer.daemon = True
        self._timer.start()

    def start(self) -> bool:
        with self._lock:
            if self._waiting <= 0:
                return False
            self._waiting -= 1
            self._running += 1
            return True

    def end(self) -> None:
        with self._lock:
            self._running -= 1
        self._maybe_done()

    def _give_up(self) -> None:  # the stripes that have not come will not
        with self._lock:
            self._waiting = 0
        self._maybe_done()

    def _maybe_done(self) -> None:
        with self._lock:
            if self._waiting or self._running or self._lent is None:
                return
            lent, self._lent = self._lent, None
            self.frames = []  # the timer refers to us: the value's memory must not wait for it
        self._timer.cancel()
        self._forget()
        lent.__exit__(None, None, None)


class DirectServer(TransferListener):
    """The engine's TCP data port: transfers with clients on other hosts, no relay.

    context() gives the engine's TLS server context (None until it has one);
    ip is the interface to listen on ("": every one).
    """

    def __init__(self, store: BlobStore, context: Callable[[], ssl.SSLContext | None],
                 ip: str = "", port: int = 0) -> None:
        if ip:  # the one interface the cluster uses
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            listener = socket.create_server((ip, port), family=family, backlog=128)
        elif socket.has_dualstack_ipv6():
            listener = socket.create_server(("", port), family=socket.AF_INET6,
                                            dualstack_ipv6=True, backlog=128)
        else:
            listener = socket.create_server(("", port), backlog=128)
        self.port = int(listener.getsockname()[1])
        self._context = context
        self._stripes = Stripes(store)
        super().__init__(store, listener, f"engine data port {self.port}")

    def info(self) -> dict[str, Any]:
        """What the engine advertises at registration (``info["direct_data"]``)."""
        return {"port": self.port}

    def _serve_body(self, conn: Any, direction: bytes, blob_id: bytes, sizes: list[int]) -> bool:
        index, count = STRIPE.unpack(recv_exact(conn, STRIPE.size))
        if count <= 1:
            return serve_transfer(conn, self.store, direction, blob_id, sizes)
        if index >= count or count > MAX_STREAMS:
            refuse(conn, "malformed transfer")
            return False
        pieces = stripe_pieces(sizes, index, count)
        if direction == b"U":
            return self._stripes.receive(conn, blob_id, sizes, count, pieces)
        return self._stripes.send(conn, blob_id, sizes, count, pieces)

    def _serve(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(self.guard.deadline)  # unauthenticated: be quick
            first = sock.recv(1, socket.MSG_PEEK)
            if first == bytes([TLS_HANDSHAKE]):
                context = self._context()
                if context is None:
                    return
                conn: Any = TLSStream(sock, context, server_side=True)
                conn.handshake()
                mode, offer = OFFER.unpack(recv_exact(conn, OFFER.size))
                if mode not in (SEALED, RECORDS):
                    return
                head = bytes(recv_exact(conn, HEAD.size))
                pairing_id, secret, _direction, _blob, count = HEAD.unpack(head)
                refused = self._use(pairing_id, lambda s: secrets.compare_digest(s, secret))
                if mode == SEALED:  # the rest of the header came in TLS; from here on, frames
                    rest, raw = b"", b""  # refused: only our answer goes, sealed
                    if refused is None and count <= MAX_FRAMES:
                        rest = bytes(recv_exact(conn, 8 * count + STRIPE.size))
                        raw = conn.leftover()
                    conn = SealedStream(sock, seal_key(offer, pairing_id), TO_CLIENT,
                                        raw=raw, plain=rest)
            elif first == PLAIN_MAGIC[:1]:
                conn = sock
                hello = bytes(recv_exact(sock, len(PLAIN_MAGIC) + 16))
                if not hello.startswith(PLAIN_MAGIC):
                    return
                nonce = secrets.token_bytes(NONCE_SIZE)
                sock.sendall(nonce)
                proof = bytes(recv_exact(sock, 32))
                head = bytes(recv_exact(sock, HEAD.size))
                refused = self._use(hello[len(PLAIN_MAGIC):], lambda s: secrets.compare_digest(
                    plain_proof(s, nonce, head), proof), plain=True)
            else:
                return  # not ours: hang up
        except TimeoutError:
            self.guard.timed_out_one()
            raise
        finally:
            self.guard.release()
        sock.settimeout(PAIR_TIMEOUT)
        self._finish(conn, head, refused)


def engine_transfer(context: ssl.SSLContext, relay: str, pairing_id: bytes, secret: bytes,
                    direction: str, blob_id: bytes, sizes: Sequence[int],
                    store: BlobStore) -> None:
    """Serve one transfer through the relay (blocking; run on a worker thread)."""
    with connect(relay, PAIR_TIMEOUT) as raw:
        raw.sendall(pairing_id)
        tls = TLSStream(raw, context, server_side=True)
        tls.handshake()
        if not secrets.compare_digest(bytes(recv_exact(tls, len(secret))), secret):
            raise TransferError("wrong transfer secret")
        if direction == "upload":
            frames = [recv_frame(tls, size) for size in sizes]
            store.put(blob_id, frames)
            tls.sendall(b"K")
        elif direction == "download":
            with store.lend(blob_id) as frames:
                for frame in frames:
                    tls.sendall(frame)
            recv_exact(tls, 1)
        else:
            raise TransferError(f"unknown direction {direction!r}")
