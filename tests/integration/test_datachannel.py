"""The data channel: relay pairing, TLS identity checks, secrets, blob store."""

from __future__ import annotations

import os
import secrets
import socket
import struct
import threading
import time
import weakref

import pytest
from foolscap import crypto

from ipython1.engine import dataserver
from ipython1.engine.dataserver import DirectServer
from ipython1.kernel import datachannel as dc
from ipython1.transport.data import stream
from ipython1.transport.data.local import LOCAL_HEAD
from tests.conftest import wait_until


@pytest.fixture(scope="module")
def engine_identity():
    cert = crypto.createCertificate()
    pem = cert.dumpPEM()
    pem = pem if isinstance(pem, bytes) else pem.encode()
    return dc.server_context(pem), crypto.digest32(cert.digest("sha1"))


@pytest.fixture
def relay():
    r = dc.Relay()
    yield r
    r.close()


def _transfer(relay, identity, direction, frames=None, sizes=None, store=None,
              secret_seen_by_engine=None, tubid=None):
    ctx, real_tubid = identity
    pairing_id, secret, blob_id = secrets.token_bytes(16), secrets.token_bytes(32), b"b" * 16
    store = store if store is not None else dc.BlobStore()
    if direction == "download":
        store.put(blob_id, frames)
        sizes = [len(f) for f in frames]
    relay.expect(pairing_id)
    errors = []

    def engine():
        try:
            dc.engine_transfer(ctx, relay.address, pairing_id, secret_seen_by_engine or secret,
                               direction, blob_id, sizes or [len(f) for f in frames], store)
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=engine)
    t.start()
    ticket = {"relay": relay.address, "pairing_id": pairing_id, "secret": secret,
              "tubid": tubid or real_tubid}
    try:
        if direction == "upload":
            result = dc.client_transfer(ticket, frames=frames)
        else:
            result = dc.client_transfer(ticket, sizes=sizes)
    finally:
        t.join(10)
    return result, store, blob_id, errors


def test_upload_then_download_round_trip(relay, engine_identity):
    frames = [b"header", secrets.token_bytes(3 * 2**20), b""]
    _, store, blob_id, errors = _transfer(relay, engine_identity, "upload", frames=frames)
    assert not errors and [bytes(f) for f in store.take(blob_id)] == frames
    got, _, _, errors = _transfer(relay, engine_identity, "download", frames=frames)
    assert not errors and [bytes(f) for f in got] == frames
    assert relay.transfers == 2


def test_client_refuses_an_engine_with_the_wrong_certificate(relay, engine_identity):
    with pytest.raises(dc.TransferError, match="does not match its tubid"):
        _transfer(relay, engine_identity, "upload", frames=[b"x" * 10], tubid="a" * 32)


def test_engine_refuses_a_wrong_secret(relay, engine_identity):
    store = dc.BlobStore()
    with pytest.raises((dc.TransferError, OSError)):
        _transfer(relay, engine_identity, "upload", frames=[b"x" * 10], store=store,
                  secret_seen_by_engine=b"s" * 32)
    assert len(store) == 0  # nothing was accepted


def test_relay_drops_unknown_pairing_ids(relay):
    host, port = relay.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"u" * 16)
        assert sock.recv(1) == b""  # closed at once


def test_blob_store_take_once_and_expiry():
    store = dc.BlobStore(ttl=0.0)
    store.put(b"a", [b"1"])
    assert store.take(b"a") == [b"1"]
    with pytest.raises(dc.TransferError):
        store.take(b"a")
    store.put(b"old", [b"1"])
    store.put(b"new", [b"2"])  # putting expires what is older than the ttl
    with pytest.raises(dc.TransferError):
        store.take(b"old")


def test_blob_references_round_trip():
    ref = dc.blob_ref(b"i" * 16, [5, 2**30, 0])
    assert dc.parse_blob_ref(ref) == (b"i" * 16, [5, 2**30, 0])
    assert dc.parse_blob_ref([b"IPF1", b"x"]) is None
    assert dc.is_large([b"x" * dc.THRESHOLD]) and not dc.is_large([b"x"])


