"""Receive buffers: large frames land in huge-page mappings, reused once unused.

A large frame is received into a mapping of its own (`buffer_for`), which
the rebuilt value keeps. Touching fresh memory is most of a same-host
transfer's cost, and on a VM whose host reclaims freed guest memory (free
page reporting) one first touch of 256 MiB can take ~0.5 s instead of
~0.02 s. So each process (engine or client) keeps a `BufferPool` (`POOL`):
it remembers the mappings it made and reuses one for a later frame of the
same size, or a little smaller (the mapping is cut to size), once nothing
else refers to it. ``IPYTHON1_BUFFER_POOL_MB`` (default 1024, ``0`` turns
the pool off) caps the unused mappings' total size per process, and one
unused for `POOL_IDLE` seconds (30) is unmapped.
"""

from __future__ import annotations

import functools
import mmap
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

HUGE_MIN = 2**20  # frames at least this large are received into huge-page mappings
POOL_ENV = "IPYTHON1_BUFFER_POOL_MB"  # MiB of unused receive buffers kept; "0": none
POOL_DEFAULT_MB = 1024
POOL_IDLE = 30.0  # seconds an unused receive buffer is kept
POOL_SLACK = 4  # an unused buffer up to 1/POOL_SLACK larger than asked for is cut to size
POOL_TRACKED = 64  # receive buffers a pool remembers at most (in use or not)


def buffer_for(size: int) -> bytearray | mmap.mmap:
    """Return a writable buffer to receive a frame of size bytes into.

    A large one is an anonymous mapping advised to use transparent huge
    pages: filling fresh memory 4 KiB page by page costs more than the copy
    itself (about 2.6 against 13 GB/s on a 2-core VM). It comes from `POOL`
    (memory this process touched already) when the pool has one that fits;
    its old bytes are then still in it, so the caller must fill all of it.
    NumPy arrays rebuilt on it keep the mapping alive.
    """
    if size < HUGE_MIN:
        return bytearray(size)
    return POOL.acquire(size)


def join_buffer(size: int) -> mmap.mmap | None:
    """Return `POOL` memory for a large joined value (see scatter.join), else None."""
    return POOL.acquire(size) if size >= HUGE_MIN else None


def _mapping(size: int) -> mmap.mmap:
    """Map size bytes of fresh, zeroed memory, advised to use huge pages."""
    # Measured and not taken: MAP_POPULATE (populated before the advice, so
    # with 4 KiB pages: ~3 GB/s) and MADV_POPULATE_WRITE (as fast as faulting
    # during the receive, ~15 GB/s, and as slow when the host must back it).
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass  # transparent huge pages are off: 4 KiB pages still work
    return buf


class _Entry:
    __slots__ = ("buf", "unused_since")

    def __init__(self, buf: Any) -> None:
        self.buf = buf
        self.unused_since: float | None = None  # when a scan first found it unused


def _references(entry: _Entry) -> int:
    return sys.getrefcount(entry.buf)


# What _references says of a buffer only its pool entry refers to.
_UNUSED = _references(_Entry(object()))


def pool_limit_from_env() -> int:
    """Return the bytes of unused buffers a pool may keep, from IPYTHON1_BUFFER_POOL_MB."""
    raw = os.environ.get(POOL_ENV, "").strip()
    if not raw:
        return POOL_DEFAULT_MB * 2**20
    try:
        megabytes = int(raw)
    except ValueError:
        megabytes = -1
    if megabytes < 0:
        raise ValueError(f"{POOL_ENV} must be a whole number of MiB (0 turns the receive "
                         f"buffer pool off), not {raw!r}")
    return megabytes * 2**20


