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

Same host, same user: the local path
-------------------------------------
When the client runs on the engine's host as the engine's user (same boot id,
hostname, uid and namespaces: see `host_key`; the engine advertises its key at
registration in ``info["local_data"]``), the controller hands out a *local* ticket instead:
a pairing id and secret good for `BOOK_USES` transfers with that engine
within `BOOK_TTL` (a client asks once per engine, not once per value), plus
the engine's abstract Unix socket name, pid and uid. The client connects to
that socket and checks with ``SO_PEERCRED`` that the process serving it is
that engine (pid and uid); the engine accepts only peers of its own uid,
then the pairing id and secret (each try spends a use), then the transfer's
direction, blob id and frame sizes. The bytes go with ``sendall`` /
``recv_into`` (two kernel copies, no TLS, no relay) from the sender's own
memory into buffers mapped with transparent huge pages (see `buffer_for`);
a pulled value is lent from the engine's memory (see `BlobStore`). If the
socket is not reachable from the client (another network namespace, say),
the client asks again for a relayed TLS transfer, and remembers that engine.
``IPYTHON1_LOCAL_DATA=0`` in the client's or the engine's environment turns
the local path off.

The socket is in the abstract namespace, so it vanishes with the engine
however the engine ends (SIGKILL, ``os._exit``): no file is left behind, and
no path length limit applies. Anyone on the host may connect to it, so the
uid check comes first, before a byte is read.

Receive buffers are reused
--------------------------
A large frame is received into a mapping of its own (`buffer_for`), which
the rebuilt value keeps. Touching fresh memory is most of a same-host
transfer's cost, and on a VM whose host reclaims freed guest memory (free
page reporting) one first touch of 256 MiB can take ~0.5 s instead of
~0.02 s. So each process (engine or client) keeps a `BufferPool`: it
remembers the mappings it made and reuses one for a later frame of the same
size, or a little smaller (the mapping is cut to size), once nothing else
refers to it (a value built on it, a NumPy view of that value, a
memoryview: anything holding the memory holds the mapping). What it keeps
unused is bounded: ``IPYTHON1_BUFFER_POOL_MB`` (default 1024, ``0`` turns
the pool off) caps the unused mappings' total size per process, and one
unused for `POOL_IDLE` seconds (30) is unmapped.

Every blocking call here runs on a worker thread, never on a reactor thread.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import functools
import hashlib
import mmap
import os
import secrets
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ipython1.common.addresses import join_host_port, split_host_port
from ipython1.common.errors import KernelError
from ipython1.common.listenguard import ListenerGuard
from ipython1.common.localhost import env_enabled
from ipython1.common.localhost import host_key as localhost_key
from ipython1.common.localhost import peer_credentials as _peer
from ipython1.common.localhost import socket_address as _address

THRESHOLD = 256 * 2**10  # values at least this large take the data channel
BLOB_MAGIC = b"IPB1"
PAIR_TIMEOUT = 30.0  # seconds a relay end waits for its peer
BLOB_TTL = 600.0  # seconds an unclaimed blob is kept
HUGE_MIN = 2**20  # frames at least this large are received into huge-page mappings
LOCAL_ENV = "IPYTHON1_LOCAL_DATA"  # "0" turns the same-host path off
BOOK_USES = 64  # transfers one local ticket (pairing id + secret) is good for
BOOK_TTL = 300.0  # seconds a local ticket is good for
MAX_FRAMES = 1_000_000
POOL_ENV = "IPYTHON1_BUFFER_POOL_MB"  # MiB of unused receive buffers kept; "0": none
POOL_DEFAULT_MB = 1024
POOL_IDLE = 30.0  # seconds an unused receive buffer is kept
POOL_SLACK = 4  # an unused buffer up to 1/POOL_SLACK larger than asked for is cut to size
POOL_TRACKED = 64  # receive buffers a pool remembers at most (in use or not)
_CHUNK = 4 * 2**20
_LOCAL_SOCKET_BUFFER = 2**20
# pairing id, secret, direction (U or D), blob id, frame count; the sizes follow.
_LOCAL_HEAD = struct.Struct("<16s32s1s16sI")
_STATUS_OK = b"K"
_STATUS_REFUSED = b"E"


# Transfers this process completed as a client, by path ("local", "relay").
TRANSFERS: collections.Counter[str] = collections.Counter()


class TransferError(KernelError):
    """A bulk transfer failed (peer vanished, wrong certificate, bad secret)."""


class LocalUnavailable(TransferError):
    """The engine's local socket cannot be reached from here: use the relay."""


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


