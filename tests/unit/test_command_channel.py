"""The command channel's handshake, in-process: who may attach to an engine's queue."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import msgpack
import pytest

from ipython1.kernel import commandchannel
from ipython1.kernel.client import ReactorThread
from ipython1.kernel.controller import Controller, EngineRecord
from ipython1.kernel.queue import EngineQueue

pytestmark = pytest.mark.skipif(not commandchannel.host_key(), reason="needs Linux SO_PEERCRED")


@pytest.fixture
def server() -> Any:
    loop = ReactorThread.get()

    def setup() -> Any:
        controller = Controller()
        controller.engines[5] = EngineRecord(5, None, EngineQueue(5, lambda c: None))
        return commandchannel.CommandChannelServer(controller)

    server = loop.submit(setup).result(timeout=10)
    yield server
    loop.submit(server.close).result(timeout=10)


def _send(sock: socket.socket, message: Any) -> None:
    frame = msgpack.packb(message, use_bin_type=True)
    sock.sendall(struct.pack("!I", len(frame)) + frame)


def _receive(sock: socket.socket) -> Any:
    (size,) = struct.unpack("!I", sock.recv(4, socket.MSG_WAITALL))
    return msgpack.unpackb(sock.recv(size, socket.MSG_WAITALL), raw=False)


def _hello(server: Any, engine_id: Any, secret: Any, kind: str = "engine") -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect("\0" + server.name[1:])
    _send(sock, [kind, engine_id, secret])
    return sock


def _refused(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""  # the controller closed it
    finally:
        sock.close()


def _attached(server: Any, deadline: float = 10.0) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        channel = server.controller.engines[5].channel
        if channel is not None:
            return channel
        time.sleep(0.01)
    return None


def test_a_wrong_secret_or_engine_id_is_refused(server: Any) -> None:
    offer = ReactorThread.get().submit(server.offer, 5).result(timeout=10)
    assert _refused(_hello(server, 5, b"not the secret!!"))
    # The offer is spent by a failed attempt too: no guessing twice.
    assert _refused(_hello(server, 5, offer["secret"]))
    offer = ReactorThread.get().submit(server.offer, 5).result(timeout=10)
    assert _refused(_hello(server, 6, offer["secret"]))  # no such engine
    assert server.controller.engines[5].channel is None


def test_the_secret_handed_over_foolscap_attaches_the_engine_once(server: Any) -> None:
    offer = ReactorThread.get().submit(server.offer, 5).result(timeout=10)
    assert offer["pid"] > 0 and offer["socket"].startswith("@")
    sock = _hello(server, 5, offer["secret"])
    try:
        assert _attached(server) is not None
        assert _refused(_hello(server, 5, offer["secret"]))  # one use only
    finally:
        sock.close()
    end = time.monotonic() + 10
    while server.controller.engines[5].channel is not None and time.monotonic() < end:
        time.sleep(0.01)
    assert server.controller.engines[5].channel is None  # closed: detached


class FakeSession:
    def remote_get_ids(self) -> list[int]:
        return [0, 1]

    def remote_execute(self, code: str, targets: Any, block: bool) -> Any:
        return {"ran": code}


def test_a_session_offer_lets_its_client_call_the_session_only(server: Any) -> None:
    offer = ReactorThread.get().submit(server.offer_session, FakeSession()).result(timeout=10)
    assert _refused(_hello(server, offer["id"], b"wrong secret!!!!", kind="session"))
    offer = ReactorThread.get().submit(server.offer_session, FakeSession()).result(timeout=10)
    sock = _hello(server, offer["id"], offer["secret"], kind="session")
    try:
        assert _receive(sock) == ["ok", None, None]
        _send(sock, [1, "get_ids", []])
        assert _receive(sock) == [1, True, [0, 1]]
        _send(sock, [2, "execute", ["x = 1", "all", True]])
        assert _receive(sock) == [2, True, {"ran": "x = 1"}]
        # Foolscap's own argument checks still apply...
        _send(sock, [3, "execute", [42, "all", True]])
        seq, ok, error = _receive(sock)
        assert (seq, ok) == (3, False) and "bad arguments to execute" in error["evalue"]
        # ...and what needs Foolscap references is refused.
        _send(sock, [4, "subscribe_events", [None, 0]])
        seq, ok, error = _receive(sock)
        assert (seq, ok) == (4, False) and "command channel" in error["evalue"]
    finally:
        sock.close()
