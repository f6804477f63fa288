"""Data sets on the engines: load_partitions, DistArray, reduce/allreduce (issue 21)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ipython1.common.errors import PartitionLoadError, RemoteError
from tests.conftest import ROOT, running_cluster

ENGINES = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with running_cluster(tmp_path_factory.mktemp("data"), ENGINES) as c:
        yield c


@pytest.fixture(scope="module")
def mec(cluster):
    return cluster.client(timeout=120)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory):
    """Seven npy files of (rows, 3) float64, one of them empty: rows differ per engine."""
    directory = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(21)
    arrays = [rng.normal(size=(n, 3)) * (i + 1) for i, n in enumerate((40, 7, 0, 55, 13, 31, 9))]
    arrays[3][17, 1] = 99.0  # a unique maximum inside the block of a middle engine
    for i, a in enumerate(arrays):
        np.save(directory / f"part-{i:02d}.npy", a)
    return directory, np.concatenate(arrays)


@pytest.mark.parametrize("mmap", [False, True])
def test_loaded_partitions_give_numpy_results(mec, files, mmap):
    directory, full = files
    layout = mec.load_partitions("x", str(directory / "part-*.npy"), mmap=mmap)
    ids = mec.get_ids()
    assert list(layout) == ids
    # Contiguous runs of about equal bytes (47, 55 and 53 rows); rows in engine order.
    assert [len(v["files"]) for v in layout.values()] == [3, 1, 3]
    assert [v["rows"] for v in layout.values()] == [range(0, 47), range(47, 102),
                                                     range(102, 155)]
    assert layout[ids[-1]]["rows"].stop == len(full)
    x = mec.distarray("x")
    assert x.shape == full.shape and x.dtype == full.dtype and x.nbytes == full.nbytes
    assert x.layout == {e: v["rows"] for e, v in layout.items()}
    assert f"engine {ids[1]}: rows 47:102" in repr(x)
    np.testing.assert_array_equal(x.to_numpy(), full)
    for index in (slice(5, 100), slice(None, None, 7), slice(120, 10, -3), slice(-20, None),
                  slice(46, 48), slice(200, 300), 0, -1, 46, 47, (slice(3, 90), 1),
                  (slice(40, 130, 2), slice(0, 2)), (64, 1)):
        np.testing.assert_array_equal(x[index], full[index], err_msg=str(index))
    assert np.isclose(x.sum(), full.sum(), rtol=1e-12)
    assert np.isclose(x.mean(), full.mean(), rtol=1e-12)
    assert np.isclose(x.std(), full.std(), rtol=1e-12)
    assert np.isclose(x.var(ddof=1), full.var(ddof=1), rtol=1e-12)
    np.testing.assert_allclose(x.mean(axis=0), full.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(x.std(axis=0), full.std(axis=0), rtol=1e-12)
    assert x.min() == full.min() and x.max() == full.max()
    np.testing.assert_array_equal(x.max(axis=0), full.max(axis=0))
    assert x.argmax() == full.argmax()
    assert np.isclose(np.mean(x), full.mean()) and np.isclose(np.std(x, axis=0)[1],
                                                               full.std(axis=0)[1])
    for bins, hist_range in ((100, (-5.0, 5.0)), (17, None), ([-9.0, -1.0, 0.0, 0.5, 9.0], None)):
        counts, edges = x.histogram(bins, hist_range)
        want_counts, want_edges = np.histogram(full, bins, hist_range)
        np.testing.assert_array_equal(counts, want_counts)
        np.testing.assert_array_equal(edges, want_edges)


def test_arithmetic_and_ufuncs_run_on_the_engines(mec, files):
    directory, full = files
    mec.load_partitions("x", directory / "part-*.npy", mmap=True)  # a Path works too
    x = mec.distarray("x")
    y = np.sqrt(x * x + 1.0) - 2 * x / 3
    assert y.key != x.key and y.layout == x.layout
    # The result lives on the engines, under its own name, as %px sees it.
    assert _present(mec, y.key) == [True] * ENGINES
    np.testing.assert_allclose(y.to_numpy(), np.sqrt(full * full + 1.0) - 2 * full / 3)
    np.testing.assert_array_equal((x > 0).to_numpy(), full > 0)
    np.testing.assert_allclose((x + np.array([1.0, 2.0, 3.0])).to_numpy(), full + [1, 2, 3])
    np.testing.assert_allclose(x.map_blocks(np.cumsum, axis=1)[10:20], np.cumsum(full, 1)[10:20])
    assert np.isclose((-x).sum(), -full.sum())
    hot = x[x.map_blocks(lambda b: b[:, 1] > 1.0)]  # rows filtered on the engines
    np.testing.assert_array_equal(hot.to_numpy(), full[full[:, 1] > 1.0])
    assert np.isclose(hot.mean(), full[full[:, 1] > 1.0].mean())
    with pytest.raises(IndexError):
        x[x > 0]  # one value per element, not per row
    mec.scatter("s", full)  # scatter's layout is a DistArray's too
    s_ = mec.distarray("s")
    assert [len(r) for r in s_.layout.values()] == [52, 52, 51]
    np.testing.assert_allclose((s_ * 2).to_numpy(), full * 2)
    key = y.key
    del y
    import gc

    gc.collect()
    from tests.conftest import wait_until

    wait_until(lambda: not any(_present(mec, key)), 10, "the temporary block to be deleted")


def _present(mec, key: str) -> list[bool]:
    mec.execute(f"_present = {key!r} in dir()")
    return mec.pull("_present")


def test_a_missing_file_names_the_file_and_the_engine(mec, files):
    directory, _ = files
    paths = sorted(str(p) for p in directory.glob("*.npy"))
    missing = str(directory / "part-99.npy")
    paths.insert(4, missing)  # files 3..5 of 8 go to the second engine
    with pytest.raises(PartitionLoadError) as info:
        mec.load_partitions("bad", paths)
    ids = mec.get_ids()
    message = str(info.value)
    assert f"engine {ids[1]}: cannot load {missing}" in message
    assert "No such file or directory" in message
    assert info.value.engine_ids == [ids[1]]
    broken = directory.parent / "broken.npy"
    broken.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(PartitionLoadError, match=f"engine {ids[0]}: cannot load {broken}"):
        mec.load_partitions("bad", [str(broken), *paths[:2]])


def test_reduce_is_an_ordered_tree_among_the_engines(mec):
    ids = mec.get_ids()
    for e in ids:
        mec.push({"piece": [e]}, targets=e)
    # List concatenation is associative, not commutative: the order must survive.
    assert mec.reduce(lambda a, b: a + b, "piece") == ids
    assert mec.reduce(lambda a, b: a + b, "piece", targets=ids[:2][::-1]) == ids[:2][::-1]
    mec.allreduce(lambda a, b: a + b, "piece", out="everything")
    assert mec.pull("everything") == [ids] * len(ids)
    with pytest.raises(Exception, match="ZeroDivisionError"):
        mec.reduce(lambda a, b: a[0] / 0, "piece")
    # A failed reduction leaves the engines usable.
    assert mec.reduce(lambda a, b: a + b, "piece") == ids


INTERRUPTED_CLIENT = """
import sys, time
from ipython1.client.blocking import MultiEngineClient
mec = MultiEngineClient(sys.argv[1], timeout=120)
mec.execute("v = 1")
def slow_add(a, b, marker=sys.argv[2]):
    open(marker, "w").close()  # the test waits for this: the reduction is under way
    time.sleep(600)
    return a + b
