"""The engines' watcher (``ipengine --watch``): how an unsupervised engine ended.

Only a process's parent learns its exit status, and an engine's stderr holds
what it printed last (a fatal error, the interpreter's own messages). So with
``--watch`` the ``ipengine`` process stays a small parent: it forks the
engines, passes their stderr through (keeping the last lines of each), and
when one exits it tells the controller, over its engine FURL, the exit code
or signal and those lines (``RIEngineRegistration.report_exit``); the
controller puts them in the ``EngineError`` of the commands the engine was
running. It works across hosts (it needs only the engine FURL); ``ipcluster
start --engines ssh`` uses it. Supervised engines (``--restart-engines``)
are reported by their supervisor instead.

``StderrTail`` and ``exit_report`` are pure; ``watch`` forks and waits.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

WATCHED_ENV = "IPYTHON1_WATCHED"  # set in a watched engine: its watcher reports its end
STDERR_LINES = 10  # lines of a dead engine's stderr in its exit report
KEEP_BYTES = 65536  # of each engine's stderr, the last, kept for its report
MAX_STDERR = 20_000  # characters of it in the report (the wire's bound)


class StderrTail:
    """Pass an engine's stderr through, keeping its last bytes (a thread per engine)."""

    def __init__(self, read_fd: int, write: Callable[[bytes], Any]) -> None:
        self.read_fd = read_fd
        self.write = write
        self.kept: deque[bytes] = deque()
        self._size = 0
        self.thread = threading.Thread(target=self._pump, name="stderr", daemon=True)

    def start(self) -> StderrTail:
        self.thread.start()
        return self

    def feed(self, data: bytes) -> None:
        self.kept.append(data)
        self._size += len(data)
        while self._size - len(self.kept[0]) >= KEEP_BYTES:
            self._size -= len(self.kept.popleft())

    def _pump(self) -> None:
        while True:
            try:
                data = os.read(self.read_fd, 65536)
            except OSError:
                break
            if not data:
                break
            self.feed(data)
            try:
                self.write(data)
            except OSError:
                pass  # our own stderr is gone (ssh closed): keep the tail anyway
        os.close(self.read_fd)

    def lines(self, n: int = STDERR_LINES) -> str:
        self.thread.join(1.0)  # what the engine wrote just before it ended
        text = b"".join(self.kept).decode(errors="replace")
        return "\n".join(text.splitlines()[-n:])[-MAX_STDERR:]


def exit_report(pid: int, status: int, stderr: str, host: str | None = None) -> dict[str, Any]:
    """Describe an engine's end from its wait status (os.waitpid)."""
    from ipython1.cluster.supervisor import describe_exit

    return {"pid": pid, "host": host or socket.gethostname(),
            "exit": describe_exit(os.waitstatus_to_exitcode(status)), "stderr": stderr}


def fork_watched(n: int) -> dict[int, StderrTail] | None:
    """Fork n engines with their stderr through a pipe; return them in the parent
    (pid -> its stderr), None in each child."""
    engines: dict[int, StderrTail] = {}
    for _ in range(n):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            os.dup2(write_fd, 2)
            os.close(write_fd)
            for tail in engines.values():
                os.close(tail.read_fd)
            os.environ[WATCHED_ENV] = "1"
            return None
        os.close(write_fd)
        engines[pid] = StderrTail(read_fd, lambda data: os.write(2, data)).start()
    return engines


def watch(engines: dict[int, StderrTail], furl: Callable[[], str]) -> None:
    """Wait for the engines; report each one's end to the controller; return when
    all have ended and been reported (or could not be)."""
    from twisted.internet import reactor

    from ipython1.common import wire
    from ipython1.transport.foolscap import FoolscapRegistrationConnection

    left = set(engines)
    tub: Any = None

    def forward(signum: int, frame: Any) -> None:
        for pid in left:  # ipcluster stop signals the watcher: the engines end too
            try:
                os.kill(pid, signum)
            except OSError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    def reap(pid: int) -> None:
        _, status = os.waitpid(pid, 0)
        report = exit_report(pid, status, engines[pid].lines())
        reactor.callFromThread(send, pid, report)

    def send(pid: int, report: dict[str, Any]) -> None:
        nonlocal tub
        if tub is None:
            tub = wire.client_tub()
        d = wire.get_reference(tub, furl(), 10.0)
        d.addCallback(lambda reference: FoolscapRegistrationConnection(reference).report_exit(
            report))
        d.addErrback(lambda f: sys.stderr.write(
            f"ipengine: could not report engine {pid}'s end ({report['exit']}): "
            f"{f.getErrorMessage()}\n"))
        d.addBoth(lambda _: done(pid))

    def done(pid: int) -> None:
        left.discard(pid)
        if not left:
            reactor.stop()

    for pid in engines:
        threading.Thread(target=reap, args=(pid,), name=f"reap-{pid}", daemon=True).start()
    reactor.run(installSignalHandlers=False)
