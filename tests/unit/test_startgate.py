"""The start gate of engines forked together (a pipe; no sockets, no reactor)."""

from __future__ import annotations

import os
import time

from ipython1.engine.startgate import StartGate


def test_at_most_slots_engines_hold_the_gate() -> None:
    gate = StartGate(slots=2)
    assert gate.acquire(wait=1) and gate.acquire(wait=1)
    t0 = time.monotonic()
    assert not gate.acquire(wait=0.2)  # full: wait, then go ahead without a slot
    assert 0.15 < time.monotonic() - t0 < 2
    gate.release()
    assert gate.acquire(wait=1)


def test_forked_siblings_share_the_slots() -> None:
    gate = StartGate(slots=1)
    assert gate.acquire(wait=1)
    pid = os.fork()
    if pid == 0:  # the sibling: blocked until the parent releases
        os._exit(0 if gate.acquire(wait=5) else 1)
    time.sleep(0.2)
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # still waiting
    gate.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not gate.acquire(wait=0.1)  # the sibling took the one slot
