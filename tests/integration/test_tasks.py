"""The task farm on a real cluster over 127.0.0.1 (controller and engines as processes).

Every test that takes ``tc`` runs twice on the same cluster: once with the
client on the controller's local command channel, once over Foolscap only
(``IPYTHON1_COMMAND_CHANNEL=0`` in the client); results must not differ.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from ipython1.client import blocking as client
from ipython1.client import multiengine as asyncclient
from ipython1.client.blocking import MapTask, StringTask
from ipython1.common.errors import (
    EngineError,
    KernelError,
    RemoteError,
    TaskAborted,
    TaskTimeout,
    UnmetDependency,
)
from tests.conftest import running_cluster, wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Four engines for this module; one more joins in a test."""
    with running_cluster(tmp_path_factory.mktemp("tasks"), 4) as c:
        yield c


@pytest.fixture(scope="module", params=["channel", "foolscap"])
def tc(cluster, request):
    saved = os.environ.get("IPYTHON1_COMMAND_CHANNEL")
    os.environ["IPYTHON1_COMMAND_CHANNEL"] = "1" if request.param == "channel" else "0"
    try:
        tc = client.TaskClient(cluster.task_furl, timeout=120)
    finally:
        if saved is None:
            del os.environ["IPYTHON1_COMMAND_CHANNEL"]
        else:
            os.environ["IPYTHON1_COMMAND_CHANNEL"] = saved
    assert tc.local_channel == (request.param == "channel")
    yield tc
    tc.close()


def _fail_until(path, n):
    """Raise until called n times (the count lives in a file, across engines)."""
    count = int(open(path).read()) + 1 if os.path.exists(path) else 1
    with open(path, "w") as f:
        f.write(str(count))
    if count < n:
        raise ValueError(f"attempt {count}")
    return count


def test_string_task_pushes_runs_and_pulls(tc):
    tid = tc.run(StringTask("b = a * 2\nprint('hi', b)", push={"a": 21}, pull="b", retries=2))
    res = tc.get_task_result(tid, block=True)
    assert res.ns.b == 42 and res["b"] == 42 and res.result == {"b": 42}
    assert res.stdout == "hi 42\n" and res.failure is None
    assert res.engine_id in tc.queue_status()["engines"]
    assert 0 <= res.duration < 5 and res.attempts == 1
    mt = tc.get_task_result(tc.run(MapTask(divmod, args=(17, 5))), block=True)
    assert mt.result == (3, 2)
    assert tc.get_task_result(tid) is not None  # kept until clear()


def test_failures_come_back_as_errors(tc):
    res = tc.get_task_result(tc.run(StringTask("1/0")), block=True)
    assert isinstance(res.failure, RemoteError) and res.failure.ename == "ZeroDivisionError"
    with pytest.raises(RemoteError):
        res.raise_exception()
    with pytest.raises(RemoteError):
        _ = res.ns
    res = tc.get_task_result(tc.run(StringTask("x = 1", pull="nope")), block=True)
    assert res.failure.ename == "NameError"


def test_bad_input_is_refused_at_once(tc):
    with pytest.raises(TypeError):
        StringTask(42)
    with pytest.raises(ValueError):
        MapTask(len, retries=-1)
    with pytest.raises(TypeError):
        tc.run("a = 1")
    with pytest.raises(KernelError, match="no task with id"):
        tc.get_task_result(10**9)


def test_throughput_no_op_tasks_and_map_of_100k_tiny_tasks(tc, capsys):
    n = 2000
    t0 = time.perf_counter()
    tids = [tc.run(MapTask(int, args=(i,))) for i in range(n)]
    tc.barrier(tids)
    per_task = n / (time.perf_counter() - t0)
    results = tc.pending(tids).get_result()
    assert [r.result for r in results] == list(range(n))
    t0 = time.perf_counter()
    assert tc.map(int, range(n)) == list(range(n))
    mapped = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    out = tc.map(lambda x: x * 2, range(100_000))
    big = time.perf_counter() - t0
    assert out == [2 * x for x in range(100_000)]
    with capsys.disabled():
        print(f"\n[tasks] 2000 no-op tasks on 4 engines: {per_task:.0f} tasks/s (one run each),"
              f" {mapped:.0f} tasks/s (map); map of 100,000 tiny tasks: {big:.2f} s")
    assert tc.clear() > 0


