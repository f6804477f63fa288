"""Large NumPy arrays travel intact, over the same-host path and over the TLS relay."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from ipython1.client import transfer
from ipython1.kernel import datachannel
from ipython1.transport.data.stream import DIRECT_ENV
from tests.conftest import wait_until


@pytest.mark.slow
def test_one_gib_array_push_and_pull_intact(make_cluster):
    cluster = make_cluster(1)
    mec = cluster.client(timeout=600)
    a = np.arange(2**27, dtype=np.float64).reshape(2**13, 2**14)  # 1 GiB
    a[-1, -1] = -1.5
    t0 = time.monotonic()
    mec.push({"a": a}, targets=0)
    pushed = time.monotonic() - t0
    # The engine holds the same values: check a digest there, not a copy here.
    mec.execute("import numpy as np\nd = (a.dtype.str, a.shape, float(a.sum()), float(a[-1, -1]))",
                targets=0)
    assert mec.pull("d", targets=0) == (a.dtype.str, a.shape, float(a.sum()), -1.5)
    t0 = time.monotonic()
    back = mec.pull("a", targets=0)
    pulled = time.monotonic() - t0
    assert back.dtype == a.dtype and back.shape == a.shape and back.flags.c_contiguous
    assert np.array_equal(back, a)
    print(f"1 GiB push {1024 / pushed:.0f} MiB/s, pull {1024 / pulled:.0f} MiB/s")


def test_fortran_ordered_array_beyond_one_frame(make_cluster):
    from ipython1.common.serialize import MAX_FRAME

    cluster = make_cluster(1)
    mec = cluster.client(timeout=120)
    rows = MAX_FRAME // (8 * 1000) + 7
    a = np.asfortranarray(np.random.default_rng(1).random((rows, 1000)))
    mec.push({"f": a}, targets=0)
    back = mec.pull("f", targets=0)
    assert back.flags.f_contiguous and np.array_equal(back, a)


@pytest.mark.parametrize("path", ["local", "direct", "relay"])
def test_large_values_to_many_engines_scatter_gather_and_map(make_cluster, monkeypatch, path):
    if path != "local":  # client and engines: TLS to the engines' data ports (or the relay)
        monkeypatch.setenv(datachannel.LOCAL_ENV, "0")
    if path == "relay":  # no data port: the relay only
        monkeypatch.setenv(DIRECT_ENV, "0")
    cluster = make_cluster(3)
    mec = cluster.client(timeout=120)
    assert all(("local_data" in info) == (path == "local") for info in mec.engine_info())
    fds = mec.apply(_open_fds)
    client_fds = _open_fds()
    before = dict(datachannel.TRANSFERS)
    big = np.random.default_rng(2).random(3 * 2**20 // 8 * 4)  # 12 MiB
    mec.push({"big": big, "small": 1})
    for back in mec.pull("big"):
        assert np.array_equal(back, big)
        back[0] = -1.0  # a private, writeable copy
    back, small = mec.pull(["big", "small"], targets=1)
    assert np.array_equal(back, big) and small == 1
    mec.push({"nb": big}, targets=2, block=False).get_result()  # copied, then sent
    assert np.array_equal(mec.pull("nb", targets=2), big)
    assert mec.pull("small") == [1, 1, 1]
    mec.scatter("part", big)
    assert [len(p) for p in mec.pull("part")] == [len(big) // 3] * 3
    assert np.array_equal(mec.gather("part"), big)
    chunks = [big[i::4] for i in range(4)]
    sums = mec.map(lambda a: float(a.sum()), chunks)
    assert sums == pytest.approx([float(c.sum()) for c in chunks])
    doubled = mec.apply(lambda a: a * 2, big, targets=1)
    assert np.array_equal(doubled, big * 2)
    # Nothing is left behind in the engines' blob stores.
    assert mec.apply(lambda: __import__("ipython1.engine.kernel").engine.kernel.BLOBS.__len__()) \
        == [0, 0, 0]
    # Same host or direct: one ticket from the controller per engine serves every transfer.
    assert len(mec._async._books) == (0 if path == "relay" else 3)
    assert datachannel.TRANSFERS[path] - before.get(path, 0) >= 3 + 3 + 3 + 3 + 4 + 1
    for other in {"local", "direct", "relay"} - {path}:
        assert datachannel.TRANSFERS[other] == before.get(other, 0)
    # No descriptor is left open, on the engines or here.
    wait_until(lambda: mec.apply(_open_fds) == fds and _open_fds() == client_fds, 10,
               "descriptors back to their count")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_unreachable_local_socket_falls_back_to_the_relay(make_cluster, monkeypatch):
    monkeypatch.setenv(DIRECT_ENV, "0")  # the engine has no data port either
    cluster = make_cluster(1)
    mec = cluster.client(timeout=120)
    # A pulled value is sent from the engine's memory, yet a later command
    # that changes it does not change what the pull returns.
    mec.execute("import numpy as np\nz = np.ones(2**18)", targets=0)
    pending = mec.pull("z", targets=0, block=False)
    mec.execute("z[:] = 0", targets=0)
    assert pending.get_result().sum() == 2**18
    # As from another network namespace: the engine's socket is out of reach.
    monkeypatch.setattr(transfer, "_address", lambda name: "\0ipython1-nowhere")
    before = dict(datachannel.TRANSFERS)
    a = np.random.default_rng(3).random(2**20 // 8 * 3)
    mec.push({"a": a}, targets=0)
    assert np.array_equal(mec.pull("a", targets=0), a)
    assert datachannel.TRANSFERS["relay"] - before.get("relay", 0) == 2
    assert datachannel.TRANSFERS["local"] == before.get("local", 0)
    monkeypatch.undo()  # remembered per engine: the relay from now on
    mec.push({"b": a}, targets=0)
    assert datachannel.TRANSFERS["relay"] - before.get("relay", 0) == 3


def test_a_stale_local_ticket_is_replaced_not_a_reason_to_relay(make_cluster):
    cluster = make_cluster(1)
    mec = cluster.client(timeout=120)
    a = np.random.default_rng(4).random(2**20 // 8)
    mec.push({"a": a}, targets=0)
    book = mec._async._books[0]
    # As if engine 0 had been replaced by a new engine with the same id.
    book.ticket = dict(book.ticket, local=dict(book.ticket["local"], socket="@ipython1-gone"))
    before = dict(datachannel.TRANSFERS)
    assert np.array_equal(mec.pull("a", targets=0), a)
    assert datachannel.TRANSFERS["local"] - before.get("local", 0) == 1
    assert mec._async._books[0] is not book and not mec._async._relay_only


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _kill_when_growing(watched: int, victim: int, box: dict) -> None:
    """SIGKILL victim once watched has taken 256 MiB more memory (a transfer is under way)."""
    start = _rss(watched)
    deadline = time.monotonic() + 30
    while _rss(watched) < start + 2**28 and time.monotonic() < deadline and "error" not in box:
        time.sleep(0.001)
    box["killed_at"] = time.monotonic()
    os.kill(victim, signal.SIGKILL)


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_an_engine_dying_mid_transfer_is_a_prompt_transfer_error(make_cluster, direction):
    cluster = make_cluster(1)
    mec = cluster.client(timeout=60)
    pid = cluster.engine_pid(mec, 0)
    box: dict = {}
    if direction == "push":
        zeros = np.zeros(2**28)  # 2 GiB of untouched pages: free to send, not to receive
        watcher = threading.Thread(target=_kill_when_growing, args=(pid, pid, box))
        call = lambda: mec.push({"z": zeros}, targets=0)  # noqa: E731
    else:
        mec.execute("import numpy as np\nz = np.zeros(2**28)", targets=0)
        watcher = threading.Thread(target=_kill_when_growing, args=(os.getpid(), pid, box))
        call = lambda: mec.pull("z", targets=0)  # noqa: E731
    watcher.start()
    try:
        with pytest.raises(datachannel.TransferError, match=f"{pid} failed|closed after"):
            try:
                call()
            except BaseException as e:
                box["error"] = e
                raise
    finally:
        watcher.join(40)
    assert time.monotonic() - box["killed_at"] < 5


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_another_user_is_refused_by_the_engine_even_with_a_valid_ticket(make_cluster):
    cluster = make_cluster(1)
    mec = cluster.client(timeout=60)
    a = np.random.default_rng(5).random(2**17)
    mec.push({"a": a}, targets=0)  # 1 MiB: the client now holds a same-host ticket
    stolen = dict(mec._async._books[0].ticket, blob_id=b"s" * 16)
    os.seteuid(65534)  # connect as nobody (SO_PEERCRED reports the effective uid)
    try:
        with pytest.raises(datachannel.TransferError, match="uid 65534 is not the engine's"):
            datachannel.client_transfer(stolen, frames=[b"x" * 10])
    finally:
        os.seteuid(0)
    # Refused before a byte was read: nothing stored, the ticket still good.
    before = dict(datachannel.TRANSFERS)
    mec.push({"b": a}, targets=0)
    assert datachannel.TRANSFERS["local"] - before.get("local", 0) == 1
    assert mec.apply(lambda: __import__("ipython1.engine.kernel").engine.kernel.BLOBS.__len__(),
                     targets=0) == 0


def _pool_reused() -> int:
    from ipython1.kernel import datachannel

    return datachannel.POOL.stats()["reused"]


def test_reused_receive_buffers_leave_kept_views_intact(make_cluster):
    cluster = make_cluster(1)
    mec = cluster.client(timeout=120)
    rng = np.random.default_rng(6)
    n = 3 * 2**20 // 8  # 3 MiB: received into pooled mappings on both ends
    first = rng.random(n)
    mec.push({"a": first}, targets=0)
    mec.execute("kept = a[1000:2000]", targets=0)  # a view on the engine of what was pushed
    pulled = mec.pull("a", targets=0)
    kept = pulled[5:50_000:7]  # a view here of what was pulled
    expected = kept.copy()
    del pulled
    client_before, engine_before = _pool_reused(), mec.apply(_pool_reused, targets=0)
    for _ in range(6):
        value = rng.random(n)
        mec.push({"a": value}, targets=0)
        back = mec.pull("a", targets=0)
        assert np.array_equal(back, value)
        del back
    assert np.array_equal(kept, expected)
    assert np.array_equal(mec.pull("kept", targets=0), first[1000:2000])
    # The transfers did reuse memory on both ends (else this tested nothing).
    assert _pool_reused() - client_before >= 5
    assert mec.apply(_pool_reused, targets=0) - engine_before >= 4