# -- straight to the engine's data port ------------------------------------------------------


@pytest.fixture
def direct_server(engine_identity):
    server = DirectServer(dc.BlobStore(), lambda: engine_identity[0])
    yield server
    server.close()


def _direct_ticket(server, identity, plain=False, allow_plain=None, uses=4, seal=True):
    pairing_id, secret = secrets.token_bytes(16), secrets.token_bytes(32)
    server.expect(pairing_id, secret, uses, plain if allow_plain is None else allow_plain)
    return {"pairing_id": pairing_id, "secret": secret, "blob_id": b"d" * 16, "plain": plain,
            "seal": seal and not plain, "direct": f"127.0.0.1:{server.port}",
            "tubid": identity[1]}


# --data-encryption's modes: the ticket's flags and the client's counter of each.
MODES = {"sealed": ({}, "direct"), "tls": ({"seal": False}, "direct-tls"),
         "off": ({"plain": True}, "direct-unencrypted")}


@pytest.mark.parametrize("mode", list(MODES))
def test_direct_upload_then_download(direct_server, engine_identity, mode):
    frames = [b"header", secrets.token_bytes(5 * 2**20 + 3), b""]
    ticket = _direct_ticket(direct_server, engine_identity, **MODES[mode][0])
    before = dict(dc.TRANSFERS)
    assert dc.client_transfer(ticket, frames=frames) is None
    stored = direct_server.store.take(b"d" * 16)
    assert [bytes(f) for f in stored] == frames
    direct_server.store.put(b"d" * 16, frames)
    got = dc.client_transfer(ticket, sizes=[len(f) for f in frames])
    assert [bytes(f) for f in got] == frames
    path = MODES[mode][1]
    assert dc.TRANSFERS[path] - before.get(path, 0) == 2
    assert direct_server.pending() == 2  # a book: two of its four uses left


class _Frame(bytearray):
    """A frame that can be watched with a weak reference."""


@pytest.mark.parametrize("mode", list(MODES))
def test_a_large_direct_transfer_goes_in_stripes(direct_server, engine_identity, mode,
                                                 monkeypatch):
    monkeypatch.setattr(stream, "STRIPE_MIN", 2**20)
    monkeypatch.setenv(stream.STREAMS_ENV, "3")
    frames = [b"head", secrets.token_bytes(3 * 2**20 + 1), b"", secrets.token_bytes(2**19)]
    ticket = _direct_ticket(direct_server, engine_identity, uses=6, **MODES[mode][0])
    landed = []
    assert dc.client_transfer(ticket, frames=frames, accepted=lambda: landed.append(1)) is None
    assert landed == [1]  # once, not once per stripe
    assert [bytes(f) for f in direct_server.store.take(b"d" * 16)] == frames
    lent = [_Frame(f) for f in frames]
    direct_server.store.put(b"d" * 16, list(lent), lent=True)
    got = dc.client_transfer(ticket, sizes=[len(f) for f in frames])
    assert [bytes(f) for f in got] == frames
    direct_server.store.settle()  # the lent value was given back: nothing waits
    # ...and nothing of the server keeps it: its memory is free for the next value.
    watched = weakref.ref(lent[1])
    del lent
    wait_until(lambda: watched() is None, 5, "the lent frame to be let go")
    assert direct_server.pending() == 0  # three connections each way
    assert direct_server.transfers == 6


def test_direct_client_checks_the_engine_certificate(direct_server, engine_identity):
    ticket = dict(_direct_ticket(direct_server, engine_identity), tubid="a" * 32)
    # Not the engine: nothing is sent, and the client may still try the relay.
    with pytest.raises(dc.DirectUnavailable, match="does not match the engine's tubid"):
        dc.client_transfer(ticket, frames=[b"x" * 10])
    assert direct_server.pending() == 4  # the secret never left the client


