"""An engine's blob store: large values between their transfer and the command using them."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from ipython1.transport.data.buffers import private_copy
from ipython1.transport.data.refs import TransferError

BLOB_TTL = 600.0  # seconds an unclaimed blob is kept


class BlobStore:
    """Frames held by an engine between a transfer and the command using them.

    A value to be downloaded may be *lent*: its frames are views of the
    user's own memory, sent without a copy. `settle`, called on the shell
    thread before each command, keeps that safe: it copies what is still
    waiting for its download, and waits for downloads under way, so user
    code never changes a value while it is sent.

    An upload may be *announced* (`arriving`) before its bytes are in: the
    command using it can then be on its way meanwhile, and `take` waits for
    the upload to end (`put`, or `failed` with the reason).
    """

    def __init__(self, ttl: float = BLOB_TTL) -> None:
        self._blobs: dict[bytes, tuple[float, list[Any], bool]] = {}
        self._lock = threading.Lock()
        self._ttl = ttl
        self._lent = 0  # entries holding views of user memory
        self._sending: set[threading.Event] = set()  # downloads of lent memory under way
        # Announced uploads: blob id -> [time, done, why it failed or None].
        self._arriving: dict[bytes, list[Any]] = {}

    def put(self, blob_id: bytes, frames: list[Any], lent: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            # Drop what nobody claimed in time, so failed commands leak nothing.
            for key in [k for k, entry in self._blobs.items() if now - entry[0] > self._ttl]:
                self._lent -= self._blobs.pop(key)[2]
            for key in [k for k, a in self._arriving.items() if now - a[0] > self._ttl]:
                del self._arriving[key]
            self._blobs[blob_id] = (now, frames, lent)
            self._lent += lent
            arriving = self._arriving.pop(blob_id, None)
        if arriving is not None:
            arriving[1].set()

    def arriving(self, blob_id: bytes) -> None:
        """Announce an upload under way: `take` will wait for it."""
        with self._lock:
            self._arriving[blob_id] = [time.monotonic(), threading.Event(), None]

    def failed(self, blob_id: bytes, reason: str) -> None:
        """Say an announced upload will not come, and why."""
        with self._lock:
            arriving = self._arriving.get(blob_id)
            if arriving is None:
                return
            arriving[2] = reason
        arriving[1].set()

    def take(self, blob_id: bytes) -> list[Any]:
        """Remove and return a blob's frames (a copy if they were lent)."""
        with self._lock:
            arriving = self._arriving.get(blob_id)
        if arriving is not None:
            arriving[1].wait(self._ttl)
            with self._lock:
                self._arriving.pop(blob_id, None)
            if arriving[2] is not None:
                raise TransferError(f"a large value did not reach the engine: {arriving[2]}")
        with self._lock:
            entry = self._blobs.pop(blob_id, None)
            if entry is not None:
                self._lent -= entry[2]
        if entry is None:
            raise TransferError("a large value was not received by the engine (or expired)")
        return private_copy(entry[1]) if entry[2] else entry[1]

    @contextlib.contextmanager
    def lend(self, blob_id: bytes) -> Iterator[list[Any]]:
        """Remove a blob and give its frames, as they are, while they are sent."""
        done = threading.Event()
        with self._lock:
            entry = self._blobs.pop(blob_id, None)
            if entry is not None and entry[2]:
                self._lent -= 1
                self._sending.add(done)
        if entry is None:
            raise TransferError("a large value was not received by the engine (or expired)")
        try:
            yield entry[1]
        finally:
            with self._lock:
                self._sending.discard(done)
            done.set()

    def settle(self) -> None:
        """Make lent memory safe to change: copy what waits, wait for what is sent."""
        if not self._lent and not self._sending:
            return
        with self._lock:
            for key, (t, frames, lent) in list(self._blobs.items()):
                if lent:
                    self._blobs[key] = (t, private_copy(frames), False)
            self._lent = 0
            sending = list(self._sending)
        for done in sending:
            done.wait()

    def __len__(self) -> int:
        return len(self._blobs)

