"""Sealed bulk frames: a direct transfer's bytes as AES-128-GCM frames beside its TLS session.

The default of ``--data-encryption`` (``sealed``). The TLS handshake runs as
in the ``tls`` mode: the client checks that the engine's certificate is the
engine's tubid and sends the transfer's header and secret inside TLS. With
them it sends a *seal offer*: 16 random bytes. From then on neither end
writes TLS records: every byte goes as a frame straight on the socket::

    header (plaintext length u32, flags u8)  -- authenticated, not encrypted
    ciphertext (the plaintext's length)
    tag (16 bytes)

under the key HKDF-SHA256(offer, info = label + pairing id),
and the nonce direction byte + 3 zero bytes + 64-bit frame counter: a key
per connection (each stripe its own) and a counter per direction, so a nonce
is never used twice. A frame altered, dropped, replayed or reordered fails
its tag (the counter is in the nonce); the last frame of each message the
sender wrote carries `FINAL`; the receiver knows every byte count it waits
for (the header's sizes), so a stream that ends early fails too. Any failure
is a `TransferError` and ends the connection.

Why the client alone makes the key: it travels inside a TLS session both
ends made fresh keys for (ECDHE) and that the client checked is the engine's,
so nobody on the wire reads it; the engine accepts no frame before that
session proved the ticket's secret. A random from the engine too would cost
a round trip per connection and protect only against a client that reuses
its randomness, which ours (`os.urandom`) does not.

Why not TLS records: the stdlib's memory-BIO path copies every byte through
BIOs and hands 16 KiB records to Python one by one (~175 ms of CPU for
256 MiB on the benchmark VM); `cryptography`'s AES-GCM seals 256 MiB in
~18 ms from the sender's memory into a reused buffer, and opens it from a
reused buffer straight into the destination, both without the GIL.
"""

from __future__ import annotations

import struct
import threading
import weakref
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ipython1.transport.data.refs import TransferError

FRAME = 2**20  # plaintext per frame: fits the caches on both sides
FRAME_HEAD = struct.Struct("<IB")  # plaintext length, flags
FINAL = 0x01  # the flag of a message's last frame
TAG_SIZE = 16
KEY_SIZE = 16  # AES-128: as safe here as AES-256, and faster
# The client's first bytes inside TLS: the mode it wants (`SEALED` or `RECORDS`), its random.
OFFER = struct.Struct("<1s16s")
SEALED, RECORDS = b"S", b"T"
TO_ENGINE, TO_CLIENT = b"C", b"E"  # the nonce's direction byte
KEY_LABEL = b"ipython1 data seal v1\0"
SMALL = 256  # a connection's buffers until a message needs a whole frame (statuses need less)
# The controller's --data-encryption: how direct transfers go ("on", the old default: sealed).
ENCRYPTION_MODES = ("sealed", "tls", "off")


def encryption_mode(value: str) -> str:
    """Return the --data-encryption mode value names, or raise ValueError."""
    mode = "sealed" if value == "on" else value
    if mode not in ENCRYPTION_MODES:
        raise ValueError("--data-encryption must be sealed (the default), tls or off")
    return mode


def seal_key(offer: bytes, pairing_id: bytes) -> bytes:
    """Return the AES key of one connection from the client's random offer."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None,
                info=KEY_LABEL + pairing_id).derive(offer)


class Spares:
    """Frame buffers of finished connections, for the next ones: fresh memory is dear.

    A connection takes up to two (one to seal into, one to receive into)
    once it moves a message larger than `SMALL`; they come back when it ends.
    """

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._spare: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, size: int, taken: list[bytearray]) -> bytearray:
        """Return a buffer of size bytes (old bytes in it), noted in taken."""
        with self._lock:
            buf = next((b for b in self._spare if len(b) == size), None)
            if buf is not None:
                self._spare.remove(buf)
        taken.append(bytearray(size) if buf is None else buf)
        return taken[-1]

    def give_back(self, taken: list[bytearray]) -> None:
        with self._lock:
            self._spare.extend(taken[:max(0, self.keep - len(self._spare))])
        taken.clear()


SPARES = Spares()


def frame_nonce(direction: bytes, counter: int) -> bytes:
    return direction + bytes(3) + counter.to_bytes(8, "big")


class Sealer:
    """Seals one direction's messages into frames, in one reused buffer."""

    def __init__(self, key: bytes, direction: bytes, frame: int = FRAME,
                 taken: list[bytearray] | None = None) -> None:
        self._aes = algorithms.AES(key)
        self._direction = direction
        self.frame = frame
        self.taken = [] if taken is None else taken  # what it took of SPARES
        self._counter = 0
        self._out = bytearray(SMALL)  # a full frame's buffer once a message needs it
        self._view = memoryview(self._out)

    def seal(self, data: memoryview, final: bool) -> memoryview:
        """Return the frame of data (at most `frame` bytes), valid until the next call."""
        size = len(data)
        end = FRAME_HEAD.size + size
        if end + TAG_SIZE > len(self._out):
            self._out = SPARES.take(FRAME_HEAD.size + self.frame + TAG_SIZE, self.taken)
            self._view = memoryview(self._out)
        FRAME_HEAD.pack_into(self._out, 0, size, FINAL if final else 0)
        encryptor = Cipher(self._aes, modes.GCM(frame_nonce(self._direction,
                                                            self._counter))).encryptor()
        self._counter += 1
        encryptor.authenticate_additional_data(self._view[:FRAME_HEAD.size])
        encryptor.update_into(data, self._view[FRAME_HEAD.size:end])
        encryptor.finalize()
        self._view[end:end + TAG_SIZE] = encryptor.tag
        return self._view[:end + TAG_SIZE]

    def frames(self, data: Any) -> Any:
        """Yield the frames of one message (nothing for an empty one)."""
        view = memoryview(data).cast("B")
        for offset in range(0, len(view), self.frame):
            yield self.seal(view[offset:offset + self.frame], offset + self.frame >= len(view))


