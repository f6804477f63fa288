"""One transfer's bytes: its header, the engine's TLS identity, framing, socket helpers.

Every path starts the same way: the client sends `HEAD` (pairing id,
secret, direction, blob id, frame count) and the frame sizes; the engine
answers `STATUS_OK`, or `STATUS_REFUSED` and its reason. Over TCP the
client first opens TLS to the engine (the engine serves its own Foolscap
certificate) and checks that the certificate's digest is the engine's
tubid, so the secret goes to the real engine only, inside TLS.

By default the bytes after the header then leave TLS as sealed AES-GCM
frames (`ipython1.transport.data.seal`); with ``--data-encryption=tls``,
`TLSStream` carries them too. It runs TLS through memory BIOs: the encrypted records of a
frame go out in writes of several MiB and come in with reads as large.
Python's `SSLSocket` makes one system call per 16 KiB record instead: on a
veth + bridge path that cost ~3x the CPU, and with Nagle on, 4x
(docs/performance.md).

Unencrypted, when the controller was told so (``--data-encryption=off``):
the client sends `PLAIN_MAGIC` and the pairing id, the engine answers a
nonce, and the client proves it holds the secret with an HMAC of nonce and
header (`plain_proof`); the secret never crosses the wire, the bytes go as
they are.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import mmap
import os
import socket
import ssl
import struct
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from ipython1.common.addresses import split_host_port
from ipython1.common.localhost import env_enabled
from ipython1.transport.data.buffers import buffer_for
from ipython1.transport.data.refs import TransferError

DIRECT_ENV = "IPYTHON1_DIRECT_DATA"  # "0": no engine data port, no direct connection: the relay
PAIR_TIMEOUT = 30.0  # seconds a relay end waits for its peer
DRAIN_TIMEOUT = 5.0  # seconds a refused upload's sender has to stop
CHUNK = 4 * 2**20
# pairing id, secret, direction (U or D), blob id, frame count; the sizes follow.
HEAD = struct.Struct("<16s32s1s16sI")
STATUS_OK = b"K"
STATUS_REFUSED = b"E"
TLS_HANDSHAKE = 0x16  # the first byte of a TLS connection (a handshake record)
PLAIN_MAGIC = b"IPD1"  # the first bytes of an unencrypted one
NONCE_SIZE = 32
# A direct transfer of at least STRIPE_MIN bytes goes over STREAMS connections at once,
# each with a slice of the bytes: encryption on as many cores on either side.
STREAMS_ENV = "IPYTHON1_DATA_STREAMS"
STREAMS_DEFAULT = 2
MAX_STREAMS = 8
STRIPE_MIN = 32 * 2**20
STRIPE = struct.Struct("<BB")  # after a direct transfer's sizes: stripe index, stripe count
WRITE_BATCH = 4 * 2**20  # encrypted bytes gathered before one sendall
RECORD_INPUT = 2**20  # plaintext handed to OpenSSL per write (64 records)


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


def recv_exact(sock: Any, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], min(size - got, CHUNK))
        if not n:
            raise TransferError(f"connection closed after {got} of {size} bytes")
        got += n
    return buf


def recv_frame(sock: Any, size: int) -> bytearray | mmap.mmap:
    """Receive one frame into a fresh `buffer_for` buffer."""
    buf = buffer_for(size)
    view = memoryview(buf)
    got = 0
    try:
        while got < size:
            n = sock.recv_into(view[got:], min(size - got, CHUNK))
            if not n:
                raise TransferError(f"connection closed after {got} of {size} bytes")
            got += n
    finally:
        view.release()
    return buf


def connect(address: str, timeout: float) -> socket.socket:
    host, port = split_host_port(address)
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock

def refuse(sock: Any, reason: str) -> None:
    message = reason.encode()[:1000]
    try:
        sock.sendall(STATUS_REFUSED + struct.pack("<H", len(message)) + message)
    except OSError:
        pass


def refuse_upload(conn: Any, reason: str) -> None:
    """Refuse an upload under way: say why, then take in (and drop) what the client still sends.

    Closed with its bytes unread, the connection would be reset, and the
    client would hear of a broken pipe instead of the reason (a sealed frame
    that failed authentication, say). DRAIN_TIMEOUT bounds the wait.
    """
    refuse(conn, reason)
    sock = getattr(conn, "sock", conn)  # under the TLS or sealed stream, if any
    scratch = bytearray(CHUNK)
    deadline = time.monotonic() + DRAIN_TIMEOUT
    try:
        sock.shutdown(socket.SHUT_WR)
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv_into(scratch):
                break
    except OSError:
        pass


def expect_ok(sock: Any, who: str) -> None:
    status = sock.recv(1)
    if status == STATUS_OK:
        return
    if status == STATUS_REFUSED:
        (size,) = struct.unpack("<H", recv_exact(sock, 2))
        reason = bytes(recv_exact(sock, size)).decode(errors="replace")
        raise TransferError(f"{who} refused the transfer: {reason}")
    raise TransferError(f"{who} closed the connection (it refused the transfer or went away)")



def direct_enabled() -> bool:
    """Tell whether IPYTHON1_DIRECT_DATA lets this process use direct connections."""
    return env_enabled(DIRECT_ENV)


def streams() -> int:
    """Return how many connections a large direct transfer uses ($IPYTHON1_DATA_STREAMS, 2)."""
    try:
        return max(1, min(MAX_STREAMS, int(os.environ.get(STREAMS_ENV, STREAMS_DEFAULT))))
    except ValueError:
        return STREAMS_DEFAULT


def stripe_count(sizes: Sequence[int], wanted: int) -> int:
    """Return how many stripes a transfer of frames of these sizes takes (1: not striped)."""
    return max(1, min(wanted, MAX_STREAMS)) if sum(sizes) >= STRIPE_MIN else 1


def stripe_pieces(sizes: Sequence[int], index: int, count: int) -> list[tuple[int, int, int]]:
    """Return stripe index of count as (frame, start, end) pieces of the frames' bytes.

    The frames' bytes, end to end, are cut into count slices as equal as can be.
    """
    total = sum(sizes)
    lo, hi = total * index // count, total * (index + 1) // count
    pieces, offset = [], 0
    for frame, size in enumerate(sizes):
        start, end = max(lo, offset), min(hi, offset + size)
        if start < end:
            pieces.append((frame, start - offset, end - offset))
        offset += size
    return pieces


def recv_into_exact(sock: Any, view: memoryview) -> None:
    """Fill view from sock."""
    got, size = 0, len(view)
    while got < size:
        n = sock.recv_into(view[got:], min(size - got, CHUNK))
        if not n:
            raise TransferError(f"connection closed after {got} of {size} bytes")
        got += n


def transfer_head(ticket: dict[str, Any], upload: bool, sizes: Sequence[int]) -> bytes:
    """Return the header and sizes a client sends for one transfer."""
    return HEAD.pack(ticket["pairing_id"], ticket["secret"], b"U" if upload else b"D",
                     ticket["blob_id"], len(sizes)) + struct.pack(f"<{len(sizes)}Q", *sizes)


def plain_proof(secret: bytes, nonce: bytes, head: bytes) -> bytes:
    """Return the HMAC that shows the secret's holder sent head, for this nonce only."""
    return hmac.new(secret, b"ipython1-data-plain\0" + nonce + head, hashlib.sha256).digest()