def test_direct_server_refuses_wrong_secrets_and_unallowed_plain(direct_server,
                                                                  engine_identity):
    for plain in (False, True):
        ticket = dict(_direct_ticket(direct_server, engine_identity, plain), secret=b"s" * 32)
        with pytest.raises(dc.TransferError, match="wrong transfer secret"):
            dc.client_transfer(ticket, frames=[b"x" * 10])
    ticket = _direct_ticket(direct_server, engine_identity, plain=True, allow_plain=False)
    with pytest.raises(dc.TransferError, match="unencrypted transfers are off"):
        dc.client_transfer(ticket, frames=[b"x" * 10])
    assert len(direct_server.store) == 0


def test_unreachable_data_port_says_so(engine_identity):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ticket = {"pairing_id": b"p" * 16, "secret": b"s" * 32, "blob_id": b"d" * 16,
              "direct": f"127.0.0.1:{port}", "tubid": engine_identity[1]}
    with pytest.raises(dc.DirectUnavailable):
        dc.client_transfer(ticket, frames=[b"x" * 10])


def _hung_up(sock):
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:  # closed with our bytes unread
        return True


def test_direct_server_hangs_up_on_idle_and_foreign_peers(engine_identity):
    guard_deadline = 0.3
    server = DirectServer(dc.BlobStore(), lambda: engine_identity[0])
    server.guard.deadline = guard_deadline
    try:
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        foreign = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        foreign.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert _hung_up(foreign)  # neither TLS nor our magic: closed at once
        assert _hung_up(idle)  # closed within the guard's deadline
        wait_until(lambda: server.guard.pending == 0, 5, "the guard to release both")
        # still serving
        ticket = _direct_ticket(server, engine_identity)
        assert dc.client_transfer(ticket, frames=[b"x" * 10]) is None
    finally:
        idle.close()
        foreign.close()
        server.close()


# -- the same-host path --------------------------------------------------------------------


@pytest.fixture
def local_server():
    server = dc.LocalServer(dc.BlobStore())
    yield server
    server.close()


def _local_ticket(server, blob_id, secret=None, uses=1, **local):
    pairing_id, real_secret = secrets.token_bytes(16), secrets.token_bytes(32)
    server.expect(pairing_id, real_secret, uses)
    info = server.info()
    return {"pairing_id": pairing_id, "secret": secret or real_secret, "blob_id": blob_id,
            "local": {"socket": info["socket"], "pid": info["pid"], "uid": info["uid"], **local}}


def test_local_upload_then_download_rebuilds_writeable_arrays(local_server):
    np = pytest.importorskip("numpy")
    from ipython1.common.serialize import deserialize, serialize

    a = np.arange(3 * 2**18, dtype=np.float64)  # 6 MiB: one huge-page frame
    frames = serialize(a, max_frame=None, copy=False)
    sizes = [len(f) for f in frames]
    before = dict(dc.TRANSFERS)
    ticket = _local_ticket(local_server, b"u" * 16, uses=2)  # one ticket, both ways
    assert dc.client_transfer(ticket, frames=frames) is None
    stored = local_server.store.take(b"u" * 16)
    on_engine = deserialize(stored)
    assert np.array_equal(on_engine, a) and on_engine.flags.writeable
    on_engine[0] = -1  # rebuilt in place on the received mapping: no copy
    assert stored[-1][:8] == np.float64(-1).tobytes()

    local_server.store.put(b"d" * 16, dc.private_copy(frames))
    got = dc.client_transfer(dict(ticket, blob_id=b"d" * 16), sizes=sizes)
    back = deserialize(got)
    assert np.array_equal(back, a) and back.flags.writeable and back.flags.c_contiguous
    back[1] = 7.0
    assert dc.TRANSFERS["local"] == before.get("local", 0) + 2
    # The engine counts a download once its last write returned: maybe after we read it.
    wait_until(lambda: local_server.transfers == 2, timeout=10)
    assert local_server.pending() == 0
    assert len(local_server.store) == 0


