"""EventBus: ordered, attributed events; bounded subscribers; the transcript."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed

from ipython1.controller.events import EventBus, Transcript, decode_batch, format_targets
from ipython1.controller.queue import Command


def collector() -> tuple[list[dict[str, Any]], Any]:
    got: list[dict[str, Any]] = []

    def deliver(blob: bytes) -> Deferred[None]:
        got.extend(decode_batch(blob))
        return succeed(None)

    return got, deliver


def test_events_reach_subscribers_in_order_batched_per_turn() -> None:
    clock = task.Clock()
    bus = EventBus(clock=clock)
    calls: list[int] = []
    got, deliver = collector()

    def counting(blob: bytes) -> Deferred[None]:
        calls.append(1)
        return deliver(blob)

    bus.subscribe(counting, "bob", history=0)
    for i in range(5):
        bus.publish("chat", "alice", data={"text": str(i)})
    clock.advance(1)
    assert [e["data"]["text"] for e in got] == ["0", "1", "2", "3", "4"]
    assert all(e["user"] == "alice" for e in got) and len(calls) == 1
    assert [e["seq"] for e in got] == [1, 2, 3, 4, 5]


def test_late_subscriber_gets_recent_history_first() -> None:
    clock = task.Clock()
    bus = EventBus(clock=clock)
    for i in range(300):
        bus.publish("chat", "alice", data={"text": str(i)})
    got, deliver = collector()
    bus.subscribe(deliver, "late", history=200)
    bus.publish("chat", "bob", data={"text": "live"})
    clock.advance(1)
    assert len(got) == 201
    assert got[0]["data"]["text"] == "100" and got[-1]["data"]["text"] == "live"


def test_unanswered_subscriber_is_bounded_then_dropped_others_unaffected() -> None:
    clock = task.Clock()
    bus = EventBus(clock=clock, max_buffered=50, max_outstanding=2)
    stuck_calls: list[Deferred[None]] = []

    def never(blob: bytes) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        stuck_calls.append(d)
        return d

    got, deliver = collector()
    stuck = bus.subscribe(never, "stuck", history=0)
    bus.subscribe(deliver, "bob", history=0)
    for i in range(200):
        bus.publish("chat", "alice", data={"text": str(i)})
        clock.advance(1)
        # Never more than max_outstanding calls, never more than the bound buffered.
        assert len(stuck_calls) <= 2 and len(stuck.buffer) <= 51
    assert stuck not in bus.subscriptions
    assert bus.dropped and bus.dropped[0][0] == "stuck" and "50 events" in bus.dropped[0][1]
    assert len(got) == 200


def test_failed_delivery_drops_the_subscriber() -> None:
    clock = task.Clock()
    bus = EventBus(clock=clock)
    bus.subscribe(lambda blob: fail(ConnectionError("gone")), "dead", history=0)
    bus.publish("chat", "alice")
    clock.advance(1)
    assert not bus.subscriptions and "gone" in bus.dropped[0][1]


def test_transcript_is_flushed_per_event_and_continues_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "log" / "transcript.jsonl"
    clock = task.Clock()
    bus = EventBus(Transcript(path), clock=clock)
    bus.publish("chat", "alice", data={"text": "one"})
    bus.publish("chat", "bob", data={"text": "two"})
    # Readable at once, before any close: flushed per event.
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [e["data"]["text"] for e in lines] == ["one", "two"]
    bus.transcript.close()  # type: ignore[union-attr]
    restarted = EventBus(Transcript(path), clock=clock)
    restarted.publish("chat", "carol", data={"text": "three"})
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [e["seq"] for e in lines] == [1, 2, 3]
    got, deliver = collector()
    restarted.subscribe(deliver, "late", history=10)
    clock.advance(1)
    assert [e["data"]["text"] for e in got] == ["one", "two", "three"]


def test_a_fan_out_s_events_reach_the_transcript_in_one_write(
        tmp_path: Path, monkeypatch: Any) -> None:
    import os

    from ipython1.controller import events

    path = tmp_path / "transcript.jsonl"
    bus = EventBus(Transcript(path), clock=task.Clock())
    writes: list[bytes] = []
    real_write = os.write
    monkeypatch.setattr(events.os, "write",
                        lambda fd, data: writes.append(bytes(data)) or real_write(fd, data))
    got, deliver = collector()
    bus.subscribe(deliver, "watcher", history=0)
    with bus.held_writes():
        bus.publish("queued", "alice", data={"call": 1})
        with bus.held_writes():  # nested: still the outer one's write
            bus.publish("started", "alice", 0)
        bus.publish("started", "alice", 1)
        assert not writes and [json.loads(x)["kind"] for x in bus.recent] == [
            "queued", "started", "started"]  # subscribers and history: at once
    assert len(writes) == 1
    bus.publish("result", "alice", 0)
    assert len(writes) == 2
    kinds = [json.loads(x)["kind"] for x in path.read_text().splitlines()]
    assert kinds == ["queued", "started", "started", "result"]
    try:
        with bus.held_writes():
            bus.publish("started", "alice", 2)
            raise RuntimeError("a fan-out that fails half way")
    except RuntimeError:
        pass
    assert json.loads(path.read_text().splitlines()[-1])["engine"] == 2  # written anyway


def test_controller_notifications_become_attributed_events_without_values() -> None:
    clock = task.Clock()
    bus = EventBus(clock=clock)
    command = Command("execute", ("print(1); 41 + 1",), client="alice/client-2", call=7)
    bus.on_controller("command_started", {"engine_id": 3, "command": command})
    reply = {"engine_id": 3, "status": "ok", "value": {
        "execution_count": 5, "stdout": "1\n", "stderr": "",
        "result": {"data": {"text/plain": "42"}, "frames": [b"pickled"]}}}
    bus.on_controller("command_finished", {"engine_id": 3, "command": command, "reply": reply})
    failing = Command("execute", ("1/0",), client="bob/client-1", call=8)
    bus.on_controller("command_finished", {"engine_id": 3, "command": failing, "reply": {
        "engine_id": 3, "status": "error", "error": {
            "ename": "ZeroDivisionError", "evalue": "division by zero", "execution_count": 6,
            "record": {"stdout": ""}}}})
    events = [json.loads(line) for line in bus.recent]
    assert [(e["kind"], e["user"], e["engine"]) for e in events] == [
        ("started", "alice", 3), ("stdout", "alice", 3), ("result", "alice", 3),
        ("error", "bob", 3)]
    assert events[2]["data"] == {"op": "execute", "call": 7, "execution_count": 5, "repr": "42"}
    assert events[3]["data"]["ename"] == "ZeroDivisionError"
    assert b"pickled" not in b"".join(bus.recent)


def test_streamed_output_is_not_repeated_from_the_record() -> None:
    clock = task.Clock()
    bus = EventBus(clock=clock)
    command = Command("execute", ("print(1)",), client="alice/client-2", call=1)
    bus.on_controller("output", {"engine_id": 0, "chunks": [["stdout", "1\n"]],
                                 "client": "alice/client-2", "command_id": command.id})
    bus.on_controller("command_finished", {"engine_id": 0, "command": command, "reply": {
        "status": "ok", "value": {"execution_count": 1, "stdout": "1\n", "result": None}}})
    kinds = [json.loads(line)["kind"] for line in bus.recent]
    assert kinds == ["stdout", "result"]


def test_format_targets() -> None:
    assert format_targets([0, 1, 2, 3]) == "0-3"
    assert format_targets([5, 0, 2, 1]) == "0-2,5"
    assert format_targets([]) == "-"