print("reducing", flush=True)
try:
    mec.reduce(slow_add, "v")
except KeyboardInterrupt:
    started = time.monotonic()
    mec.execute("w = 2")
    print("engines free after", round(time.monotonic() - started, 1), flush=True)
"""


def test_ctrl_c_in_the_client_stops_a_reduction_on_the_engines(cluster, tmp_path):
    import signal

    from tests.conftest import wait_until

    marker = tmp_path / "folding"
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED_CLIENT, cluster.mec_furl,
                             str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cluster.env, cwd=str(ROOT))
    try:
        assert proc.stdout.readline() == "reducing\n"
        wait_until(marker.exists, 60, "an engine to fold partial results")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "engines free after" in out, err[-2000:]
    assert float(out.split()[-1]) < 10


def test_a_stranger_at_an_engines_reduction_port_is_ignored(mec):
    import os
    import socket

    from ipython1.common.serialize import serialize
    from ipython1.engine import reduction as engine_side

    ids = mec.get_ids()[:2]
    for e in ids:
        mec.push({"piece": [e]}, targets=e)
    address = mec.apply(engine_side.stage, "r1", "piece", True, targets=ids[0])
    mec.apply(engine_side.stage, "r1", "piece", False, targets=ids[1])
    # A frame under the wrong secret, claiming to be the child, and raw junk.
    for junk in (engine_side.HEADER.pack(engine_side.MAGIC, 0, 1, 5, b"x" * 32, b"y" * 32)
                 + b"hello", b"GET / HTTP/1.0\r\n\r\n"):
        stranger = socket.create_connection(tuple(address))
        stranger.sendall(junk)
        stranger.close()
    secret = os.urandom(32)
    concat = lambda a, b: a + b  # noqa: E731 - sent by value
    args = {ids[0]: ("r1", concat, 0, None, [1], secret),
            ids[1]: ("r1", concat, 1, tuple(address), [], secret)}
    results = mec._call(mec._async._apply_each, serialize(engine_side.combine),
                        {e: serialize((a, {})) for e, a in args.items()}, True, False)
    assert results == [ids, None]
    # A peer that authenticates its header, then breaks off: the parent fails at once.
    address = mec.apply(engine_side.stage, "r2", "piece", True, targets=ids[0])
    peer = socket.create_connection(tuple(address))
    head_mac = engine_side._mac(secret, "r2", 0, 1, b"100")
    peer.sendall(engine_side.HEADER.pack(engine_side.MAGIC, 0, 1, 100, head_mac, b"m" * 32)
                 + b"short")
    peer.close()
    started = time.monotonic()
    with pytest.raises(RemoteError, match="PeerLost.*tree position 1 was lost mid-send"):
        mec.apply(engine_side.combine, "r2", concat, 0, None, [1], secret, targets=ids[0])
    assert time.monotonic() - started < 10


def test_zarr_and_hdf5_loaders(mec, tmp_path):
    zarr = pytest.importorskip("zarr")
    h5py = pytest.importorskip("h5py")
    a, b = np.arange(30.0).reshape(10, 3), np.arange(30.0, 51.0).reshape(7, 3)
    paths = []
    for i, part in enumerate((a, b)):
        path = str(tmp_path / f"p{i}.zarr")
        z = zarr.open(path, mode="w", shape=part.shape, dtype=part.dtype)
        z[...] = part
        paths.append(path)
    mec.load_partitions("z", paths, loader="zarr")
    np.testing.assert_array_equal(mec.distarray("z").to_numpy(), np.concatenate([a, b]))
    paths = []
    for i, part in enumerate((a, b, a)):
        path = str(tmp_path / f"p{i}.h5")
        with h5py.File(path, "w") as f:
            f["values"] = part
        paths.append(path)
    mec.load_partitions("h", paths, loader="hdf5")
    h = mec.distarray("h")
    np.testing.assert_array_equal(h.to_numpy(), np.concatenate([a, b, a]))
    mec.load_partitions("c", paths, loader=lambda p: np.full((2, 3), len(p)))
    assert mec.distarray("c").shape == (6, 3)


CLIENT_SCRIPT = """
import json, resource, sys
import numpy as np
from ipython1.client.blocking import MultiEngineClient
mec = MultiEngineClient(sys.argv[1], timeout=300)
mec.get_ids()
np.histogram(np.zeros(10), 5)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
layout = mec.load_partitions("big", sys.argv[2] + "/*.npy")
x = mec.distarray("big")
stats = [x.mean(), x.std(), x.min(), x.max(), x.argmax(), int(x.histogram(50)[0].sum())]
rows = x[1000:1010]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kib": after - before, "nbytes": x.nbytes, "mean": stats[0],
                  "count": stats[-1], "rows": rows.tolist()}))
"""


def test_the_clients_memory_does_not_grow_with_the_data(cluster, tmp_path):
    parts = []
    for i in range(8):  # 8 x 64 MiB = 512 MiB
        part = np.full(8 * 2**20, float(i))
        np.save(tmp_path / f"{i}.npy", part)
        parts.append(i)
    proc = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, cluster.mec_furl, str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=cluster.env,
                          cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["nbytes"] == 512 * 2**20
    assert report["mean"] == 3.5 and report["count"] == 64 * 2**20
    assert report["rows"] == [0.0] * 10
    assert report["grew_kib"] < 64 * 1024, report
    for path in Path(tmp_path).glob("*.npy"):
        path.unlink()
