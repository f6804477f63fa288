"""The transport package without sockets: frames, and the order of a session's calls."""

from __future__ import annotations

import struct
import time
from typing import Any

import msgpack
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from ipython1.transport import channel as command_channel
from ipython1.transport.framing import (
    MAX_UNAUTHENTICATED_FRAME,
    FrameReader,
    FrameReceiver,
    FrameTooLong,
    frame,
)


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 3, 4, 5, 7, 64, 1000])
def test_frames_come_out_whole_however_the_bytes_arrive(size: int) -> None:
    payloads = [b"", b"a", b"hello" * 50, bytes(range(256)) * 3, b"z"]
    stream = b"".join(frame(p) for p in payloads)
    reader = FrameReader()
    out: list[bytes] = []
    for piece in _pieces(stream, size):
        out.extend(bytes(f) for f in reader.feed(piece))
    assert out == payloads and reader.buffered == 0


def test_a_large_frame_read_in_small_pieces_costs_linear_time() -> None:
    # Int32StringReceiver re-joins its buffer on every read: 64 MiB in 64 KiB
    # reads took ~30 s. Each byte is copied once here (well under a second).
    payload = bytes(64 * 2**20)
    reader = FrameReader()
    start = time.perf_counter()
    out = []
    for piece in _pieces(frame(payload), 1 << 16):
        out.extend(reader.feed(piece))
    elapsed = time.perf_counter() - start
    assert len(out) == 1 and len(out[0]) == len(payload)
    assert elapsed < 3.0, f"64 MiB in 64 KiB reads took {elapsed:.1f} s"


def test_a_declared_length_over_the_limit_is_refused_before_buffering() -> None:
    reader = FrameReader(limit=100)
    with pytest.raises(FrameTooLong):
        reader.feed(struct.pack("!I", 101))
    assert reader.buffered == 0
    assert reader.feed(frame(b"x" * 100)) == [b"x" * 100]


class _Frames(FrameReceiver):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[bytes] = []

    def frameReceived(self, payload: bytes | bytearray) -> None:
        self.frames.append(bytes(payload))


def _connected() -> tuple[_Frames, StringTransport]:
    proto, transport = _Frames(), StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_an_unauthenticated_peer_may_send_only_small_frames() -> None:
    proto, transport = _connected()
    proto.dataReceived(frame(b"h" * MAX_UNAUTHENTICATED_FRAME))
    assert proto.frames == [b"h" * MAX_UNAUTHENTICATED_FRAME] and not transport.disconnecting
    proto.dataReceived(struct.pack("!I", MAX_UNAUTHENTICATED_FRAME + 1))
    assert transport.disconnecting  # dropped at the header, nothing buffered

    proto, transport = _connected()
    proto.authenticated()
    proto.dataReceived(frame(b"b" * 100_000))
    assert proto.frames == [b"b" * 100_000] and not transport.disconnecting


def test_the_controller_end_drops_a_stranger_that_declares_a_large_frame() -> None:
    end = command_channel.ControllerEnd(server=None)  # type: ignore[arg-type]
    transport = StringTransport()
    end.transport = transport  # connectionMade checks SO_PEERCRED: not here
    end.dataReceived(struct.pack("!I", 2**30))
    assert transport.disconnecting


def test_sending_a_large_frame_does_not_copy_it_into_the_header() -> None:
    proto, transport = _connected()
    payload = b"p" * (1 << 17)
    proto.sendFrame(payload)
    assert transport.value() == frame(payload)


# -- a client's calls keep their order across the channel and Foolscap ---------------


class _FakeChannel:
    """Stands in for a ClientEnd: records calls, answered by hand."""

    def __init__(self) -> None:
        self.closed = False
        self._pending: dict[int, Deferred[Any]] = {}
        self.sent: list[tuple[str, Any]] = []

    def call(self, op: str, args: Any) -> Deferred[Any]:
        msgpack.packb(list(args))  # as the real one: raises if msgpack cannot hold them
        d: Deferred[Any] = Deferred()
        self._pending[len(self.sent)] = d
        self.sent.append((op, list(args)))
        return d

    def answer(self, i: int, value: Any = None) -> None:
        self._pending.pop(i).callback(value)


class _FakeReference:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.answers: list[Deferred[Any]] = []

    def callRemote(self, op: str, *args: Any) -> Deferred[Any]:
        self.sent.append((op, list(args)))
        self.answers.append(Deferred())
        return self.answers[-1]


def test_session_calls_never_overtake_each_other_across_the_two_paths() -> None:
    channel, reference = _FakeChannel(), _FakeReference()
    calls = command_channel.ChannelSessionConnection(channel, reference)  # type: ignore[arg-type]
    assert calls.local
    first = calls.call("submit", ([[0, {}, [b"x"]]],))
    # Too big for msgpack: Foolscap must carry it, but not before "first" arrived.
    big = calls.call("submit", ([[1, {"priority": 10**30}, [b"x"]]],))
    after = calls.call("wait", ([1], True, None))
    assert channel.sent == [("submit", [[[0, {}, [b"x"]]]]), (command_channel.SYNC, [])]
    assert reference.sent == []
    channel.answer(1)  # the SYNC: the controller has the first submit
    assert [op for op, _ in reference.sent] == ["submit", "wait"]  # in order, one connection
    assert not first.called and not big.called and not after.called
    # While a Foolscap call is unanswered, later calls follow it there.
    calls.call("reserve", (8,))
    assert reference.sent[-1] == ("reserve", [8]) and len(channel.sent) == 2
    for d in reference.answers:
        d.callback({"status": "ok", "value": None})
    assert big.called and after.called
    calls.call("reserve", (8,))  # Foolscap drained: back on the channel, no SYNC needed
    assert channel.sent[-1] == ("reserve", [8]) and len(reference.sent) == 3
    # Nothing in flight on the channel: switching needs no SYNC.
    channel.answer(0)
    channel.answer(2)
    calls.call("submit", ([[2, {"priority": 10**30}, [b"x"]]],))
    assert reference.sent[-1][0] == "submit" and len(channel.sent) == 3
    # A closed channel: everything takes Foolscap.
    channel.closed = True
    assert not calls.local
    calls.call("spin", ())
    assert reference.sent[-1] == ("spin", [])


