"""The multi-engine interface against a real 4-engine cluster over 127.0.0.1."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ipython1.client import blocking as client
from ipython1.client import multiengine as asyncclient
from ipython1.common.errors import (
    CompositeError,
    InvalidEngineID,
    InvalidPendingResult,
    QueueCleared,
    RemoteError,
    ResultNotReady,
    SerializationError,
)


@pytest.fixture(autouse=True)
def clean_namespace(mec):
    yield
    mec.reset()


def test_get_ids(mec):
    assert mec.get_ids() == [0, 1, 2, 3]


def test_execute_returns_one_numbered_result_per_target(mec):
    results = mec.execute("import os\nprint('pid', os.getpid())\n6 * 7")
    assert [r.engine_id for r in results] == [0, 1, 2, 3]
    assert len({r.stdout for r in results}) == 4  # four distinct processes
    for r in results:
        assert r.stdout.startswith("pid ")
        assert r.output == 42 and r.output_repr == "42"
        assert r.input.startswith("import os")
    text = repr(results)
    n = results[0].execution_count
    assert f"[0] In [{n}]: import os" in text and f"[3] Out[{n}]: 42" in text
    second = mec.execute("a = 1", targets=[1])
    assert second[0].execution_count == mec.execute("a = 2", targets=[1])[0].execution_count - 1


def test_execute_single_target_returns_one_result(mec):
    r = mec.execute("x = 3", targets=2)
    assert r.engine_id == 2 and r.stdout == ""


def test_push_pull_and_item_access(mec):
    mec.push({"a": 5, "b": [1, "two", 3.0]})
    assert mec.pull("a") == [5, 5, 5, 5]
    assert mec.pull(["a", "b"], targets=1) == [5, [1, "two", 3.0]]
    mec["c"] = {"k": (1, 2)}
    assert mec["c"] == [{"k": (1, 2)}] * 4
    assert mec.pull("a", targets=3) == 5
    mec.push({"a": 9}, targets=[0, 2])
    assert mec.pull("a") == [9, 5, 9, 5]


def test_push_and_pull_functions_and_closures(mec):
    k = 10

    def add_k(x):
        return x + k

    mec.push_function({"add_k": add_k, "sq": lambda x: x * x})
    assert mec.execute("y = add_k(sq(3))", targets=0).stdout == ""
    assert mec.pull("y", targets=0) == 19
    f = mec.pull_function("add_k", targets=1)
    assert f(1) == 11


def test_numpy_arrays_keep_dtype_shape_and_order(mec):
    a = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    mec.push({"a": a}, targets=0)
    back = mec.pull("a", targets=0)
    assert back.dtype == a.dtype and back.shape == a.shape and back.flags.f_contiguous
    np.testing.assert_array_equal(back, a)
    mec.execute("a2 = a * 2", targets=0)
    np.testing.assert_array_equal(mec.pull("a2", targets=0), a * 2)


@pytest.mark.parametrize("seq", [list(range(10)), tuple(range(7)), np.arange(11.0), []])
def test_scatter_gather_round_trip(mec, seq):
    mec.scatter("part", seq)
    parts = mec.pull("part")
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(seq)
    back = mec.gather("part")
    if isinstance(seq, np.ndarray):
        np.testing.assert_array_equal(back, seq)
    else:
        assert list(back) == list(seq)


def test_scatter_flatten_and_subset(mec):
    mec.scatter("v", [10, 20], targets=[1, 3], flatten=True)
    assert mec.pull("v", targets=[1, 3]) == [10, 20]
    assert mec.gather("v", targets=[1, 3]) == [10, 20]


def test_distributed_numpy_reduction(mec):
    data = np.random.default_rng(0).random(100_001)
    mec.scatter("x", data)
    mec.execute("s = x.sum()")
    assert sum(mec.pull("s")) == pytest.approx(data.sum())


def test_map_returns_results_in_order(mec):
    assert mec.map(lambda x: x * x, range(23)) == [x * x for x in range(23)]
    assert mec.map(lambda a, b: a + b, [1, 2, 3], [10, 20, 30], targets=[0, 1]) == [11, 22, 33]


def test_apply(mec):
    assert mec.apply(lambda a, b=1: a * b, 3, b=4) == [12] * 4
    assert mec.apply(lambda: None, targets=0) is None


def test_get_result_keys_reset(mec):
    r = mec.execute("z = 1\nz + 1", targets=0)
    again = mec.get_result(r.execution_count, targets=0)
    assert again.input == "z = 1\nz + 1" and again.output == 2
    assert mec.get_result(targets=0).execution_count == r.execution_count
    assert "z" in mec.keys(targets=0)
    mec.reset(targets=0)
    assert "z" not in mec.keys(targets=0)
    with pytest.raises(RemoteError, match="IndexError"):
        mec.get_result(r.execution_count, targets=0)
    mec.execute("1", targets=0)
    with pytest.raises(RemoteError, match="no result for execution number 12345"):
        mec.get_result(12345, targets=0)


def test_non_blocking_results(mec):
    pending = mec.execute("import time; time.sleep(0.5); q = 7", block=False)
    with pytest.raises(ResultNotReady):
        pending.get_result(block=False)
    assert pending.id in mec.pending_ids()
    results = pending.get_result(timeout=30)
    assert [r.engine_id for r in results] == [0, 1, 2, 3]
    assert pending.get_result() is results  # kept locally once fetched
    p2 = mec.pull("q", block=False)
    assert [7] * 4 == mec.get_pending_result(p2.id)
    with pytest.raises(InvalidPendingResult):
        mec.get_pending_result(p2.id)


def test_remote_error_names_engine_and_keeps_traceback(mec):
    with pytest.raises(RemoteError) as info:
        mec.execute("def f():\n    raise ValueError('bad value')\nf()", targets=1)
    err = info.value
    assert err.engine_id == 1 and err.ename == "ValueError" and err.evalue == "bad value"
    assert "raise ValueError" in err.traceback and "engine 1" in str(err)


def test_composite_error_lists_every_engine(mec):
    with pytest.raises(CompositeError) as info:
        mec.execute("print('before'); 1/0")
    err = info.value
    assert err.engine_ids() == [0, 1, 2, 3]
    assert "ZeroDivisionError" in str(err)
    with pytest.raises(RemoteError) as one:
        err.raise_exception(2)
    assert one.value.engine_id == 2
    assert one.value.record["stdout"] == "before\n"  # nothing printed is lost


def test_partial_failure_keeps_successful_results(mec):
    mec.push({"d": 0}, targets=0)
    mec.push({"d": 1}, targets=[1, 2, 3])
    with pytest.raises(CompositeError) as info:
        mec.execute("1 / d")
    assert info.value.engine_ids() == [0]
    assert len(info.value.results) == 3


def test_syntax_error(mec):
    with pytest.raises(RemoteError) as info:
        mec.execute("def (:", targets=0)
    assert info.value.ename == "SyntaxError"


def test_pull_undefined_name(mec):
    with pytest.raises(RemoteError) as info:
        mec.pull("no_such_name", targets=3)
    assert info.value.ename == "NameError" and "no_such_name" in info.value.evalue


def test_push_unpicklable_value_names_it(mec):
    with pytest.raises(SerializationError, match="lock"):
        mec.push({"lock": threading.Lock()})


def test_pull_unpicklable_value_names_it(mec):
    mec.execute("import threading; lk = threading.Lock()", targets=0)
    with pytest.raises(SerializationError, match="lk"):
        mec.pull("lk", targets=0)
    assert mec.execute("1", targets=0).output == 1  # the engine keeps working


def test_unknown_engine_id(mec):
    with pytest.raises(InvalidEngineID, match="99"):
        mec.execute("1", targets=99)
    with pytest.raises(InvalidEngineID):
        mec.execute("1", targets=[0, 99])
    assert mec.execute("1", targets=0).output == 1


def test_queue_status_and_clear_queue(mec):
    running = mec.execute("import time; time.sleep(60)", targets=0, block=False)
    queued = [mec.execute(f"w = {i}", targets=0, block=False) for i in range(3)]

    def three_queued():
        s = mec.queue_status(targets=0)[0]
        return s["running"] is not None and len(s["queued"]) == 3

    from tests.conftest import wait_until

    wait_until(three_queued, 10, "three queued commands")
    status = mec.queue_status(targets=0)[0]
    assert status["running"]["op"] == "execute" and status["engine_id"] == 0
    assert mec.clear_queue(targets=0) == [{"engine_id": 0, "cleared": 3}]
    for p in queued:
        with pytest.raises(QueueCleared):
            p.get_result(timeout=30)
    # interrupt() answers False until the cell has reached the engine's shell thread.
    wait_until(lambda: mec.interrupt(targets=0), 10, "the interrupt to land")
    with pytest.raises(RemoteError, match="KeyboardInterrupt"):
        running.get_result(timeout=30)
    assert mec.execute("'alive'", targets=0).output == "alive"


def test_async_client_returns_deferreds(shared_cluster):
    mec = shared_cluster.client()
    loop = client.ReactorThread.get()

    def run():
        d = asyncclient.get_multiengine_client(shared_cluster.mec_furl)
        d.addCallback(lambda amec: amec.execute("1 + 1", targets=[0, 1]))
        return d

    results = loop.submit(run).result(30)
    assert [r.output for r in results] == [2, 2]
    assert mec.get_ids() == [0, 1, 2, 3]


def test_engines_are_distinct_processes_with_distinct_random_streams(mec):
    # ipcluster forks engines from one warmed-up process: each must still be its own.
    mec.execute("import os, random, numpy\n"
                "ident = (os.getpid(), random.random(), float(numpy.random.random()))")
    idents = mec.pull("ident")
    for position in range(3):
        assert len({i[position] for i in idents}) == 4