def test_local_transfer_refuses_a_wrong_secret_and_an_unknown_ticket(local_server):
    ticket = _local_ticket(local_server, b"u" * 16, secret=b"s" * 32)
    with pytest.raises(dc.TransferError, match="wrong transfer secret"):
        dc.client_transfer(ticket, frames=[b"x" * 10])
    # A wrong guess uses the ticket up: the right secret comes too late.
    with pytest.raises(dc.TransferError, match="unknown or expired transfer"):
        dc.client_transfer(dict(ticket, secret=b"t" * 32), frames=[b"x" * 10])
    assert len(local_server.store) == 0 and local_server.pending() == 0


def test_a_ticket_book_serves_its_uses_then_no_more(local_server, monkeypatch):
    ticket = _local_ticket(local_server, b"u" * 16, uses=3)
    for i in range(3):
        dc.client_transfer(dict(ticket, blob_id=bytes([i]) * 16), frames=[b"x" * 10])
    with pytest.raises(dc.TransferError, match="unknown or expired transfer"):
        dc.client_transfer(ticket, frames=[b"x" * 10])
    assert len(local_server.store) == 3 and local_server.pending() == 0
    monkeypatch.setattr(dataserver, "BOOK_TTL", -1.0)
    with pytest.raises(dc.TransferError, match="unknown or expired transfer"):
        dc.client_transfer(_local_ticket(local_server, b"v" * 16), frames=[b"x" * 10])
    book = dc.TicketBook({"uses": 2, "ttl": 60})
    assert book.spend() and book.spend() and not book.spend()
    assert not dc.TicketBook({"uses": 2, "ttl": -1}).spend()


def test_client_refuses_a_local_socket_served_by_another_process(local_server):
    ticket = _local_ticket(local_server, b"u" * 16, pid=1)
    with pytest.raises(dc.TransferError, match="not by the engine") as info:
        dc.client_transfer(ticket, frames=[b"x" * 10])
    assert not isinstance(info.value, dc.LocalUnavailable)  # no fallback to an impostor
    assert local_server.pending() == 1  # the secret never left the client


def test_engine_hangs_up_on_another_uid():
    server = dc.LocalServer(dc.BlobStore(), uid=os.getuid() + 1)  # as if we were someone else
    try:
        ticket = _local_ticket(server, b"u" * 16, uid=os.getuid())
        with pytest.raises(dc.TransferError, match=f"uid {os.getuid()} is not the engine's"):
            dc.client_transfer(ticket, frames=[b"x" * 10])
        assert server.pending() == 1 and len(server.store) == 0
    finally:
        server.close()


def test_unreachable_local_socket_is_local_unavailable(local_server):
    ticket = _local_ticket(local_server, b"u" * 16)
    local_server.close()
    with pytest.raises(dc.LocalUnavailable, match="cannot reach"):
        dc.client_transfer(ticket, frames=[b"x" * 10])


def test_engine_vanishing_mid_download_is_a_prompt_transfer_error():
    # A stand-in engine that accepts, sends 1 KiB of 8 MiB, and dies.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"@ipython1-test-{secrets.token_hex(8)}"
    listener.bind("\0" + name[1:])
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.recv(LOCAL_HEAD.size + 8)
            conn.sendall(b"K" + b"x" * 1024)

    t = threading.Thread(target=serve)
    t.start()
    ticket = {"pairing_id": b"p" * 16, "secret": b"s" * 32, "blob_id": b"b" * 16,
              "local": {"socket": name, "pid": os.getpid(), "uid": os.getuid()}}
    try:
        t0 = time.monotonic()
        with pytest.raises(dc.TransferError, match="closed after 1024 of"):
            dc.client_transfer(ticket, sizes=[8 * 2**20])
        assert time.monotonic() - t0 < 5
    finally:
        t.join(5)
        listener.close()


def test_download_of_a_missing_blob_is_refused_with_the_reason(local_server):
    ticket = _local_ticket(local_server, b"m" * 16)
    with pytest.raises(dc.TransferError, match="not received by the engine"):
        dc.client_transfer(ticket, sizes=[10])


