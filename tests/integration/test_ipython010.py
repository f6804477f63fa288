"""IPython 0.10's own kernel tests for the names issue 20 brings back, on a real cluster.

Translated from IPython 0.10's IPython/kernel/tests (multienginetest.py,
test_multienginefc.py, tasktest.py, test_taskfc.py) and its parallel docs'
examples. Differences that are ipython1's on purpose (see docs/migration.md):
an int target returns one result where 0.10 returned a one-item list, a
non-blocking call returns a PendingResult (0.10: a deferred id fetched with
get_pending_deferred), and serialized values are frame lists.
"""

from __future__ import annotations

import pytest

from ipython1.client import blocking as client
from ipython1.client import multiengine as asyncclient
from ipython1.client.blocking import MapTask, StringTask
from ipython1.common.errors import (
    CompositeError,
    InvalidPendingResult,
    KernelError,
    PermissionDenied,
    RemoteError,
    UnmetDependency,
)
from ipython1.common.serialize import deserialize, serialize
from tests.conftest import wait_until

DIKT = {"a": 5, "b": "asdf", "c": True, "d": None, "e": list(range(5))}


@pytest.fixture(autouse=True)
def clean(mec):
    yield
    mec.reset()
    mec.clear_properties()


def _raise_it(error):
    """0.10's _raise_it: a CompositeError re-raises its first engine's error."""
    if isinstance(error, CompositeError):
        error.raise_exception()
    raise error


def _remote_name(call):
    try:
        call()
    except (RemoteError, CompositeError) as e:
        try:
            _raise_it(e)
        except RemoteError as inner:
            return inner.ename
    raise AssertionError("no remote error")


# -- multienginetest.py ---------------------------------------------------------------


def test_push_pull_serialized(mec):  # testPushPullSerialized (both classes)
    for obj in [10, "hi there", 1.2342354, {"p": (1, 2)}]:
        mec.push_serialized({"key": serialize(obj)}, targets=0)
        assert deserialize(mec.pull_serialized("key", targets=0)) == obj
    mec.push({"a": 10, "b": list(range(5))}, targets=0)
    serial = mec.pull_serialized(["a", "b"], targets=0)
    assert [deserialize(s) for s in serial] == [10, list(range(5))]
    assert mec.pull("a", targets=0) == 10  # a pushed frame list reads back as the value
    mec.reset(targets=0)
    assert _remote_name(lambda: mec.pull_serialized("a", targets=0)) == "NameError"
    # Non-blocking, and all engines.
    pending = mec.push_serialized({"a": serialize(7)}, block=False)
    pending.get_result()
    assert mec.pull("a") == [7] * 4
    got = mec.pull_serialized("a", block=False).get_result()
    assert [deserialize(frames) for frames in got] == [7] * 4
    with pytest.raises(TypeError):
        mec.push_serialized({"a": 7})  # not frames


def test_get_set_properties(mec):  # testGetSetProperties
    mec.set_properties(DIKT)
    assert mec.get_properties() == 4 * [DIKT]
    assert mec.get_properties(("c",)) == 4 * [{"c": True}]
    mec.set_properties({"c": False})
    assert mec.get_properties(("c", "d")) == 4 * [{"c": False, "d": None}]
    # Non-blocking
    mec.set_properties(DIKT, block=False).get_result()
    assert mec.get_properties(block=False).get_result() == 4 * [DIKT]
    assert mec.get_properties(("c",), block=False).r == 4 * [{"c": True}]
    # ipython1: an int target returns one dict; properties are per engine.
    mec.set_properties({"gpu": 1}, targets=2)
    assert mec.get_properties("gpu", targets=2) == {"gpu": 1}
    assert mec.has_properties(["gpu"]) == [[False], [False], [True], [False]]
    with pytest.raises(CompositeError):
        mec.get_properties("gpu")  # missing on 0, 1, 3
    with pytest.raises(KernelError, match="plain data"):
        mec.set_properties({"f": object()})