def test_retries_then_success(tc, tmp_path):
    path = str(tmp_path / "count")
    res = tc.get_task_result(tc.run(MapTask(_fail_until, args=(path, 3), retries=2)),
                             block=True)
    assert res.result == 3 and res.attempts == 3


def test_recovery_task_runs_after_retries_and_failure_is_reported(tc, tmp_path):
    path = str(tmp_path / "count")
    recovered = tc.run(StringTask("1/0", retries=1,
                                  recovery_task=StringTask("r = 'recovered'", pull="r")))
    res = tc.get_task_result(recovered, block=True)
    assert res.ns.r == "recovered" and res.recovered and res.attempts == 3
    failed = tc.run(MapTask(_fail_until, args=(path, 100), retries=1,
                            recovery_task=MapTask(_fail_until, args=(path, 100))))
    res = tc.get_task_result(failed, block=True)
    # its own last attempt
    assert isinstance(res.failure, RemoteError) and res.failure.evalue == "attempt 2"
    assert int(open(path).read()) == 3  # two attempts, then the recovery task


def test_timeout_interrupts_the_engine(tc):
    t0 = time.perf_counter()
    slow = tc.run(MapTask(time.sleep, args=(60,), timeout=0.5))
    cell = tc.run(StringTask("import time\nwhile True: time.sleep(0.01)", timeout=0.5))
    for tid in (slow, cell):
        res = tc.get_task_result(tid, block=True, timeout=30)
        assert isinstance(res.failure, TaskTimeout), res
    assert time.perf_counter() - t0 < 10
    # the engines were interrupted, not left busy: all four answer at once
    assert sorted(tc.map(lambda _: 1, range(8), chunksize=1)) == [1] * 8


def test_depend_restricts_engines_and_impossible_ones_fail(tc, cluster):
    mec = cluster.client(timeout=60)
    pid2 = cluster.engine_pid(mec, 2)
    only2 = [tc.run(MapTask(os.getpid, depend=(lambda p: os.getpid() == p, pid2)))
             for _ in range(4)]
    never = tc.run(MapTask(os.getpid, depend=lambda: False))
    raises = tc.run(StringTask("pass", depend=lambda: 1 / 0))
    assert {tc.get_task_result(t, block=True).result for t in only2} == {pid2}
    for tid in (never, raises):
        res = tc.get_task_result(tid, block=True, timeout=30)
        assert isinstance(res.failure, UnmetDependency), res
    assert "ZeroDivisionError" in str(res.failure)


def test_after_runs_tasks_in_dependency_order(tc, tmp_path):
    path = str(tmp_path / "order")
    first = tc.run(StringTask(f"import time; time.sleep(0.3); open({path!r}, 'w').write('1')"))
    second = tc.run(StringTask(f"v = open({path!r}).read()", pull="v", after=[first]))
    bad = tc.run(StringTask("1/0"))
    never = tc.run(StringTask("pass", after=[bad, first]))
    unknown = tc.run(StringTask("pass", after=[10**9]))
    assert tc.get_task_result(second, block=True).ns.v == "1"
    for tid in (never, unknown):
        assert isinstance(tc.get_task_result(tid, block=True).failure, UnmetDependency)


def test_abort_and_priorities(tc):
    engines = len(tc.queue_status()["engines"])  # 4, or 5 once one joined
    blockers = [tc.run(MapTask(time.sleep, args=(0.6,))) for _ in range(engines)]
    low = [tc.run(MapTask(time.time)) for _ in range(6)]
    high = tc.run(MapTask(time.time, priority=10))
    doomed = tc.run(MapTask(time.time))
    tc.abort(doomed)
    res = tc.get_task_result(doomed, block=True)
    assert isinstance(res.failure, TaskAborted)
    tc.barrier(blockers + low + [high])
    with pytest.raises(KernelError, match="already finished"):
        tc.abort(high)
    started = {t: tc.get_task_result(t).result for t in low + [high]}
    assert started[high] <= min(started[t] for t in low)
    status = tc.queue_status(verbose=True)
    assert status["pending"] == 0 and doomed in status["failed_ids"]


def _held_until(path: str) -> int:
    """A task that holds its engine until path exists (at most 60 s); returns its pid."""
    import os
    import time

    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return os.getpid()


