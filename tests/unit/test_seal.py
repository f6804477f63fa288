"""The sealed frames of direct transfers (transport.data.seal), without sockets.

A `Wire` stands for the socket: what one end sends is a list of frames a
test may alter, drop, repeat or cut before the other end reads them.
"""

from __future__ import annotations

import os

import pytest

from ipython1.transport.data import seal
from ipython1.transport.data.refs import TransferError
from ipython1.transport.data.stream import recv_exact, recv_into_exact

FRAME = 64  # small frames: a message of a few hundred bytes spans several


class Wire:
    """One direction of a connection: frames as sent, then read back as a byte stream."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self._out = b""

    def sendall(self, data: bytes) -> None:
        self.frames.append(bytes(data))

    def recv_into(self, view: memoryview, nbytes: int = 0) -> int:
        if not self._out and self.frames:
            self._out = b"".join(self.frames)
            self.frames = []
        n = min(len(view), nbytes or len(view), len(self._out))
        view[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


def ends(frame: int = FRAME) -> tuple[Wire, seal.SealedStream, seal.SealedStream]:
    """Return a wire and a client end that writes to it and an engine end that reads it."""
    key = seal.seal_key(os.urandom(16), b"p" * 16)
    wire = Wire()
    client = seal.SealedStream(wire, key, seal.TO_ENGINE, frame=frame)
    engine = seal.SealedStream(wire, key, seal.TO_CLIENT, frame=frame)
    return wire, client, engine


MESSAGE = bytes(range(256)) * 3  # 768 bytes: 12 frames


def test_messages_round_trip_in_frames_into_the_callers_memory():
    wire, client, engine = ends()
    client.sendall(MESSAGE)
    client.sendall(b"K")
    client.sendall(b"")  # nothing at all
    assert len(wire.frames) == 12 + 1
    into = bytearray(len(MESSAGE))
    recv_into_exact(engine, memoryview(into))
    assert into == MESSAGE
    assert engine.recv(1) == b"K"
    assert engine.recv(1) == b""  # the end, cleanly


def test_reads_smaller_than_a_frame_get_the_rest_later():
    wire, client, engine = ends()
    client.sendall(b"E\x05\x00" + b"hello")  # a refusal: status, length, reason
    assert engine.recv(1) == b"E"
    assert bytes(recv_exact(engine, 2)) == b"\x05\x00"
    assert bytes(recv_exact(engine, 5)) == b"hello"


def test_the_wire_never_carries_the_plaintext():
    wire, client, _ = ends()
    pattern = b"ipython1-plaintext-" * 4
    client.sendall(pattern * 4)
    sent = b"".join(wire.frames)
    assert pattern[:16] not in sent
    assert len(sent) == len(pattern * 4) + len(wire.frames) * (seal.FRAME_HEAD.size +
                                                               seal.TAG_SIZE)


def test_only_a_messages_last_frame_is_final():
    wire, client, _ = ends()
    client.sendall(MESSAGE)
    flags = [seal.FRAME_HEAD.unpack(f[:seal.FRAME_HEAD.size])[1] for f in wire.frames]
    assert flags == [0] * 11 + [seal.FINAL]


def tamper(change) -> str:
    """Send MESSAGE, change its frames on the wire, read it; return the reader's error."""
    wire, client, engine = ends()
    client.sendall(MESSAGE)
    wire.frames = change(wire.frames)
    with pytest.raises(TransferError) as caught:
        recv_into_exact(engine, memoryview(bytearray(len(MESSAGE))))
    return str(caught.value)


def flip(frame: bytes, at: int) -> bytes:
    return frame[:at] + bytes([frame[at] ^ 1]) + frame[at + 1:]


@pytest.mark.parametrize("where", [seal.FRAME_HEAD.size + 3, -1], ids=["ciphertext", "tag"])
def test_a_flipped_byte_fails_authentication(where):
    assert "failed authentication" in tamper(lambda f: [f[0], flip(f[1], where), *f[2:]])


def test_a_flipped_final_flag_fails_authentication():
    assert "failed authentication" in tamper(lambda f: [flip(f[0], 4), *f[1:]])


def test_a_dropped_frame_fails_authentication():
    assert "failed authentication" in tamper(lambda f: [f[0], *f[2:]])


def test_a_replayed_frame_fails_authentication():
    assert "failed authentication" in tamper(lambda f: [f[0], f[1], f[1], *f[2:]])


def test_reordered_frames_fail_authentication():
    assert "failed authentication" in tamper(lambda f: [f[1], f[0], *f[2:]])