def test_clear_properties(mec):  # testClearProperties
    mec.set_properties(DIKT)
    mec.clear_properties()
    assert mec.get_properties() == 4 * [{}]
    _ = mec.set_properties(DIKT, block=False).r
    _ = mec.clear_properties(block=False).r
    assert mec.get_properties(block=False).r == 4 * [{}]


def test_del_has_properties(mec):  # testDelHasProperties
    mec.set_properties(DIKT)
    mec.del_properties(("b", "e"))
    assert mec.has_properties(("a", "b", "c", "d", "e")) == 4 * [[True, False, True, True, False]]
    _ = mec.set_properties(DIKT, block=False).r
    _ = mec.del_properties(("b", "e"), block=False).r
    assert mec.has_properties(("a", "b", "c", "d", "e"), block=False).r == \
        4 * [[True, False, True, True, False]]


def test_flush_drops_this_clients_pending_results_only(mec, shared_cluster):
    # test_clear_pending_deferreds: flush() is 0.10's name for it on the blocking client.
    other = shared_cluster.client(timeout=60)
    theirs = other.execute("t = 1", block=False)
    mine = [mec.execute("a=10", block=False), mec.push({"b": 10}, block=False),
            mec.pull(("a", "b"), block=False), mec.scatter("s", list(range(16)), block=False),
            mec.map(lambda x: x, range(16), block=False)]
    mec.flush()
    for pending in mine:
        with pytest.raises(InvalidPendingResult):
            pending.get_result()
    assert mec.pending_ids() == []
    assert [r.engine_id for r in theirs.get_result()] == [0, 1, 2, 3]  # no one else's


def test_flush_ends_a_fetch_waiting_on_a_result(mec):
    """test_save_get_delete: a blocked fetch of a flushed result fails at once."""
    import threading
    import time

    slow = mec.execute("import time; time.sleep(3)", targets=0, block=False)
    outcome: list[BaseException] = []
    waiter = threading.Thread(target=lambda: outcome.append(_raises(slow.get_result)))
    waiter.start()
    # Once the fetch is in the client's reactor queue, the flush is sent after it.
    wait_until(lambda: mec._loop._futures, 10, "the fetch to be sent")
    t0 = time.monotonic()
    mec.flush()
    waiter.join(10)
    assert isinstance(outcome[0], InvalidPendingResult) and "flushed" in str(outcome[0])
    assert time.monotonic() - t0 < 2  # not when the command ends
    mec.execute("pass", targets=0)  # the engine is still fine afterwards


def _raises(call):
    try:
        call()
    except BaseException as e:  # noqa: B036
        return e
    return None


def test_zip_pull(mec):  # testZipPull, testZipPullNonblocking
    mec.push({"a": 10, "b": 20})
    assert mec.zip_pull(("a", "b")) == [(10, 10, 10, 10), (20, 20, 20, 20)]
    assert mec.zip_pull(("a", "b"), block=False).get_result() == [(10,) * 4, (20,) * 4]
    assert mec.zip_pull(("a", "b"), targets=1) == [(10,), (20,)]


def test_run(mec, tmp_path):  # testRun, testRunNonblocking
    fname = tmp_path / "foo.py"
    fname.write_text("a = 10\nb=30")
    mec.run(fname)
    assert mec.pull(("a", "b")) == 4 * [[10, 30]]
    mec.reset()
    mec.run(str(fname), block=False).get_result()
    assert mec.pull(("a", "b")) == 4 * [[10, 30]]


def test_results_have_0_10_keys(mec):  # runExecuteAll / testGetResultDefault: r['id']
    results = mec.execute("a=5")
    assert [r["id"] for r in results] == [0, 1, 2, 3]
    numbers = [r["number"] for r in results]
    assert numbers == [r.execution_count for r in results]
    again = mec.get_result(targets=0)
    assert again["id"] == 0 and again["number"] == numbers[0] and again["input"] == "a=5"
    assert again["stdout"] == ""


def test_len_and_errors_from_client(mec):
    assert len(mec) == 4
    assert client.CompositeError is CompositeError and client.RemoteError is RemoteError
    with pytest.raises(client.CompositeError):
        mec.execute("1/0")


# -- test_multienginefc.py ---------------------------------------------------------


