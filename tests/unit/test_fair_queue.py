"""EngineQueue: one command at a time, FIFO per user, round robin between users."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from ipython1.common.errors import EngineError, QueueCleared
from ipython1.controller.queue import Command, EngineQueue


class Engine:
    """Hand-fired engine: records what was sent, answers on demand."""

    def __init__(self) -> None:
        self.sent: list[tuple[Command, Deferred[Any]]] = []

    def send(self, command: Command) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.sent.append((command, d))
        return d

    def answer(self) -> Command:
        command, d = self.sent[-1]
        d.callback({"status": "ok", "value": command.description})
        return command


def cmd(user: str, label: str) -> Command:
    return Command("execute", (label,), client=f"{user}/client-1", description=label)


def test_one_user_keeps_submission_order() -> None:
    engine = Engine()
    q = EngineQueue(0, engine.send)
    results = [q.submit(cmd("alice", str(i))) for i in range(5)]
    order = [engine.answer().description for _ in range(5)]
    assert order == ["0", "1", "2", "3", "4"]
    assert all(d.called for d in results) and len(q) == 0


def test_late_user_runs_after_at_most_one_more_of_the_busy_user() -> None:
    engine = Engine()
    q = EngineQueue(0, engine.send)
    for i in range(1000):
        q.submit(cmd("alice", f"a{i}"))
    assert len(q) == 999 and q.status()["per_user"] == {"alice": 999}
    q.submit(cmd("bob", "b0"))
    q.submit(cmd("bob", "b1"))
    assert q.status()["per_user"] == {"alice": 999, "bob": 2}
    order = [engine.answer().description for _ in range(6)]
    # a0 was running when bob came; then the two users alternate.
    assert order == ["a0", "b0", "a1", "b1", "a2", "a3"]


def test_round_robin_between_three_users_keeps_each_users_order() -> None:
    engine = Engine()
    q = EngineQueue(0, engine.send)
    for user in ("a", "b", "c"):
        for i in range(3):
            q.submit(cmd(user, f"{user}{i}"))
    order = [engine.answer().description for _ in range(9)]
    assert order == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]


def test_clear_of_one_user_leaves_the_others() -> None:
    engine = Engine()
    q = EngineQueue(0, engine.send)
    running = q.submit(cmd("alice", "a0"))
    alice = [q.submit(cmd("alice", f"a{i}")) for i in range(1, 4)]
    bob = q.submit(cmd("bob", "b0"))
    assert q.clear("alice") == 3
    for d in alice:
        assert d.result.check(QueueCleared)
        d.addErrback(lambda f: None)
    assert not running.called and not bob.called and len(q) == 1
    engine.answer()
    assert engine.answer().description == "b0"
    assert q.clear() == 0


def test_clear_all_and_engine_death_fail_everything_waiting() -> None:
    engine = Engine()
    q = EngineQueue(0, engine.send)
    ds = [q.submit(cmd(u, u)) for u in ("a", "b", "c")]
    q.engine_died("gone")
    for d in ds:
        assert d.result.check(EngineError)
        d.addErrback(lambda f: None)
    late = q.submit(cmd("a", "late"))
    assert late.result.check(EngineError)
    late.addErrback(lambda f: None)
    assert len(q) == 0 and q.status()["queued"] == []


def test_held_commands_wait_until_kicked_whether_one_user_waits_or_several() -> None:
    engine = Engine()
    q = EngineQueue(0, engine.send)
    held = {"alice/client-1"}
    q.held = lambda command: command.client in held
    q.submit(cmd("alice", "a1"))  # the only user, held: nothing starts
    assert engine.sent == [] and q.running is None
    q.submit(cmd("bob", "b1"))  # another user, not held, goes first
    assert engine.answer().description == "b1"
    assert len(engine.sent) == 1  # alice still held
    held.clear()
    q.kick()
    assert engine.answer().description == "a1" and len(q) == 0