def test_engine_that_joins_takes_queued_tasks_at_once(tc, cluster, tmp_path):
    mec = cluster.client(timeout=60)
    before = set(mec.get_ids())
    gate = tmp_path / "open"
    # The engines there hold tasks until the new one has registered, however slowly it
    # starts on a busy machine: queued tasks are still waiting when it joins.
    tids = [tc.run(MapTask(_held_until, args=(str(gate),))) for _ in range(80)]
    cluster.start_engine()
    wait_until(lambda: len(mec.get_ids()) == len(before) + 1, timeout=60,
               message="one more engine")
    (new,) = set(mec.get_ids()) - before
    wait_until(lambda: tc.queue_status()["running"].get(new, 0) > 0, timeout=30,
               message="the new engine took queued tasks")
    gate.touch()
    tc.barrier(tids)
    engines = {tc.get_task_result(t).engine_id for t in tids}
    assert new in engines, engines


def test_task_farm_and_multiengine_commands_at_once(tc, cluster):
    mec = cluster.client(timeout=60)
    errors: list[BaseException] = []

    def farm():
        try:
            other = client.TaskClient(cluster.task_furl, timeout=60)
            for _ in range(3):
                assert other.map(lambda x: x + 1, range(5000), chunksize=50) == list(
                    range(1, 5001))
            other.close()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=farm)
    thread.start()
    count = 0
    while thread.is_alive() or count < 5:
        mec.execute(f"z = {count}")
        assert mec.pull("z") == [count] * len(mec.get_ids())
        count += 1
    thread.join()
    assert not errors, errors


def test_async_client(cluster):
    from twisted.internet import defer

    from ipython1.client.reactor import ReactorThread, _wait

    @defer.inlineCallbacks
    def go():
        atc = yield asyncclient.get_task_client(cluster.task_furl)
        tid = yield atc.run(StringTask("y = 7", pull="y"))
        res = yield atc.get_task_result(tid, block=True)
        mapped = yield atc.map(lambda x: -x, range(10))
        atc.disconnect()
        return res.ns.y, mapped

    assert _wait(ReactorThread.get().submit(go), 60) == (7, [-x for x in range(10)])


def test_sigkill_an_engine_mid_run_loses_no_task(make_cluster):
    c = make_cluster(4)
    tc = client.TaskClient(c.task_furl, timeout=120)
    mec = c.client(timeout=60)
    victim = c.engine_pid(mec, 1)
    tids = [tc.run(MapTask(lambda i: (time.sleep(0.002), i * i)[1], args=(i,), retries=1))
            for i in range(2000)]
    wait_until(lambda: tc.queue_status()["succeeded"] >= 400, timeout=60, message="progress")
    os.kill(victim, signal.SIGKILL)
    tc.barrier(tids, timeout=120)
    results = tc.pending(tids).get_result()
    assert [r.result for r in results] == [i * i for i in range(2000)]
    engines = {r.engine_id for r in results}
    assert 1 in engines and engines <= {0, 1, 2, 3}
    status = tc.queue_status()
    assert status["failed"] == 0 and status["succeeded"] == 2000 and 1 not in status["engines"]
    # a task with no retries left on a dying engine fails naming it
    pid0 = c.engine_pid(mec, 0)
    tid = tc.run(MapTask(os._exit, args=(1,), depend=(lambda p: os.getpid() == p, pid0)))
    res = tc.get_task_result(tid, block=True, timeout=60)
    assert isinstance(res.failure, EngineError) and res.failure.engine_id == 0
    tc.close()


def test_a_call_msgpack_cannot_carry_keeps_its_place(tc):
    # A priority beyond 64 bits does not fit msgpack: on the channel such a
    # submit takes Foolscap, and the calls around it must not overtake it.
    for _ in range(3):
        tids = [tc.run(MapTask(len, args=(b"x" * (i + 2000),), priority=10**30))
                for i in range(500)]  # big messages: Foolscap takes a while to read them
        assert tc.get_task_result(tids[-1], block=True).result == 2499
        tids += [tc.run(MapTask(int, args=(i,), priority=10**30 if i % 3 == 0 else 0))
                 for i in range(12)]
        assert [tc.get_task_result(t, block=True).result for t in tids[-12:]] == list(range(12))
    with pytest.raises(KernelError, match="bad arguments to abort"):
        tc.abort("not a task id")
    status = tc.queue_status(verbose=True)  # the same plain data on both paths
    assert isinstance(status["engines"], list) and status["engines"]
    assert set(status["running"]) == set(status["engines"])
    assert all(isinstance(t, int) for t in status["succeeded_ids"])
    assert tc.clear(tids) == len(tids)