def test_mapper(mec):
    m = mec.mapper()
    assert (m.multiengine, m.dist, m.targets, m.block) == (mec, "b", "all", True)
    with pytest.raises(ValueError):
        mec.mapper(dist="r")


def test_map_default_and_noblock(mec):
    assert mec.mapper().map(lambda x: 2 * x, range(10)) == [2 * x for x in range(10)]
    assert mec.map(lambda x: 2 * x, range(10)) == [2 * x for x in range(10)]
    pending = mec.mapper(block=False).map(lambda x: 2 * x, range(10))
    assert pending.r == [2 * x for x in range(10)]  # the 0.10 docs' example
    assert mec.mapper(targets=[1, 2]).map(lambda x: x, range(4)) == [0, 1, 2, 3]
    assert mec.raw_map(lambda x, y: x + y, [range(3), range(3)]) == [0, 2, 4]


def test_mapper_and_parallel_fail(mec):
    with pytest.raises((CompositeError, RemoteError)) as info:
        mec.mapper().map(lambda x: 1 / 0, range(10))
    with pytest.raises(RemoteError) as inner:
        _raise_it(info.value)
    assert inner.value.ename == "ZeroDivisionError"

    @mec.parallel()
    def f(x):
        return 1 / 0

    with pytest.raises((CompositeError, RemoteError)):
        f(range(10))


def test_parallel(mec):
    p = mec.parallel()

    @p
    def f(x):
        return 2 * x

    assert f(range(10)) == [2 * x for x in range(10)]
    assert f.__name__ == "f"

    @mec.parallel(block=False, targets=[0])
    def g(x):
        return 2 * x

    assert g(range(10)).get_result() == [2 * x for x in range(10)]


def test_async_client_has_the_same_names(mec, shared_cluster):
    """The Deferred twins: mapper, parallel, raw_map, zip_pull, properties, flush."""
    loop = mec._loop

    def run(call):
        return loop.submit(call).result(60)

    amec = run(lambda: asyncclient.get_multiengine_client(shared_cluster.mec_furl))
    try:
        assert run(lambda: amec.mapper().map(lambda x: x + 1, range(4))) == [1, 2, 3, 4]
        f = amec.parallel(targets=[0, 1])(lambda x: -x)
        assert run(lambda: f(range(3))) == [0, -1, -2]
        assert run(lambda: amec.raw_map(max, [range(3), [2, 0, 5]])) == [2, 1, 5]
        run(lambda: amec.set_properties({"k": 1}, targets=[0]))
        assert run(lambda: amec.get_properties(targets=0)) == {"k": 1}
        run(lambda: amec.push({"z": 3}))
        assert run(lambda: amec.zip_pull(["z"])) == [(3, 3, 3, 3)]
        assert run(amec.flush) == 0
    finally:
        loop.reactor.callFromThread(amec.disconnect)
    atc = run(lambda: asyncclient.get_task_client(shared_cluster.task_furl))
    try:
        assert run(lambda: atc.mapper(retries=1).map(abs, [-1, -2])) == [1, 2]
        g = atc.parallel()(lambda x: x * 3)
        assert run(lambda: g([1, 2])) == [3, 6]
    finally:
        loop.reactor.callFromThread(atc.disconnect)


def test_benchmark(mec):
    """0.10's benchmark(): latency and push throughput, same keys and units."""
    numbers = mec.benchmark(push_size=1000)
    assert set(numbers) == {"single_engine_latency", "all_engine_latency",
                            "all_engine_push", "single_engine_push"}
    for value, unit in numbers.values():
        assert value > 0 and unit in ("msec", "MB/sec")


# -- tasktest.py / test_taskfc.py ------------------------------------------------------


def test_task_mapper(tc):
    m = tc.mapper()
    assert (m.task_controller, m.clear_before, m.clear_after, m.retries, m.recovery_task,
            m.depend, m.block) == (tc, False, False, 0, None, None, True)
    assert m.map(lambda x: 2 * x, range(10)) == [2 * x for x in range(10)]
    assert tc.map(lambda x: 2 * x, range(10)) == [2 * x for x in range(10)]
    pending = tc.mapper(block=False).map(lambda x: 2 * x, range(10))
    assert pending.get_result() == [2 * x for x in range(10)]  # 0.10 returned task ids
    with pytest.raises(RemoteError, match="ZeroDivisionError"):
        m.map(lambda x: 1 / 0, range(10))