class Opener:
    """Opens one direction's frames, in order, into whatever memory the caller gives."""

    def __init__(self, key: bytes, direction: bytes, frame: int = FRAME) -> None:
        self._aes = algorithms.AES(key)
        self._direction = direction
        self.frame = frame
        self._counter = 0

    def size(self, head: bytes | memoryview) -> tuple[int, bool]:
        """Return a frame header's plaintext length and final flag (checked, not yet trusted)."""
        size, flags = FRAME_HEAD.unpack(head)
        if size > self.frame or flags & ~FINAL:
            raise TransferError("a sealed frame's header is malformed (altered on the way?)")
        return size, bool(flags & FINAL)

    def open_into(self, head: bytes | memoryview, sealed: memoryview, out: memoryview) -> None:
        """Decrypt sealed (ciphertext + tag) into out (its length), or raise TransferError.

        out may be sealed's own memory. On failure out holds garbage: the
        caller drops the whole transfer.
        """
        size = len(sealed) - TAG_SIZE
        decryptor = Cipher(self._aes, modes.GCM(frame_nonce(self._direction, self._counter),
                                                bytes(sealed[size:]))).decryptor()
        self._counter += 1
        decryptor.authenticate_additional_data(bytes(head))
        decryptor.update_into(sealed[:size], out)
        try:
            decryptor.finalize()
        except InvalidTag:
            raise TransferError("a sealed frame failed authentication: the bytes were altered, "
                                "dropped, replayed or reordered on the way") from None


class SealedStream:
    """Sealed frames over a blocking socket: ``sendall``, ``recv``, ``recv_into``.

    raw: bytes already read off the socket (past the TLS records); plain:
    bytes of the peer's message that came inside TLS and are still to be
    read (the rest of the client's header, on the engine's side).
    """

    def __init__(self, sock: Any, key: bytes, sending: bytes, raw: bytes = b"",
                 plain: bytes = b"", frame: int = FRAME) -> None:
        self.sock = sock
        self._taken: list[bytearray] = []
        self._sealer = Sealer(key, sending, frame, self._taken)
        self._opener = Opener(key, TO_CLIENT if sending == TO_ENGINE else TO_ENGINE, frame)
        self._raw = raw
        self._head = bytearray(FRAME_HEAD.size)
        self._sealed = bytearray(SMALL)  # received frames land here first
        self._frame = frame
        weakref.finalize(self, SPARES.give_back, self._taken)  # when the connection is done
        self._plain = memoryview(plain)  # opened bytes the caller has not read yet
        self._plain_at = 0

    def sendall(self, data: Any) -> None:
        for frame in self._sealer.frames(data):
            self.sock.sendall(frame)

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        nbytes = min(nbytes or len(view), len(view))
        if self._plain_at < len(self._plain):
            n = min(nbytes, len(self._plain) - self._plain_at)
            view[:n] = self._plain[self._plain_at:self._plain_at + n]
            self._plain_at += n
            return n
        if not self._fill(memoryview(self._head), eof_ok=True):
            return 0
        size, _final = self._opener.size(self._head)
        if size + TAG_SIZE > len(self._sealed):
            self._sealed = SPARES.take(self._frame + TAG_SIZE, self._taken)
        sealed = memoryview(self._sealed)[:size + TAG_SIZE]
        self._fill(sealed)
        if size <= nbytes:  # the whole frame is wanted: open it straight into the caller's memory
            self._opener.open_into(self._head, sealed, view[:size])
            return size
        self._opener.open_into(self._head, sealed, sealed[:size])
        self._plain, self._plain_at = sealed[:size], 0
        return self.recv_into(view, nbytes)

    def recv(self, nbytes: int) -> bytes:
        buf = bytearray(nbytes)
        return bytes(buf[:self.recv_into(buf, nbytes)])

    def _fill(self, view: memoryview, eof_ok: bool = False) -> bool:
        """Fill view from the socket; False on a clean end before any byte, if eof_ok."""
        got = 0
        if self._raw:
            got = min(len(view), len(self._raw))
            view[:got] = self._raw[:got]
            self._raw = self._raw[got:]
        while got < len(view):
            n = self.sock.recv_into(view[got:])
            if not n:
                if eof_ok and got == 0:
                    return False
                raise TransferError(f"the connection closed inside a sealed frame "
                                    f"({got} of its {len(view)} bytes came)")
            got += n
        return True
