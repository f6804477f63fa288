"""The data channel: relay pairing, TLS identity checks, secrets, blob store."""

from __future__ import annotations

import secrets
import socket
import threading

import pytest
from foolscap import crypto

from ipython1.kernel import datachannel as dc


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