def test_task_parallel(tc):
    @tc.parallel()
    def f(x):
        return 2 * x

    assert f(range(10)) == [2 * x for x in range(10)]

    @tc.parallel(block=False, retries=1)
    def g(x):
        return 2 * x

    assert g(range(10)).get_result() == [2 * x for x in range(10)]

    @tc.parallel()
    def h(x):
        return 1 / 0

    with pytest.raises(RemoteError, match="ZeroDivisionError"):
        h(range(10))


def test_map_task_args():  # test_map_task_args (ipython1 takes any callable)
    with pytest.raises(TypeError):
        MapTask("asdfasdf")
    with pytest.raises(TypeError):
        MapTask(lambda x: x, 10)
    with pytest.raises(TypeError):
        MapTask(lambda x: x, (10,), 30)


def test_depend_on_properties_runs_on_the_controller(tc, mec):
    """0.10's depend: a function of the engine's properties, checked before sending."""
    mec.set_properties({"gpu": True}, targets=[1, 3])
    import os

    pids = {e: mec.apply(os.getpid, targets=e) for e in range(4)}
    tids = [tc.run(MapTask(os.getpid, depend=lambda props: props.get("gpu", False)))
            for _ in range(12)]
    ran_on = {tc.get_task_result(t, block=True).engine_id for t in tids}
    assert ran_on <= {1, 3}
    assert {tc.get_task_result(t).result for t in tids} <= {pids[1], pids[3]}
    # A StringTask too, and a recovery task's own depend.
    res = tc.get_task_result(tc.run(StringTask(
        "x = 1", pull="x", depend=lambda p: p.get("gpu") is None)), block=True)
    assert res.engine_id in (0, 2) and res.ns.x == 1
    never = tc.get_task_result(tc.run(MapTask(os.getpid, depend=lambda p: p["fpga"])),
                               block=True)
    assert isinstance(never.failure, UnmetDependency)
    assert "KeyError" in str(never.failure)


def test_depend_met_nowhere_fails_at_once(tc, mec):
    """Every engine says no: the task fails (0.10 failed it after an idle timeout)."""
    mec.set_properties({"ready": False})
    res = tc.get_task_result(tc.run(MapTask(lambda: "done", depend=lambda p: p["ready"])),
                             block=True)
    assert isinstance(res.failure, UnmetDependency)
    assert "returned False" in str(res.failure)


def test_task_reject_error_sends_the_task_elsewhere(tc, mec):
    mec.push({"here": False})
    mec.push({"here": True}, targets=2)
    code = ("from ipython1.client.blocking import TaskRejectError\n"
            "if not here:\n    raise TaskRejectError('not here')\nx = 42")
    tids = [tc.run(StringTask(code, pull="x")) for _ in range(6)]
    for tid in tids:
        res = tc.get_task_result(tid, block=True)
        assert res.engine_id == 2 and res.ns.x == 42 and res.attempts == 1
    mec.push({"here": False}, targets=2)
    res = tc.get_task_result(tc.run(StringTask(code, pull="x")), block=True)
    assert isinstance(res.failure, UnmetDependency) and "TaskRejectError" in str(res.failure)