def _recv_frame(sock: Any, size: int) -> bytearray | mmap.mmap:
    """Receive one frame into a fresh `buffer_for` buffer."""
    buf = buffer_for(size)
    view = memoryview(buf)
    got = 0
    try:
        while got < size:
            n = sock.recv_into(view[got:], min(size - got, _CHUNK))
            if not n:
                raise TransferError(f"connection closed after {got} of {size} bytes")
            got += n
    finally:
        view.release()
    return buf


def _connect(address: str, timeout: float) -> socket.socket:
    host, port = split_host_port(address)
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# -- the relay (controller) --------------------------------------------------------------------


class Relay:
    """Pair connections by pairing id and splice them; never decrypt."""

    def __init__(self, ip: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in ip or not ip else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((ip, port))
        except OSError as e:
            self._listener.close()
            raise OSError(e.errno, f"the data relay cannot listen on "
                                   f"{join_host_port(ip, port)}: {e.strerror}") from None
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self.address = join_host_port(ip, self.port)
        self._expected: dict[bytes, float] = {}
        self._waiting: dict[bytes, socket.socket] = {}
        self._engine_of: dict[bytes, Any] = {}  # pairing id -> the engine it is with
        self._lock = threading.Lock()
        self._closed = False
        self.transfers = 0
        self.guard = ListenerGuard(f"relay {self.address}")
        threading.Thread(target=self._accept_loop, name="relay", daemon=True).start()

    def expect(self, pairing_id: bytes, engine_id: Any = None) -> None:
        """Allow two connections that present pairing_id to be spliced."""
        with self._lock:
            self._expected[pairing_id] = time.monotonic()
            self._engine_of[pairing_id] = engine_id

    def engine_lost(self, engine_id: Any) -> int:
        """Fail at once the pairings with a dead engine: its end will never come.

        A client already waiting is hung up on (its transfer fails now, not
        after PAIR_TIMEOUT); one still on its way is refused. Returns how many.
        """
        with self._lock:
            ids = [p for p, e in self._engine_of.items() if e == engine_id]
            waiting = [self._waiting.pop(p, None) for p in ids]
            for p in ids:
                self._expected.pop(p, None)
                self._engine_of.pop(p, None)
        for sock in waiting:
            if sock is not None:
                _hang_up(sock)
        return len(ids)

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.close()
        except OSError:
            pass
        self.guard.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock = self.guard.accept(self._listener)  # capped; survives EMFILE
            except OSError:
                return  # the listener was closed
            if sock is None:
                continue
            try:
                threading.Thread(target=self._pair, args=(sock,), daemon=True).start()
            except RuntimeError:  # no more threads: shed it, keep accepting
                self.guard.release()
                sock.close()

    def _pair(self, sock: socket.socket) -> None:
        try:
            # Unauthenticated until it names an expected pairing: a short deadline.
            sock.settimeout(self.guard.deadline)
            pairing_id = bytes(_recv_exact(sock, 16))
        except (OSError, TransferError) as e:
            if isinstance(e, TimeoutError):
                self.guard.timed_out_one()
            sock.close()
            return
        finally:
            self.guard.release()
        sock.settimeout(PAIR_TIMEOUT)
        with self._lock:
            now = time.monotonic()
            for key in [k for k, t in self._expected.items() if now - t > PAIR_TIMEOUT]:
                self._expected.pop(key)
                self._engine_of.pop(key, None)
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
            self._engine_of.pop(pairing_id, None)
            self.transfers += 1
        for s in (sock, peer):
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_pump, args=(peer, sock), daemon=True).start()
        _pump(sock, peer)


