"""Length-prefixed frames: a 4-byte big-endian length, then that many bytes.

Twisted's ``Int32StringReceiver`` joins its whole unread buffer to each new
read, so a frame of n bytes read in 64 KiB pieces costs O(n²): printing
64 MiB over the command channel took 31.5 s against 1.0 s over Foolscap.
`FrameReceiver` copies each byte once: a frame's declared length is checked
first (a peer that has not authenticated yet may send only small frames),
then the frame is filled in place.
"""

from __future__ import annotations

import struct

from twisted.internet import protocol

HEADER = struct.Struct("!I")
MAX_FRAME = 2**31 - 1  # what the 4-byte prefix allows
MAX_UNAUTHENTICATED_FRAME = 1024  # a hello: [kind, id, 16-byte secret], or "ok"


class FrameTooLong(Exception):
    """A peer declared a frame larger than it may send."""


class FrameReader:
    """Cut a byte stream into frames, copying each byte once; pure (no I/O).

    ``limit`` is the largest frame accepted now; `feed` raises FrameTooLong
    from the header of a longer one, before any of it is kept.
    """

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self.limit = limit
        self._header = bytearray()
        self._frame: bytearray | None = None
        self._got = 0

    @property
    def buffered(self) -> int:
        """Return how many bytes of an unfinished frame (or header) are held."""
        return len(self._header) + self._got

    def feed(self, data: bytes) -> list[bytes | bytearray]:
        """Take what was read; return the frames it completed, in order."""
        frames: list[bytes | bytearray] = []
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            frame = self._frame
            if frame is None:
                need = HEADER.size - len(self._header)
                if not self._header and end - pos >= HEADER.size:
                    (size,) = HEADER.unpack_from(view, pos)
                    pos += HEADER.size
                else:
                    self._header += view[pos:pos + need]
                    pos += min(need, end - pos)
                    if len(self._header) < HEADER.size:
                        break
                    (size,) = HEADER.unpack(self._header)
                    self._header.clear()
                if size > self.limit:
                    raise FrameTooLong(f"a frame of {size} bytes (at most {self.limit} now)")
                if end - pos >= size:  # the whole frame is in this read: one copy
                    frames.append(bytes(view[pos:pos + size]))
                    pos += size
                    continue
                # Zero pages: memory is committed only as the frame arrives.
                frame = self._frame = bytearray(size)
                self._got = 0
            take = min(len(frame) - self._got, end - pos)
            frame[self._got:self._got + take] = view[pos:pos + take]
            self._got += take
            pos += take
            if self._got == len(frame):
                frames.append(frame)
                self._frame, self._got = None, 0
        return frames


    def unfilled(self) -> memoryview | None:
        """Return the unread rest of a frame under way, to receive into in place."""
        if self._frame is None:
            return None
        return memoryview(self._frame)[self._got:]

    def filled(self, n: int) -> list[bytes | bytearray]:
        """Count n bytes received into unfilled(); return the frame if it is complete."""
        assert self._frame is not None
        self._got += n
        if self._got < len(self._frame):
            return []
        done, self._frame, self._got = self._frame, None, 0
        return [done]


def frame(payload: bytes) -> bytes:
    """Return payload with its length prefix (for small payloads: one write)."""
    return HEADER.pack(len(payload)) + payload


class FrameReceiver(protocol.Protocol):
    """A protocol of frames; subclasses define frameReceived and say when the
    peer is authenticated (until then only MAX_UNAUTHENTICATED_FRAME bytes)."""

    def __init__(self) -> None:
        self._reader = FrameReader(MAX_UNAUTHENTICATED_FRAME)

    def authenticated(self, limit: int = MAX_FRAME) -> None:
        """Let the peer send frames up to limit bytes from now on."""
        self._reader.limit = limit

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
        except FrameTooLong as e:
            self.frameTooLong(str(e))
            return
        for payload in frames:
            if self.transport is None or self.transport.disconnecting:
                return
            self.frameReceived(payload)

    def frameReceived(self, payload: bytes | bytearray) -> None:
        raise NotImplementedError

    def frameTooLong(self, why: str) -> None:
        self.transport.loseConnection()

    def sendFrame(self, payload: bytes) -> None:
        """Send one frame (a large payload without copying it into the header's write)."""
        if len(payload) > MAX_FRAME:
            raise FrameTooLong(f"a frame of {len(payload)} bytes cannot be sent")
        if len(payload) < 1 << 16:
            self.transport.write(frame(payload))
        else:
            self.transport.writeSequence([HEADER.pack(len(payload)), payload])


