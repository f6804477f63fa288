"""Foolscap Tubs as ipython1 sets them up, in-process over 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer

from ipython1.client.reactor import ReactorThread
from ipython1.common import wire


class Echo(Referenceable):  # type: ignore[misc]
    def remote_echo(self, value: Any) -> Any:
        return value


def test_each_message_reaches_tls_in_one_write_and_arrives_whole(tmp_path: Path) -> None:
    loop = ReactorThread.get()
    nested = {"text": "é" * 100, "frames": [b"\x00" * 70_000, b"x"], "n": [1, -2, 2**40],
              "deep": [[[["leaf"]]]]}

    @defer.inlineCallbacks
    def scenario() -> Any:
        server, _port = wire.listening_tub(tmp_path / "cert.pem")
        server.startService()
        furl = server.registerReference(Echo())
        client = wire.client_tub()
        try:
            rref = yield client.getReference(furl)
            broker = rref.tracker.broker
            assert isinstance(broker, wire.CoalescingBroker)
            writes: list[int] = []
            real_write = broker.transport.write

            def counting_write(data: bytes) -> None:
                writes.append(len(data))
                real_write(data)

            broker.transport.write = counting_write
            try:
                echoed = yield rref.callRemote("echo", nested)
            finally:
                broker.transport.write = real_write
            return echoed, writes
        finally:
            yield client.stopService()
            yield server.stopService()

    echoed, writes = loop.submit(scenario).result(timeout=30)
    assert echoed == nested
    # Banana alone would have made hundreds of writes for this call.
    assert len(writes) == 1


def test_a_republished_furl_keeps_its_swiss_number_and_the_file_is_private(
        tmp_path: Path) -> None:
    loop = ReactorThread.get()
    furl_path = tmp_path / "thing.furl"

    def publish_twice() -> Any:
        furls = []
        for _ in range(2):  # a controller restarted with the same certificate
            tub, _port = wire.listening_tub(tmp_path / "cert.pem")
            furls.append(wire.publish(tub, Echo(), furl_path))
        other, _port = wire.listening_tub(tmp_path / "other-cert.pem")
        furls.append(wire.publish(other, Echo(), furl_path))
        return furls

    first, again, other_cert = loop.submit(publish_twice).result(timeout=30)
    def tubid_and_swiss(furl: str) -> tuple[str, str]:
        return furl.split("@")[0], furl.rsplit("/", 1)[1]

    assert tubid_and_swiss(again) == tubid_and_swiss(first)  # the port may change
    assert tubid_and_swiss(other_cert)[1] != tubid_and_swiss(first)[1]
    assert furl_path.read_text().strip() == other_cert
    assert furl_path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