def test_host_key_names_boot_host_and_user_unless_turned_off(monkeypatch):
    key = dc.host_key()
    net = os.stat("/proc/self/ns/net").st_ino
    assert f":{socket.gethostname()}:{os.getuid()}:{net}." in key and len(key) > 40
    monkeypatch.setenv(dc.LOCAL_ENV, "0")
    assert dc.host_key() == "" and not dc.local_enabled()


def test_lent_frames_are_copied_before_the_next_command_if_not_yet_sent():
    store = dc.BlobStore()
    user = bytearray(b"a" * (2 * dc.HUGE_MIN))
    store.put(b"l" * 16, [b"header", memoryview(user)], lent=True)
    store.settle()  # the next command may change user's memory: copy first
    user[:] = b"b" * len(user)
    with store.lend(b"l" * 16) as frames:
        assert bytes(frames[1]) == b"a" * len(user)
    store.settle()  # nothing lent any more: returns at once


def test_settle_waits_for_a_download_of_lent_memory_under_way():
    store = dc.BlobStore()
    user = bytearray(b"a" * 1000)
    store.put(b"l" * 16, [memoryview(user)], lent=True)
    settled = threading.Event()
    with store.lend(b"l" * 16) as frames:
        assert frames[0].obj is user  # sent as it is, no copy
        t = threading.Thread(target=lambda: (store.settle(), settled.set()))
        t.start()
        assert not settled.wait(0.2)  # still sending: the next command waits
    t.join(5)
    assert settled.is_set() and len(store) == 0


def test_a_read_only_array_arrives_writeable_without_a_copy(local_server):
    np = pytest.importorskip("numpy")
    from ipython1.common.serialize import deserialize, serialize

    a = np.arange(2**18, dtype=np.float64)  # 2 MiB
    a.flags.writeable = False
    frames = serialize(a, max_frame=None, copy=False)
    dc.client_transfer(_local_ticket(local_server, b"r" * 16), frames=frames)
    stored = local_server.store.take(b"r" * 16)
    back = deserialize(stored)
    assert np.array_equal(back, a) and back.flags.writeable
    back[0] = 5.0  # on the received mapping itself
    assert stored[-1][:8] == np.float64(5.0).tobytes()


def test_a_process_forked_from_the_engine_does_not_hold_its_socket(local_server):
    pid = os.fork()
    if pid == 0:  # the child closes its copy of the listener at once
        os._exit(0 if local_server._listener.fileno() == -1 else 1)
    assert os.waitpid(pid, 0)[1] == 0
    ticket = _local_ticket(local_server, b"f" * 16)
    dc.client_transfer(ticket, frames=[b"x" * 10])  # the parent still serves
    assert len(local_server.store) == 1


def test_a_command_waits_for_an_announced_upload_and_hears_why_it_failed(local_server):
    store = local_server.store
    got = []
    store.arriving(b"a" * 16)
    taker = threading.Thread(target=lambda: got.append(store.take(b"a" * 16)))
    taker.start()  # the command came first: it waits for the bytes
    store.put(b"a" * 16, [b"value"])
    taker.join(5)
    assert got == [[b"value"]] and len(store) == 0

    # A client that is accepted, then vanishes mid-upload.
    ticket = _local_ticket(local_server, b"b" * 16)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect("\0" + ticket["local"]["socket"][1:])
        sock.sendall(LOCAL_HEAD.pack(ticket["pairing_id"], ticket["secret"], b"U",
                                         b"b" * 16, 1) + struct.pack("<Q", 2**20))
        assert sock.recv(1) == b"K"  # accepted: the command may go now
        sock.sendall(b"x" * 10)
    t0 = time.monotonic()
    with pytest.raises(dc.TransferError, match="did not reach the engine: .*10 of 1048576"):
        store.take(b"b" * 16)
    assert time.monotonic() - t0 < 5 and len(store) == 0
