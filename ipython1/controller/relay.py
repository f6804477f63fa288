"""The controller's data relay: pairs a client's and an engine's connection, splices them.

Both ends present a pairing id the controller announced (`Relay.expect`);
the relay copies bytes between them with ``os.splice`` and never decrypts
(the TLS inside is between client and engine: see `ipython1.transport.data`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from ipython1.common.addresses import join_host_port
from ipython1.common.listenguard import ListenerGuard
from ipython1.transport.data.refs import TransferError
from ipython1.transport.data.stream import CHUNK, PAIR_TIMEOUT, recv_exact


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
        threading.Thread(target=self.guard.serve, name="relay", daemon=True,
                         args=(self._listener, self._pair, lambda: self._closed)).start()

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

    def _pair(self, sock: socket.socket) -> None:
        try:
            # Unauthenticated until it names an expected pairing: a short deadline.
            sock.settimeout(self.guard.deadline)
            pairing_id = bytes(recv_exact(sock, 16))
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
                    n = os.splice(src.fileno(), w, CHUNK)
                    if not n:
                        break
                    while n:
                        n -= os.splice(r, dst.fileno(), n)
            finally:
                os.close(r)
                os.close(w)
        else:
            buf = bytearray(CHUNK)
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