def test_only_the_owner_may_send_controller_side_depends(shared_cluster):
    """A property depend is unpickled in the controller: named users may not send one."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ipython1.scripts.ipcluster", "--profile",
                           shared_cluster.profile, "adduser", "carol"],
                          env=shared_cluster.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    furl = proc.stdout.strip().split()[-1]
    carol = client.TaskClient(furl, timeout=60)
    try:
        res = carol.get_task_result(carol.run(MapTask(abs, args=(-1,),
                                                      depend=lambda p: True)), block=True)
        assert isinstance(res.failure, PermissionDenied)
        assert carol.get_task_result(carol.run(MapTask(abs, args=(-1,),
                                                       depend=lambda: True)),
                                     block=True).result == 1  # engine-side: allowed
    finally:
        carol.close()


def test_tasktest_ported(tc, mec):
    """tasktest.py's ITaskControllerTestCase, on 4 engines (one pinned by a property)."""
    from ipython1.common.errors import InvalidTaskID, KernelError

    first = tc.run(StringTask("a=5"))
    assert [tc.run(StringTask("a=5")) for _ in range(3)] == [first + 1, first + 2, first + 3]
    tc.barrier([first, first + 3])
    with pytest.raises(KernelError):  # test_abort: a finished task cannot be aborted
        tc.abort(first)
    with pytest.raises(InvalidTaskID):
        tc.abort(10**9)

    pin = {"depend": lambda p: p.get("pinned", False)}  # 0.10 ran these on one engine
    mec.set_properties({"pinned": True}, targets=0)
    mec.execute("i=0", targets=0)  # test_simple_retries
    t = StringTask("i += 1\nassert i == 16", pull="i", retries=10, **pin)
    with pytest.raises(RemoteError, match="AssertionError"):
        _ = tc.get_task_result(tc.run(t), block=True).ns.i
    assert tc.get_task_result(tc.run(t), block=True).ns.i == 16

    t = StringTask("i=16", pull="i")  # test_recovery_tasks
    t2 = StringTask("raise Exception", recovery_task=t, retries=2)
    assert tc.get_task_result(tc.run(t2), block=True).ns.i == 16

    ns = {"a": 1, "b": 0}  # test_setup_ns
    tr = tc.get_task_result(tc.run(StringTask("", push=ns, pull=["a", "b"])), block=True)
    assert {"a": tr.ns.a, "b": tr["b"]} == ns

    tr = tc.get_task_result(tc.run(StringTask("a=5", pull="a")), block=True)
    assert (tr.ns.a, tr["a"], tr.failure, tr.raise_exception()) == (5, 5, None, None)
    assert (tr.taskid, tr.engineid, tr.keys, tr.results) == (tr.tid, tr.engine_id, ["a"],
                                                             {"a": 5})
    tr = tc.get_task_result(tc.run(StringTask("7=5")), block=True)  # test_string_task_results
    with pytest.raises(RemoteError, match="SyntaxError"):
        _ = tr.ns
    tr = tc.get_task_result(tc.run(StringTask("", pull="never_set")), block=True)
    with pytest.raises(RemoteError, match="NameError"):
        _ = tr.ns

    # test_map_task: 0.10 returned a MapTask's value itself; here it is .result
    for task in (MapTask(lambda x: 2 * x, (10,)), MapTask(lambda: 20),
                 MapTask(lambda x: x, (), {"x": 20})):
        assert tc.get_task_result(tc.run(task), block=True).result == 20
    with pytest.raises(RemoteError, match="ZeroDivisionError"):  # test_map_task_failure
        _ = tc.get_task_result(tc.run(MapTask(lambda x: 1 / 0, (10,))), block=True).result

    tid = tc.run(MapTask(lambda x: 2 * x, (10,)))  # test_clear
    assert tc.get_task_result(tid, block=True).result == 20
    tc.clear()
    with pytest.raises(InvalidTaskID):
        tc.get_task_result(tid, block=True)


def test_clear_before_and_after(tc, mec):
    mec.set_properties({"pinned": True}, targets=0)
    mec.execute("b=1", targets=0)
    tr = tc.get_task_result(tc.run(StringTask("a=1", clear_before=True, pull="b",
                                              clear_after=True,
                                              depend=lambda p: p.get("pinned", False))),
                            block=True)
    with pytest.raises(RemoteError, match="NameError"):
        tr.raise_exception()
    assert _remote_name(lambda: mec.pull("a", targets=0)) == "NameError"


def test_barrier_keeps_each_result(mec):
    """0.10's mec.barrier(pending_results): wait for all; errors stay for get_result."""
    ok = mec.execute("x = 1", block=False)
    bad = mec.execute("1/0", targets=1, block=False)
    mec.barrier([bad, ok])
    assert [r.engine_id for r in ok.get_result(block=False)] == [0, 1, 2, 3]
    with pytest.raises(RemoteError):
        _ = bad.r


