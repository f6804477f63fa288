"""The bulk data channel: large values between a client and an engine.

Foolscap carries commands; a value larger than `THRESHOLD` travels instead
over a TLS connection *between the client and the engine*, relayed byte for
byte by the controller, which never decrypts (and never unpickles) it:

1. The client asks the controller (over its Foolscap session) for a transfer
   to or from engine E. The controller registers a pairing id with its
   `Relay`, tells E to connect to the relay, and answers the client with the
   pairing id, a secret, the relay address, and E's tubid (which Foolscap
   authenticated when E registered).
2. Client and engine each connect to the relay and send the pairing id; the
   relay splices the two sockets.
3. Through the splice, the client opens TLS to the engine (the engine serves
   its own Foolscap certificate) and checks that the certificate's digest is
   E's tubid; it then sends the secret inside TLS, and the engine refuses the
   transfer unless it matches. Only the holder of the session gets in, and
   only the real engine is talked to.
4. Frames go out with ``sendall`` of each frame and come in with
   ``recv_into`` preallocated buffers; the engine keeps uploaded frames in
   its `BlobStore` under a blob id, and the Foolscap command refers to them
   with a small *blob reference* (frames ``[BLOB_MAGIC, id, sizes]``), so
   the per-engine queue keeps its order.

Every blocking call here runs on a worker thread, never on a reactor thread.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from ipython1.kernel.errors import KernelError

THRESHOLD = 256 * 2**10  # values at least this large take the data channel
BLOB_MAGIC = b"IPB1"
PAIR_TIMEOUT = 30.0  # seconds a relay end waits for its peer
BLOB_TTL = 600.0  # seconds an unclaimed blob is kept
_CHUNK = 4 * 2**20


class TransferError(KernelError):
    """A bulk transfer failed (peer vanished, wrong certificate, bad secret)."""


# -- blob references ---------------------------------------------------------------


def blob_ref(blob_id: bytes, sizes: Sequence[int]) -> list[bytes]:
    """Return the frames that stand for a blob held by an engine."""
    return [BLOB_MAGIC, blob_id, struct.pack(f"<{len(sizes)}Q", *sizes)]


def parse_blob_ref(frames: Sequence[bytes]) -> tuple[bytes, list[int]] | None:
    """Return (blob id, frame sizes) if frames are a blob reference, else None."""
    if len(frames) != 3 or frames[0] != BLOB_MAGIC:
        return None
    sizes = frames[2]
    return bytes(frames[1]), list(struct.unpack(f"<{len(sizes) // 8}Q", sizes))


def is_large(frames: Sequence[bytes]) -> bool:
    return sum(len(f) for f in frames) >= THRESHOLD


def new_blob_id() -> bytes:
    return secrets.token_bytes(16)


class BlobStore:
    """Frames held by an engine between a transfer and the command using them."""

    def __init__(self, ttl: float = BLOB_TTL) -> None:
        self._blobs: dict[bytes, tuple[float, list[Any]]] = {}
        self._lock = threading.Lock()
        self._ttl = ttl

    def put(self, blob_id: bytes, frames: list[Any]) -> None:
        now = time.monotonic()
        with self._lock:
            # Drop what nobody claimed in time, so failed commands leak nothing.
            for key in [k for k, (t, _) in self._blobs.items() if now - t > self._ttl]:
                del self._blobs[key]
            self._blobs[blob_id] = (now, frames)

    def take(self, blob_id: bytes) -> list[Any]:
        with self._lock:
            entry = self._blobs.pop(blob_id, None)
        if entry is None:
            raise TransferError("a large value was not received by the engine (or expired)")
        return entry[1]

    def __len__(self) -> int:
        return len(self._blobs)


# -- TLS identities ---------------------------------------------------------------------


def tubid_of(der: bytes) -> str:
    """Return the Foolscap tubid of a DER certificate."""
    return base64.b32encode(hashlib.sha1(der).digest()).decode().lower().rstrip("=")


def server_context(cert_pem: bytes) -> ssl.SSLContext:
    """Return a TLS server context for a Foolscap certificate (key + cert PEM)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Bulk data: AES-128-GCM is as safe here and markedly faster than the TLS 1.3
    # default (AES-256), and Python's ssl cannot choose TLS 1.3 suites.
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384")
    fd, path = tempfile.mkstemp(prefix="ipython1-cert-")
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp made it 0600
            f.write(cert_pem)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)
    return ctx


def client_context() -> ssl.SSLContext:
    # The engine's certificate is self-signed; it is checked against its
    # tubid (see _check_peer) instead of against a CA.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# -- socket helpers ------------------------------------------------------------------------