def test_a_truncated_stream_is_refused():
    assert "closed inside a sealed frame" in tamper(lambda f: [*f[:5], f[5][:20]])
    # Cut where a frame ends: the reader knows how many bytes it waits for.
    assert "connection closed after" in tamper(lambda f: f[:5])


def test_a_longer_frame_than_agreed_is_refused_before_reading_it():
    long = seal.FRAME_HEAD.pack(FRAME + 1, 0)
    assert "malformed" in tamper(lambda f: [long + f[0][seal.FRAME_HEAD.size:], *f[1:]])


def test_frames_sent_one_way_do_not_open_the_other_way():
    # A reflection: the client's own frames played back to it.
    wire, client, _ = ends()
    client.sendall(MESSAGE)
    client.sock = Wire()
    reader = seal.SealedStream(wire, seal.seal_key(b"o" * 16, b"p" * 16), seal.TO_ENGINE,
                               frame=FRAME)
    with pytest.raises(TransferError, match="failed authentication"):
        reader.recv(len(MESSAGE))


def test_another_connections_key_does_not_open_the_frames():
    wire, client, _ = ends()
    client.sendall(MESSAGE)
    other = seal.SealedStream(wire, seal.seal_key(os.urandom(16), b"p" * 16), seal.TO_CLIENT,
                              frame=FRAME)
    with pytest.raises(TransferError, match="failed authentication"):
        other.recv(len(MESSAGE))


def test_the_key_depends_on_the_offer_and_the_pairing():
    offer = os.urandom(16)
    key = seal.seal_key(offer, b"p" * 16)
    assert len(key) == 16
    assert key == seal.seal_key(offer, b"p" * 16)
    assert key != seal.seal_key(offer, b"q" * 16)
    assert key != seal.seal_key(os.urandom(16), b"p" * 16)


def test_the_rest_of_the_header_and_bytes_read_past_tls_come_first():
    key = seal.seal_key(os.urandom(16), b"p" * 16)
    wire = Wire()
    seal.SealedStream(wire, key, seal.TO_ENGINE, frame=FRAME).sendall(MESSAGE)
    sent = b"".join(wire.frames)
    wire.frames = [sent[30:]]  # as if the first 30 bytes came with the last TLS record
    engine = seal.SealedStream(wire, key, seal.TO_CLIENT, raw=sent[:30], plain=b"sizes",
                               frame=FRAME)
    assert bytes(recv_exact(engine, 5)) == b"sizes"
    assert bytes(recv_exact(engine, len(MESSAGE))) == MESSAGE


@pytest.mark.parametrize(("value", "mode"), [("sealed", "sealed"), ("on", "sealed"),
                                             ("tls", "tls"), ("off", "off")])
def test_data_encryption_modes(value, mode):
    assert seal.encryption_mode(value) == mode


def test_an_unknown_data_encryption_mode_is_refused():
    with pytest.raises(ValueError, match="sealed .*tls or off"):
        seal.encryption_mode("aes")


@pytest.mark.parametrize(("argv", "mode"), [([], "sealed"), (["--data-encryption=on"], "sealed"),
                                            (["--data-encryption=tls"], "tls"),
                                            (["--data-encryption=off"], "off")])
def test_ipcontroller_takes_the_modes(argv, mode):
    from ipython1.scripts.ipcontroller import Options

    options = Options()
    options.parseOptions(argv)
    assert options["data-encryption"] == mode


def test_ipcontroller_refuses_another_mode():
    from twisted.python import usage

    from ipython1.scripts.ipcontroller import Options

    with pytest.raises(usage.UsageError, match="sealed .*tls or off"):
        Options().parseOptions(["--data-encryption=yes"])


def test_a_finished_connections_frame_buffers_serve_the_next_one():
    big = seal.SMALL * 4
    wire, client, engine = ends(big)
    client.sendall(b"K")  # a status: no whole frame's buffer for that
    assert engine.recv(1) == b"K"
    assert client._taken == engine._taken == []
    client.sendall(MESSAGE * 2)
    assert bytes(recv_exact(engine, len(MESSAGE) * 2)) == MESSAGE * 2
    used = {id(b) for b in client._taken + engine._taken}
    assert len(used) == 2  # one to seal into, one to receive into
    del client, engine
    wire, client, engine = ends(big)
    client.sendall(MESSAGE * 2)
    assert bytes(recv_exact(engine, len(MESSAGE) * 2)) == MESSAGE * 2
    assert {id(b) for b in client._taken + engine._taken} == used
