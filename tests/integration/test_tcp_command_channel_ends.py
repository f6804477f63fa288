"""The command channel's TLS port over real loopback TCP: who may attach, and what the
engine's and the client's ends check before they give away a secret."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ipython1.client.reactor import ReactorThread
from ipython1.common import wire
from ipython1.controller.queue import EngineQueue
from ipython1.controller.registry import Controller, EngineRecord
from ipython1.kernel.datachannel import tubid_of
from ipython1.transport import channel as commandchannel
from ipython1.transport import tcpchannel
from ipython1.transport.foolscap import FoolscapEngineConnection

WRONG_TUBID = "a" * 32


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("IPYTHON1_HANDSHAKE_TIMEOUT", "1")
    loop = ReactorThread.get()
    pem = wire.ec_certificate_pem()

    def setup() -> Any:
        controller = Controller()
        controller.engines[5] = EngineRecord(5, FoolscapEngineConnection(None),
                                             EngineQueue(5, lambda c: None))
        server = commandchannel.CommandChannelServer(
            controller, lambda s: tcpchannel.TCPListener(s, "127.0.0.1", 0, pem))
        der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
        return SimpleNamespace(channels=server, controller=controller, tubid=tubid_of(der),
                               port=server.tcp_port)

    s = loop.submit(setup).result(timeout=10)
    yield s
    loop.submit(s.channels.close).result(timeout=10)


def _offer(s: Any, engine_id: int = 5) -> dict[str, Any]:
    offer = ReactorThread.get().submit(s.channels.offer, engine_id, tcp=True).result(timeout=10)
    assert offer["tcp_port"] == s.port and "socket" not in offer
    return offer


def _connection(s: Any) -> Any:
    return s.controller.engines[5].connection


def _wait(predicate: Any, what: str, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        assert time.monotonic() < end, what
        time.sleep(0.01)


def test_the_secret_inside_tls_attaches_the_engine_once(server: Any) -> None:
    offer = _offer(server)
    end = tcpchannel.connect_engine(offer, "127.0.0.1", server.tubid)
    assert end is not None
    try:
        _wait(lambda: _connection(server).local, "the engine attached")
        assert _connection(server).name == "tcp-channel"
        # The same secret a second time: spent (refused, so no channel at all).
        assert tcpchannel.connect_engine(offer, "127.0.0.1", server.tubid,
                                         retry_delays=()) is None
    finally:
        end.close()
    _wait(lambda: not _connection(server).local, "detached once closed")
    assert _connection(server).name == "foolscap"


def test_a_wrong_secret_is_refused_and_spends_the_offer(server: Any) -> None:
    offer = _offer(server)
    assert tcpchannel.connect_engine(dict(offer, secret=b"not the secret!!"), "127.0.0.1",
                                     server.tubid, retry_delays=()) is None
    # No guessing twice: the right secret is refused now too.
    assert tcpchannel.connect_engine(offer, "127.0.0.1", server.tubid, retry_delays=()) is None
    assert not _connection(server).local


def test_an_engine_gives_its_secret_only_to_the_controllers_certificate(server: Any) -> None:
    offer = _offer(server)
    assert tcpchannel.connect_engine(offer, "127.0.0.1", WRONG_TUBID) is None
    # Nothing was sent: the offer is still good for the real controller.
    end = tcpchannel.connect_engine(offer, "127.0.0.1", server.tubid)
    assert end is not None
    try:
        _wait(lambda: _connection(server).local, "the engine attached")
    finally:
        end.close()


def test_a_client_gives_its_secret_only_to_the_controllers_certificate(server: Any) -> None:
    loop = ReactorThread.get()

    def offer_session() -> Any:
        return server.channels.offer_session(SimpleNamespace(), tcp=True)

    offer = loop.submit(offer_session).result(timeout=10)

    def connect(tubid: str) -> Any:
        return loop.submit(tcpchannel.connect_client, offer, "127.0.0.1", tubid).result(
            timeout=15)

    assert connect(WRONG_TUBID) is None
    end = connect(server.tubid)  # the offer was not spent
    assert end is not None and not end.closed
    loop.submit(end.transport.loseConnection).result(timeout=10)


def test_a_closed_port_fails_over_at_once(server: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    offer = dict(_offer(server), tcp_port=closed_port)
    start = time.monotonic()
    assert tcpchannel.connect_engine(offer, "127.0.0.1", server.tubid, retry_delays=()) is None
    assert ReactorThread.get().submit(tcpchannel.connect_client, offer, "127.0.0.1",
                                      server.tubid).result(timeout=15) is None
    assert time.monotonic() - start < tcpchannel.CONNECT_TIMEOUT  # refused: no waiting


def test_an_engine_turned_away_by_the_listeners_cap_tries_again(server: Any) -> None:
    # Hundreds of engines starting at once meet the cap on unauthenticated
    # connections: those turned away come back, with the same offer.
    guard = server.channels.tcp.guard
    admit, refused = guard.admit, []

    def admit_after_two() -> bool:
        if len(refused) < 2:
            refused.append(True)
            return False
        return admit()

    guard.admit = admit_after_two
    end = tcpchannel.connect_engine(_offer(server), "127.0.0.1", server.tubid,
                                    retry_delays=(0.05, 0.05, 0.05))
    assert end is not None and len(refused) == 2
    try:
        _wait(lambda: _connection(server).local, "the engine attached")
    finally:
        end.close()


def _tls(port: int) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return tcpchannel.engine_context().wrap_socket(raw)


def _hung_up(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True
    finally:
        sock.close()


def test_an_engine_whose_hello_came_too_late_tries_again(server: Any) -> None:
    # A controller too busy to read the hello before the handshake deadline
    # hangs up without taking the offer: the engine must not keep that end
    # as if attached (it would stay on Foolscap for good), but come back.
    offer = _offer(server)
    attach, hung_up = server.channels.attach, []

    def hang_up_once(kind: Any, ident: Any, secret: Any, end: Any) -> bool:
        if not hung_up:
            hung_up.append(True)
            end.transport.abortConnection()  # as the deadline does, the offer unspent
            return False
        return attach(kind, ident, secret, end)

    server.channels.attach = hang_up_once
    end = tcpchannel.connect_engine(offer, "127.0.0.1", server.tubid, retry_delays=(0.05,))
    assert end is not None and hung_up
    try:
        _wait(lambda: _connection(server).local, "the engine attached")
    finally:
        end.close()


def test_unauthenticated_peers_are_cut_off_cheaply(server: Any) -> None:
    guard = server.channels.tcp.guard
    # Not TLS at all.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n" * 10)
        assert _hung_up(raw)
    # TLS, then a frame larger than a hello may be: cut at its header, unread.
    tls = _tls(server.port)
    tls.sendall(struct.pack("!I", 1 << 20) + b"x" * 100)
    assert _hung_up(tls)
    # TLS, then garbage that is no hello.
    tls = _tls(server.port)
    junk = msgpack.packb(["engine"])
    tls.sendall(struct.pack("!I", len(junk)) + junk)
    assert _hung_up(tls)
    # TLS, then nothing: closed at the handshake deadline (1 s here).
    tls = _tls(server.port)
    start = time.monotonic()
    assert _hung_up(tls)
    assert 0.5 < time.monotonic() - start < 8
    _wait(lambda: guard.pending == 0, "every slot given back")
    # The listener still serves the real engine.
    end = tcpchannel.connect_engine(_offer(server), "127.0.0.1", server.tubid)
    assert end is not None
    try:
        _wait(lambda: _connection(server).local, "the engine attached")
    finally:
        end.close()
