"""ipyparallel and concurrent.futures habits on a real 4-engine cluster (issue 20)."""

from __future__ import annotations

import concurrent.futures
import os
import time

import pytest

from ipython1.client import blocking as client
from ipython1.client.interactive import interactive
from ipython1.common.errors import ClientTimeout, CompositeError, RemoteError


@pytest.fixture(autouse=True)
def clean(mec):
    yield
    mec.reset()


# -- views ------------------------------------------------------------------------------


def test_views_restrict_targets(mec):
    pids = mec.apply(os.getpid)
    assert mec[0:2].apply(os.getpid) == pids[0:2]
    assert mec[::2].apply(os.getpid) == pids[::2]
    assert mec[3].apply(os.getpid) == pids[3]  # an int: one result
    assert mec[[3, 1]].targets == [3, 1]
    assert mec[1:][0].targets == 1 and mec[::2][1:].targets == [2]  # a view of a view
    assert len(mec[0:4]) == 4 and len(mec[3]) == 1 and len(mec) == 4
    view = mec[1:3]
    view.execute("a = 7")
    assert mec.pull("a", targets=[1, 2]) == [7, 7]
    assert view["a"] == [7, 7]  # a str key still pulls
    assert "a" not in mec.keys(targets=0)
    view.close()  # a view does not close its client
    assert mec.get_ids() == [0, 1, 2, 3]
    with pytest.raises(TypeError):
        mec[1.5]


def test_view_apply_async_and_map_async(mec):
    pending = mec[0:2].apply_async(lambda x: x * 2, 21)
    assert isinstance(pending, client.PendingResult)
    assert pending.get_result() == [42, 42]
    assert mec[2].apply_sync(lambda: 5) == 5
    pending = mec[::2].map_async(lambda x: x + 1, range(6))
    assert pending.get_result() == [1, 2, 3, 4, 5, 6]
    assert mec[1:].map_sync(abs, [-1, -2, 3]) == [1, 2, 3]
    with pytest.raises(RemoteError):
        mec[0].apply_async(lambda: 1 / 0).get_result()


# -- engine globals ----------------------------------------------------------------------


factor = "the client's factor"


@interactive
def scaled(x):
    return x * factor  # noqa: F821 - the engine's `factor`


def test_interactive_functions_read_engine_globals(mec, tc):
    mec.push({"factor": 3})
    assert mec.apply(scaled, 2) == [6, 6, 6, 6]
    assert mec.map(scaled, range(4)) == [0, 3, 6, 9]

    @interactive
    def remember(v):
        global stored
        stored = v

    mec.apply(remember, "kept", targets=1)
    assert mec.pull("stored", targets=1) == "kept"

    def plain(x):
        return x * factor

    assert mec.apply(plain, 2, targets=0) == factor * 2  # without it: the client's globals
    assert tc.map(scaled, [1, 2]) == [3, 6]  # tasks run in the same namespace
    assert scaled(2) == factor * 2  # a local call still works


# -- pending results ---------------------------------------------------------------------


def test_pending_result_elapsed_stdout_and_callbacks(mec):
    pending = mec.execute("import time; time.sleep(0.3); print('hi', 6 * 7)", block=False)
    assert pending.elapsed < 0.3
    pending.add_callback(lambda results, n: [r.engine_id * n for r in results], 10)
    pending.add_callback(sum)
    assert pending.get_result() == 60
    assert pending.stdout == ["hi 42\n"] * 4
    done = pending.elapsed
    assert 0.3 <= done < 30
    time.sleep(0.05)
    assert pending.elapsed == done  # stops once the result is in
    one = mec.execute("print('one')", targets=2, block=False)
    assert one.stdout == "one\n"
    failing = mec.execute("print('before'); 1/0", block=False)
    assert failing.stdout == ["before\n"] * 4
    with pytest.raises(CompositeError):
        failing.get_result()
    with pytest.raises(TypeError):
        one.add_callback("not callable")


def test_ready_and_wait_with_elapsed_and_callbacks(mec):
    """ipyparallel's ready()/wait() (issue 18) beside elapsed and 0.10's callbacks."""
    calls = []
    pending = mec.execute("import time; time.sleep(0.4)", targets=1, block=False)
    pending.add_callback(lambda r: calls.append(r) or r.engine_id)
    assert not pending.ready()
    assert pending.wait(30)
    done = pending.elapsed
    assert pending.ready() and 0.4 <= done < 30 and calls == []  # callbacks: on fetch only
    assert pending.get_result() == 1 and len(calls) == 1
    assert pending.elapsed == done


def test_apply_and_map_keep_their_stdout(mec):
    def shout(x):
        print("got", x)
        return x * 2

    pending = mec[0:2].apply_async(shout, 5)
    assert pending.get_result() == [10, 10]
    assert pending.stdout == ["got 5\n", "got 5\n"]
    single = mec[3].apply_async(shout, 1)
    assert single.get_result() == 2 and single.stdout == "got 1\n"
    mapped = mec[0:2].map_async(shout, range(4))
    assert mapped.get_result() == [0, 2, 4, 6]
    assert mapped.stdout == ["got 0\ngot 1\n", "got 2\ngot 3\n"]
    assert mec.apply(shout, 2, targets=[0, 1]) == [4, 4]  # blocking: values only
    assert mec.map(shout, [1, 2]) == [2, 4]

    def half_fails(x):
        print("trying", x)
        if x:
            raise ValueError(x)
        return "fine"

    failing = mec[0:2].map_async(half_fails, [0, 1])
    with pytest.raises(CompositeError) as info:
        failing.get_result()
    assert info.value.results == [["fine"]]  # values, not (value, stdout) pairs


# -- executors ---------------------------------------------------------------------------


def test_multiengine_executor(mec):
    pids = mec.apply(os.getpid)
    with mec.executor() as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        futures = [ex.submit(os.getpid) for _ in range(8)]
        assert sorted(f.result(60) for f in futures) == sorted(pids * 2)  # round robin
        done = list(concurrent.futures.as_completed([ex.submit(pow, 2, i) for i in range(5)],
                                                    timeout=60))
        assert sorted(f.result() for f in done) == [1, 2, 4, 8, 16]
        assert list(ex.map(lambda x: x * x, range(10), timeout=60)) == [x * x for x in
                                                                          range(10)]
        bad = ex.submit(lambda: 1 / 0)
        assert isinstance(bad.exception(60), RemoteError)
    with pytest.raises(RuntimeError):
        ex.submit(abs, 1)
    only = mec[1:3].executor()
    assert {only.submit(os.getpid).result(60) for _ in range(4)} == set(pids[1:3])


def test_task_executor(tc):
    with tc.executor(retries=1) as ex:
        futures = {ex.submit(divmod, n, 7): n for n in range(20)}
        for future in concurrent.futures.as_completed(futures, timeout=60):
            assert future.result() == divmod(futures[future], 7)
        assert list(ex.map(abs, [-1, -2, -3], timeout=60)) == [1, 2, 3]
        assert isinstance(ex.submit(lambda: 1 / 0).exception(60), RemoteError)
        assert ex.submit(lambda **kw: kw, a=1).result(60) == {"a": 1}


# -- waiting for engines -----------------------------------------------------------------


def test_wait_for_engines(mec):
    assert mec.wait_for_engines(4, timeout=10) == [0, 1, 2, 3]
    t0 = time.monotonic()
    with pytest.raises(ClientTimeout, match="not 5"):
        mec.wait_for_engines(5, timeout=0.5)
    assert time.monotonic() - t0 < 5