def _recv_exact(sock: Any, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], min(size - got, _CHUNK))
        if not n:
            raise TransferError(f"connection closed after {got} of {size} bytes")
        got += n
    return buf


def _connect(address: str, timeout: float) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# -- the relay (controller) --------------------------------------------------------------------


class Relay:
    """Pair connections by pairing id and splice them; never decrypt."""

    def __init__(self, ip: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((ip, port))
        self._listener.listen(128)
        self.address = f"{ip}:{self._listener.getsockname()[1]}"
        self._expected: dict[bytes, float] = {}
        self._waiting: dict[bytes, socket.socket] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.transfers = 0
        threading.Thread(target=self._accept_loop, name="relay", daemon=True).start()

    def expect(self, pairing_id: bytes) -> None:
        """Allow two connections that present pairing_id to be spliced."""
        with self._lock:
            self._expected[pairing_id] = time.monotonic()

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.close()
        except OSError:
            pass

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pair, args=(sock,), daemon=True).start()

    def _pair(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(PAIR_TIMEOUT)
            pairing_id = bytes(_recv_exact(sock, 16))
        except (OSError, TransferError):
            sock.close()
            return
        with self._lock:
            now = time.monotonic()
            for key in [k for k, t in self._expected.items() if now - t > PAIR_TIMEOUT]:
                self._expected.pop(key)
                stale = self._waiting.pop(key, None)
                if stale is not None:
                    stale.close()
            if pairing_id not in self._expected:
                sock.close()  # unknown or expired: refuse
                return
            peer = self._waiting.pop(pairing_id, None)
            if peer is None:
                self._waiting[pairing_id] = sock
                return
            del self._expected[pairing_id]
            self.transfers += 1
        for s in (sock, peer):
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_pump, args=(peer, sock), daemon=True).start()
        _pump(sock, peer)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy src to dst until EOF, through a pipe with os.splice (no user-space copy)."""
    try:
        if hasattr(os, "splice"):
            r, w = os.pipe()
            try:
                try:  # a larger pipe means fewer splice calls per megabyte
                    import fcntl

                    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 2**20)
                except OSError:
                    pass
                while True:
                    n = os.splice(src.fileno(), w, _CHUNK)
                    if not n:
                        break
                    while n:
                        n -= os.splice(r, dst.fileno(), n)
            finally:
                os.close(r)
                os.close(w)
        else:
            buf = bytearray(_CHUNK)
            while True:
                n = src.recv_into(buf)
                if not n:
                    break
                dst.sendall(memoryview(buf)[:n])
    except OSError:
        pass
    finally:
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


# -- the engine's end ---------------------------------------------------------------------------


def engine_transfer(context: ssl.SSLContext, relay: str, pairing_id: bytes, secret: bytes,
                    direction: str, blob_id: bytes, sizes: Sequence[int],
                    store: BlobStore) -> None:
    """Serve one transfer on the engine (blocking; run on a worker thread)."""
    with _connect(relay, PAIR_TIMEOUT) as raw:
        raw.sendall(pairing_id)
        with context.wrap_socket(raw, server_side=True) as tls:
            if not secrets.compare_digest(bytes(_recv_exact(tls, len(secret))), secret):
                raise TransferError("wrong transfer secret")
            if direction == "upload":
                frames = [_recv_exact(tls, size) for size in sizes]
                store.put(blob_id, frames)
                tls.sendall(b"K")
            elif direction == "download":
                for frame in store.take(blob_id):
                    tls.sendall(frame)
                _recv_exact(tls, 1)
            else:
                raise TransferError(f"unknown direction {direction!r}")


# -- the client's end -------------------------------------------------------------------------------


def client_transfer(ticket: dict[str, Any], frames: Sequence[Any] | None = None,
                    sizes: Sequence[int] | None = None) -> list[bytearray] | None:
    """Upload frames to, or download sizes from, an engine (blocking)."""
    with _connect(ticket["relay"], PAIR_TIMEOUT) as raw:
        raw.sendall(ticket["pairing_id"])
        with client_context().wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True) or b""
            if tubid_of(der) != ticket["tubid"]:
                raise TransferError("the engine's TLS certificate does not match its tubid")
            tls.sendall(ticket["secret"])
            if frames is not None:
                for frame in frames:
                    tls.sendall(frame)
                _recv_exact(tls, 1)
                return None
            received = [_recv_exact(tls, size) for size in sizes or ()]
            tls.sendall(b"K")
            return received