class TLSStream:
    """TLS over a blocking socket through memory BIOs: few, large system calls.

    Has what the transfer code uses of a socket: ``sendall``, ``recv``,
    ``recv_into``. Whatever was written is sent before reading.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext,
                 server_side: bool = False, initial: bytes = b"") -> None:
        self.sock = sock
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._incoming.write(initial)  # bytes already read off the socket (a peek, say)
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._buffer = bytearray(CHUNK)
        self._view = memoryview(self._buffer)

    def handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._fill()
        self._flush()

    def peer_certificate(self) -> bytes:
        return self._tls.getpeercert(binary_form=True) or b""

    def sendall(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        for offset in range(0, len(view), RECORD_INPUT):
            self._tls.write(view[offset:offset + RECORD_INPUT])
            if self._outgoing.pending >= WRITE_BATCH:
                self._flush()
        self._flush()

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        nbytes = nbytes or len(view)
        while True:
            try:
                return self._tls.read(nbytes, view)  # type: ignore[no-any-return]
            except ssl.SSLWantReadError:
                if not self._fill(eof_ok=True):
                    return 0
            except ssl.SSLZeroReturnError:
                return 0

    def recv(self, nbytes: int) -> bytes:
        buf = bytearray(nbytes)
        return bytes(buf[:self.recv_into(buf, nbytes)])

    def leftover(self) -> bytes:
        """Stop using TLS: return the bytes read off the socket past the last record read."""
        if self._tls.pending():
            raise TransferError("TLS data came after the header: not a sealed transfer")
        return self._incoming.read()

    def _flush(self) -> None:
        if self._outgoing.pending:
            self.sock.sendall(self._outgoing.read())

    def _fill(self, eof_ok: bool = False) -> bool:
        self._flush()
        n = self.sock.recv_into(self._view)
        if not n:
            if eof_ok:
                return False
            raise TransferError("the connection closed during the TLS handshake")
        self._incoming.write(self._view[:n])
        return True