def _hang_up(sock: socket.socket) -> None:
    """Close a socket so that its peer sees the end at once (even one blocked reading)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


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
                frames = [_recv_frame(tls, size) for size in sizes]
                store.put(blob_id, frames)
                tls.sendall(b"K")
            elif direction == "download":
                with store.lend(blob_id) as frames:
                    for frame in frames:
                        tls.sendall(frame)
                _recv_exact(tls, 1)
            else:
                raise TransferError(f"unknown direction {direction!r}")


# -- the client's end --------------------------------------------------------------------


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
            received = [_recv_frame(tls, size) for size in sizes or ()]
            tls.sendall(b"K")
            return received


# -- same host, same user: the local path --------------------------------------------------------


def local_enabled() -> bool:
    """Tell whether IPYTHON1_LOCAL_DATA lets this process use the local path."""
    return env_enabled(LOCAL_ENV)


def host_key() -> str:
    """Name this host, user and namespaces (see `localhost`); "" if the local path is off."""
    return localhost_key() if local_enabled() else ""


def _tune(sock: socket.socket) -> None:
    """Give a local socket larger buffers: bigger and fewer skbs, fewer wake-ups.

    The default (~208 KiB) caps a 256 MiB transfer at ~5 GB/s; 1 MiB (the
    kernel doubles it, within net.core.wmem_max) gives ~8 GB/s on 2 cores.
    """
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, _LOCAL_SOCKET_BUFFER)
        except OSError:
            pass


def _refuse(sock: socket.socket, reason: str) -> None:
    message = reason.encode()[:1000]
    try:
        sock.sendall(_STATUS_REFUSED + struct.pack("<H", len(message)) + message)
    except OSError:
        pass


def _expect_ok(sock: socket.socket, who: str) -> None:
    status = sock.recv(1)
    if status == _STATUS_OK:
        return
    if status == _STATUS_REFUSED:
        (size,) = struct.unpack("<H", _recv_exact(sock, 2))
        reason = bytes(_recv_exact(sock, size)).decode(errors="replace")
        raise TransferError(f"{who} refused the transfer: {reason}")
    raise TransferError(f"{who} closed the connection (it refused the transfer or went away)")


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
        return {"host": host_key(), "socket": self.name, "pid": self.pid, "uid": self.uid}

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
                    _tune(sock)
                    _pid, uid = _peer(sock)
                    if uid != self.uid:  # not our user: hang up before reading a byte
                        _refuse(sock, f"uid {uid} is not the engine's user")
                        return
                    sock.settimeout(self.guard.deadline)  # unauthenticated: be quick
                    head = bytes(_recv_exact(sock, _LOCAL_HEAD.size))
                except TimeoutError:
                    self.guard.timed_out_one()
                    raise
                finally:
                    self.guard.release()
                sock.settimeout(PAIR_TIMEOUT)
                pairing_id, secret, direction, blob_id, count = _LOCAL_HEAD.unpack(head)
                refused = self._use(pairing_id, secret)
                if refused is None and (direction not in b"UD" or count > MAX_FRAMES):
                    refused = "malformed transfer"
                if refused is not None:
                    _refuse(sock, refused)
                    return
                sizes = list(struct.unpack(f"<{count}Q", _recv_exact(sock, 8 * count)))
                if direction == b"U":
                    # The client may send the command using this value as soon
                    # as we accept: announce it, so that command waits for it.
                    self.store.arriving(blob_id)
                    try:
                        sock.sendall(_STATUS_OK)
                        frames = [_recv_frame(sock, size) for size in sizes]
                    except BaseException as e:
                        self.store.failed(blob_id, str(e) or type(e).__name__)
                        raise
                    self.store.put(blob_id, frames)
                    sock.sendall(_STATUS_OK)
                else:
                    try:
                        with self.store.lend(blob_id) as frames:
                            if [len(f) for f in frames] != sizes:
                                raise TransferError("the value held by the engine has other sizes")
                            sock.sendall(_STATUS_OK)
                            for frame in frames:
                                sock.sendall(frame)
                    except TransferError as e:
                        _refuse(sock, str(e))
                        return
                self.transfers += 1
            except (OSError, TransferError, struct.error):
                pass  # the client went away: it gets its own error


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


def _close_in_child(server_ref: weakref.ref[LocalServer]) -> None:
    server = server_ref()
    if server is not None:
        server._closed = True
        server._listener.close()  # this process's descriptor only: no shutdown


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
        _tune(sock)
        try:
            sock.connect(_address(local["socket"]))
        except OSError as e:
            raise LocalUnavailable(f"cannot reach the local socket of {who}: {e}") from e
        pid, uid = _peer(sock)
        if (pid, uid) != (local["pid"], local["uid"]):
            raise TransferError(f"the local socket of {who} is served by process {pid} of "
                                f"uid {uid}, not by the engine (uid {local['uid']})")
        head = _LOCAL_HEAD.pack(ticket["pairing_id"], ticket["secret"],
                                b"U" if frames is not None else b"D", ticket["blob_id"],
                                len(sizes))
        try:
            sock.sendall(head + struct.pack(f"<{len(sizes)}Q", *sizes))
        except OSError:
            pass  # refused already? The reason waits in our receive queue.
        _expect_ok(sock, who)
        if frames is not None:
            if accepted is not None:
                accepted()
            for frame in frames:
                sock.sendall(frame)
            _expect_ok(sock, who)
            return None
        return [_recv_frame(sock, size) for size in sizes]
