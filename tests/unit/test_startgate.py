"""The start gate of engines forked together (a pipe; no sockets, no reactor)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time

import pytest

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


def _wake_ups(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f
                    if line.startswith("voluntary_ctxt_switches"))


@pytest.mark.skipif(not hasattr(select, "EPOLLEXCLUSIVE"), reason="needs Linux epoll")
def test_a_slot_put_back_wakes_one_waiter_not_all() -> None:
    gate = StartGate(slots=0)
    waiters = []
    for _ in range(12):
        pid = os.fork()
        if pid == 0:
            os._exit(0 if gate.acquire(wait=10) else 1)
        waiters.append(pid)
    try:
        time.sleep(0.5)  # all asleep in the gate
        before = {pid: _wake_ups(pid) for pid in waiters}
        gate.release()
        winner, _ = os.waitpid(-1, 0)
        time.sleep(0.2)
        woken = [pid for pid in waiters if pid != winner and _wake_ups(pid) != before[pid]]
        assert len(woken) <= 1, f"{len(woken)} of 11 waiters woke for one slot"
    finally:
        for pid in waiters:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
