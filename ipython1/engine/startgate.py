"""A start gate: at most a few of the engines forked from one process register at once.

``ipengine --fork K`` starts K engines on one host together. Registering
costs each engine a TLS handshake's worth of CPU; with hundreds runnable at
once on a few cores, none gets enough to finish within the controller's
handshake deadline, all are closed and retry, and start-up stalls (512 engines
across hosts took 107 s). The gate is a pipe made before the fork holding
``slots`` bytes: an engine takes one before it starts (its certificate,
Tub and shell, then the registration) and puts it back once registered.
Waiting engines sleep in the kernel, and a byte put back wakes one of them.
An engine that dies holding a byte loses it; a waiter gives up waiting after
``wait`` seconds and starts anyway, so the gate can slow start-up but never
stop it.
"""

from __future__ import annotations

import os
import select
import time
from typing import Any

SLOTS = 8  # engines of one host starting at once
WAIT = 30.0  # seconds an engine waits for a slot before going ahead without one


class StartGate:
    """A cross-process counting semaphore over a pipe (made before fork)."""

    def __init__(self, slots: int = SLOTS) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)  # several waiters wake for one byte
        os.write(self._write, b"s" * slots)

    def acquire(self, wait: float = WAIT) -> bool:
        """Block until a slot is free (True) or wait seconds pass (False)."""
        deadline = time.monotonic() + wait
        with _Waiter(self._read) as waiter:
            while (left := deadline - time.monotonic()) > 0:
                if not waiter.wait(left):
                    break
                try:
                    if os.read(self._read, 1):
                        return True
                except BlockingIOError:  # another engine took it first
                    continue
        return False

    def release(self) -> None:
        os.write(self._write, b"s")


class _Waiter:
    """Wait for the pipe to be readable; on Linux woken alone, not with every waiter.

    With select() each byte put back woke all the engines still waiting (a
    few hundred per host at once: a quadratic number of wake-ups in all);
    epoll's EPOLLEXCLUSIVE wakes one of them.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._epoll: Any = None
        if hasattr(select, "EPOLLEXCLUSIVE"):
            self._epoll = select.epoll(1)
            try:
                self._epoll.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
            except OSError:  # a kernel before 4.5: select, as elsewhere
                self._epoll.close()
                self._epoll = None

    def wait(self, timeout: float) -> bool:
        if self._epoll is not None:
            return bool(self._epoll.poll(timeout))
        readable, _, _ = select.select([self._fd], [], [], timeout)
        return bool(readable)

    def __enter__(self) -> _Waiter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._epoll is not None:
            self._epoll.close()
