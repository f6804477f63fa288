"""BoundedForwarder: nobody waits on a stalled subscriber; its memory is bounded."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from ipython1.controller.subscribers import BoundedForwarder


def make(max_in_flight: int = 2, max_backlog: int = 3) -> tuple[BoundedForwarder, list, Clock]:
    sent: list[tuple[dict, Deferred]] = []

    def send(item: dict) -> Deferred:
        d: Deferred = Deferred()
        sent.append((item, d))
        return d

    clock = Clock()
    return BoundedForwarder(send, clock, max_in_flight, max_backlog, stall_after=0.5), sent, clock


def test_a_stalled_subscriber_keeps_a_bounded_backlog_and_is_told_what_it_missed() -> None:
    forwarder, sent, clock = make()
    for n in range(100):
        assert forwarder.offer({"n": n, "chunks": []}) is None  # nobody waits
    assert len(sent) == 2 and len(forwarder.backlog) == 4  # 3 kept + one drop notice
    assert forwarder.dropped_total == 95
    for _ in range(3):  # it wakes up: everything kept, in order, then the notice
        for _item, d in list(sent):
            if not d.called:
                d.callback(None)
    got = [item.get("n") for item, _ in sent]
    assert got[:5] == [0, 1, 2, 3, 4]
    notice = sent[5][0]
    assert "95 output message(s) dropped" in notice["chunks"][0][1] and notice["n"] == 99


def test_own_commands_wait_only_while_the_subscriber_keeps_up() -> None:
    forwarder, sent, clock = make(max_in_flight=4)
    waited = forwarder.offer({"n": 0}, wait=True)
    assert isinstance(waited, Deferred) and not waited.called
    sent[0][1].callback(None)
    assert waited.called
    forwarder.offer({"n": 1})
    clock.advance(1.0)  # unacknowledged for longer than stall_after: stalled
    assert forwarder.stalled
    assert forwarder.offer({"n": 2}, wait=True) is None


def test_a_failed_subscriber_is_given_nothing_more() -> None:
    forwarder, sent, _ = make()
    forwarder.offer({"n": 0})
    forwarder.offer({"n": 1})
    forwarder.offer({"n": 2})
    sent[0][1].errback(ConnectionError("gone"))
    assert forwarder.failed and not forwarder.backlog
    assert forwarder.offer({"n": 3}) is None and len(sent) == 2