class BufferPool:
    """Large receive buffers this process made, reused once nothing else uses them.

    The pool keeps a reference to each mapping it hands out (up to
    `POOL_TRACKED`), and counts one *unused* when that reference is the only
    one left: whatever still uses the memory (an array, a view of it, a
    memoryview, a ctypes object) refers to the mapping. Unused mappings stay
    for reuse until they total more than limit bytes (the oldest go first)
    or stay unused idle seconds; a daemon thread checks every second while
    the pool remembers any, and ends when it remembers none.
    """

    def __init__(self, limit: int, idle: float = POOL_IDLE, tracked: int = POOL_TRACKED,
                 clock: Callable[[], float] = time.monotonic, reaper: bool = True) -> None:
        self.limit = limit
        self.idle = idle
        self.tracked = tracked
        self.reused = 0  # buffers handed out again
        self.made = 0  # fresh mappings handed out
        self._clock = clock
        self._reap = reaper
        self._entries: list[_Entry] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._reaper: threading.Thread | None = None
        self._closed = False
        os.register_at_fork(after_in_child=functools.partial(_pool_after_fork,
                                                             weakref.ref(self)))

    def acquire(self, size: int) -> mmap.mmap:
        """Return a mapping of exactly size bytes: a reused one if any fits, else a fresh one."""
        if self.limit and size <= self.limit:
            with self._lock:
                self._scan(self._clock())
                entry = self._fitting(size)
                if entry is not None:
                    entry.unused_since = None
                    self.reused += 1
                    return entry.buf  # type: ignore[no-any-return]
        buf = _mapping(size)
        with self._lock:
            self.made += 1
            if (self.limit and size <= self.limit and len(self._entries) < self.tracked
                    and not self._closed):
                self._entries.append(_Entry(buf))
                self._start_reaper()
        return buf

    def trim(self) -> None:
        """Release what is unused beyond the limit or for longer than idle (the reaper's job)."""
        with self._lock:
            self._scan(self._clock())

    def close(self) -> None:
        """Forget every buffer (unmapping the unused ones) and stop the reaper."""
        with self._lock:
            self._closed = True
            self._entries.clear()  # the last reference to the unused ones: unmapped
            self._wake.notify_all()
        reaper = self._reaper
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join()

    def stats(self) -> dict[str, int]:
        """Return counts: buffers remembered, unused, their bytes, reused and made."""
        with self._lock:
            self._scan(self._clock())
            unused = [e for e in self._entries if e.unused_since is not None]
            return {"tracked": len(self._entries), "unused": len(unused),
                    "unused_bytes": sum(len(e.buf) for e in unused),
                    "reused": self.reused, "made": self.made}

    def _fitting(self, size: int) -> _Entry | None:
        """Return the smallest unused entry that fits size, cut to size; None if none."""
        most = size + size // POOL_SLACK
        fits = sorted((e for e in self._entries
                       if e.unused_since is not None and size <= len(e.buf) <= most),
                      key=lambda e: len(e.buf))
        for entry in fits:
            if len(entry.buf) == size:
                return entry
            try:
                entry.buf.resize(size)  # mremap: the tail goes back, the rest stays put
            except (BufferError, OSError, SystemError, ValueError, TypeError):
                continue  # no mremap here: only an exact fit will do
            return entry
        return None

    def _scan(self, now: float) -> None:
        """Mark entries newly unused; release the idle ones, then the oldest beyond the limit."""
        unused: list[_Entry] = []
        for entry in self._entries:
            if _references(entry) > _UNUSED:
                entry.unused_since = None
            else:
                if entry.unused_since is None:
                    entry.unused_since = now
                unused.append(entry)
        unused.sort(key=lambda e: e.unused_since)  # type: ignore[arg-type, return-value]
        total = sum(len(e.buf) for e in unused)
        drop: list[_Entry] = []
        for entry in unused:
            if total > self.limit or now - entry.unused_since >= self.idle:  # type: ignore[operator]
                drop.append(entry)
                total -= len(entry.buf)
        if drop:
            ids = {id(e) for e in drop}
            self._entries = [e for e in self._entries if id(e) not in ids]
            for entry in drop:
                try:
                    entry.buf.close()
                except BufferError:
                    pass  # exported after all: it goes when its last user does

    def _start_reaper(self) -> None:
        if self._reap and self._reaper is None:
            self._reaper = threading.Thread(target=self._reap_loop, name="buffer-pool",
                                            daemon=True)
            self._reaper.start()

    def _reap_loop(self) -> None:
        period = min(1.0, self.idle / 2)
        with self._lock:
            try:
                while self._entries and not self._closed:
                    self._wake.wait(period)
                    self._scan(self._clock())
            finally:
                self._reaper = None


def _pool_after_fork(pool_ref: weakref.ref[BufferPool]) -> None:
    # The reaper thread did not cross the fork, and the lock may look held.
    pool = pool_ref()
    if pool is not None:
        pool._lock = threading.Lock()
        pool._wake = threading.Condition(pool._lock)
        pool._reaper = None
        if pool._entries:
            pool._start_reaper()


# This process's pool: the engine's uploads and the client's downloads land in it.
POOL = BufferPool(pool_limit_from_env())


def private_copy(frames: Sequence[Any]) -> list[Any]:
    """Copy frames (large ones into `buffer_for` buffers): later changes don't show."""
    copies: list[Any] = []
    for frame in frames:
        if len(frame) < HUGE_MIN:
            copies.append(bytes(frame))
        else:
            buf = buffer_for(len(frame))
            memoryview(buf)[:] = memoryview(frame).cast("B")
            copies.append(buf)
    return copies

