"""The command channel's offers: taken once, forgotten when stale (no sockets)."""

from __future__ import annotations

from typing import Any

from ipython1.transport import channel


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_server(monkeypatch: Any) -> tuple[channel.CommandChannelServer, Clock]:
    clock = Clock()
    monkeypatch.setattr(channel, "host_key", lambda: "")  # no Unix socket: nothing listens
    monkeypatch.setattr(channel.reactor, "seconds", clock)
    return channel.CommandChannelServer(controller=None), clock


class Session:
    pass


class End:
    session: Any = None


def test_a_session_offer_is_taken_once(monkeypatch) -> None:
    server, _ = make_server(monkeypatch)
    session = Session()
    offer = server.offer_session(session)
    end = End()
    assert not server.attach("session", offer["id"], b"wrong" * 4, end)
    offer = server.offer_session(session)
    assert server.attach("session", offer["id"], offer["secret"], end)
    assert end.session is session
    assert not server.attach("session", offer["id"], offer["secret"], End())


def test_offers_never_taken_are_forgotten_with_their_sessions(monkeypatch) -> None:
    server, clock = make_server(monkeypatch)
    stale = [server.offer_session(Session()) for _ in range(5)]
    clock.now += channel.OFFER_TTL + 1
    assert not server.attach("session", stale[0]["id"], stale[0]["secret"], End())
    server.offer_session(Session())  # a new offer sweeps the stale ones
    assert len(server._offers) == 1
    assert not any(isinstance(target, Session) and key[1] == s["id"]
                   for key, (_, target, _) in server._offers.items() for s in stale)