def test_new_names_over_foolscap_too(shared_cluster, monkeypatch):
    """The session calls added here (properties, flush) take Foolscap off the channel."""
    monkeypatch.setenv("IPYTHON1_COMMAND_CHANNEL", "0")
    mec = shared_cluster.client(timeout=60)
    assert not mec.local_channel
    try:
        mec.set_properties({"t": (1, "x"), "n": None}, targets=[0, 1])
        # Plain data, as the wire carries it: a tuple reads back as a list.
        assert mec.get_properties(targets=[0, 1]) == [{"t": [1, "x"], "n": None}] * 2
        assert mec.has_properties(["t", "zz"], targets=0) == [True, False]
        mec.del_properties(["t"], targets=[0, 1])
        assert mec.get_properties(targets=0) == {"n": None}
        mec.clear_properties()
        pending = mec.execute("a = 1", block=False)
        mec.flush()
        with pytest.raises(InvalidPendingResult):
            pending.get_result()
        mec.push_serialized({"s": serialize([1, 2])}, targets=0)
        assert deserialize(mec.pull_serialized("s", targets=0)) == [1, 2]
    finally:
        mec.clear_properties()
        mec.close()


# -- IPython 0.10's docs/examples/kernel ------------------------------------------------


def test_example_task1(tc, mec):
    mec.push({"d": 30})
    t1 = StringTask("a = 5\nb = 10*d\nc = a*b*d\n", clear_before=False, clear_after=True,
                    pull=["a", "b", "c"])
    tr1 = tc.get_task_result(tc.run(t1), block=True)
    tr1.raiseException()
    assert (tr1.ns.a, tr1.ns.b, tr1.ns.c) == (5, 300, 45000)


def test_example_taskreject(tc, mec):
    """taskreject.py: tasks refuse engines where `run` is False (engine globals)."""
    from ipython1.client.blocking import interactive

    mec.execute("from ipython1.kernel import TaskRejectError")
    mec.execute("run = False")
    mec.execute("run = True", targets=[0, 1])  # 0.10 waited for this; here, set it first

    @interactive  # 0.10's task functions read the engine's globals
    def map_task():
        if not run:  # noqa: F821
            raise TaskRejectError("task dependency not met")  # noqa: F821
        return 3.0e8

    tids = [tc.run(MapTask(map_task, retries=20), block=False) for _ in range(10)]
    results = [tc.get_task_result(t, block=True) for t in tids]
    assert {r.engine_id for r in results} <= {0, 1}
    assert [r.result for r in results] == [3.0e8] * 10
    assert all(r.attempts == 1 for r in results)  # a rejection uses no retry


def test_example_taskmap(tc):
    assert tc.map(lambda x: 2 * x, range(10)) == [2 * x for x in range(10)]
    m = tc.mapper(block=False, clear_after=True, clear_before=True)
    pending = m.map(lambda x: 2 * x, range(10))  # 0.10: task ids; here PendingTasks
    tc.barrier(pending.tids)
    assert pending.get_result() == [2 * x for x in range(10)]

    @tc.parallel()
    def f(x):
        return 2 * x

    assert f(range(10)) == [2 * x for x in range(10)]


def test_example_task2_queue_status_and_abort(tc, mec):
    mec.execute("import time")
    tids = [tc.run(StringTask("time.sleep(0.5)")) for _ in range(16)]
    qs = tc.queue_status(True)
    assert {"pending", "failed", "succeeded", "scheduled"} <= set(qs)
    sched = qs["scheduled"]
    assert sched and set(sched) <= set(tids)
    assert isinstance(tc.queue_status()["scheduled"], int)  # a count without verbose
    for tid in sched[-2:]:
        tc.abort(tid)
    tc.barrier(tids)
    aborted = [tc.get_task_result(t) for t in sched[-2:]]
    assert all(type(r.failure).__name__ == "TaskAborted" for r in aborted)
