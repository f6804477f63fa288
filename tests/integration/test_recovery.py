"""Restart and recovery (issue 15): the controller dies, nothing is lost.

One cluster for the module: its controller is SIGKILLed and restarted with
`ipcluster start -n 2 --daemon --reuse` several times, under load, while the
same client objects are used throughout.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import Counter

import pytest

from ipython1.client import blocking as client
from ipython1.common.clusterdir import read_pid
from ipython1.common.errors import EngineError, InvalidPendingResult
from tests.conftest import Cluster, running_cluster, wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("recovery"), 2) as c:
        yield c


def runs(log: str) -> list[str]:
    try:
        with open(log) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def crash_controller(cluster: Cluster) -> None:
    pid = read_pid(cluster.dir.pid_file("ipcontroller"))
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not cluster.dir.controller_running(), 10, "the controller gone")


def restart(cluster: Cluster) -> str:
    proc = cluster.ipcluster("start", "-n", "2", "--daemon", "--reuse")
    cluster.record_pids()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def logged_task(log: str, seconds: float):
    """A task that notes each run of itself in log, then returns its argument."""
    def run(i):
        import time

        with open(log, "a") as f:
            f.write(f"{i}\n")
        time.sleep(seconds)
        return i
    return run


def test_controller_crash_loses_nothing(cluster, tmp_path):
    mec = cluster.client(timeout=60)
    tc = client.TaskClient(cluster.task_furl, timeout=60)
    mec.execute("import os; marker = os.getpid()")
    ids, pids = mec.get_ids(), mec.apply(os.getpid)
    assert ids == [0, 1]
    log = str(tmp_path / "runs")
    slow = tc.run(client.MapTask(logged_task(log, 3.0), args=(-1,)))
    tids = [tc.run(client.MapTask(logged_task(log, 0.1), args=(i,))) for i in range(40)]
    wait_until(lambda: "-1" in runs(log), 20, "the slow task running")
    assert tc.queue_status()["pending"] > 0  # queued tasks at the crash
    # A fetch in flight at the crash gets its result from the restarted controller.
    in_flight = mec.execute("import time; time.sleep(1); 5", targets=0, block=False)
    fetched = in_thread(in_flight.get_result)
    time.sleep(0.2)  # let the get_result call leave
    waited: dict[str, object] = {}
    crash_controller(cluster)
    # A call made while the controller is down waits for it and goes on.
    later = threading.Thread(target=lambda: waited.setdefault("ids", mec.get_ids()))
    later.start()
    out = restart(cluster)
    assert "2 engine(s) rejoined, 0 started" in out
    later.join(60)
    assert isinstance(waited.get("ids"), list)  # answered by the new controller
    fetched["thread"].join(30)
    # Run and kept by its engine, or still queued on the controller at the crash: said so
    # as soon as both engines are back.
    assert (fetched.get("result") and fetched["result"].output == 5 or
            "had not started" in str(fetched.get("error"))), fetched

    # The same engines: ids, pids, namespaces.
    assert mec.get_ids() == ids
    assert mec.apply(os.getpid) == pids
    assert mec.pull("marker") == pids
    # Every task's result, once; the task running at the crash ran once.
    tc.barrier([slow, *tids])
    results = [tc.get_task_result(t) for t in [slow, *tids]]
    assert [r.result for r in results] == [-1, *range(40)]
    counts = Counter(runs(log))
    assert counts["-1"] == 1, counts
    assert all(counts[str(i)] >= 1 for i in range(40))
    status = tc.queue_status()
    assert status["succeeded"] == 41 and status["pending"] == 0
    # Task ids go on from where they were; old ones still name their results.
    assert tc.run(client.MapTask(abs, args=(-5,))) > max(tids)
    assert tc.get_task_result(tids[0]).result == 0


def test_three_crash_restart_cycles_under_load(cluster, tmp_path):
    mec = cluster.client(timeout=60)
    tc = client.TaskClient(cluster.task_furl, timeout=60)
    pids = mec.apply(os.getpid)
    log = str(tmp_path / "runs")
    tids: list[int] = []
    for cycle in range(3):
        batch = [tc.run(client.MapTask(logged_task(log, 0.05), args=(cycle * 100 + i,)))
                 for i in range(30)]
        tids += batch
        wait_until(lambda n=30 * cycle + 5: len(runs(log)) >= n, 30, "tasks running")
        crash_controller(cluster)
        restart(cluster)
        assert mec.apply(os.getpid) == pids
    tc.barrier(tids)
    results = [tc.get_task_result(t) for t in tids]
    assert [r.result for r in results] == [c * 100 + i for c in range(3) for i in range(30)]
    assert all(r.attempts >= 1 for r in results)


def test_restart_on_request_replaces_the_engine_in_place(cluster):
    mec = cluster.client(timeout=60)
    mec.execute("z = 1")
    pids = mec.apply(os.getpid)
    mec.restart(targets=0)  # returns once it is back
    assert mec.get_ids() == [0, 1]
    assert mec.apply(os.getpid) == pids  # the same process, exec'd afresh
    from ipython1.scripts.ipcluster import engine_pids

    assert set(pids) <= set(engine_pids(cluster.dir))  # ipcluster stop still finds it
    assert "z" not in mec.keys(targets=0) and "z" in mec.keys(targets=1)
    assert mec.execute("1 + 1", targets=0).output == 2


def test_a_cell_running_at_the_crash_finishes_and_is_reported_on_rejoin(cluster):
    mec = cluster.client(timeout=60)
    mec.execute("import time", targets=1)
    mec.execute("time.sleep(2); answer = 42", targets=1, block=False)
    wait_until(lambda: mec.queue_status(targets=1)[0]["running"] is not None, 10, "running")
    crash_controller(cluster)
    restart(cluster)
    wait_until(lambda: mec.pull("answer", targets=1) == 42, 20, "the cell to finish")
    notes = wait_until(lambda: [e for e in mec.transcript()
                                if e["kind"] == "finished_while_away"], 10, "the note")
    assert notes[-1]["engine"] == 1, notes
    (note,) = notes[-1]["data"]["commands"]
    assert note["op"] == "execute"
    assert mec.get_result(note["execution_count"], targets=1).engine_id == 1


def test_a_plain_start_refuses_while_the_last_engines_live(cluster):
    crash_controller(cluster)
    proc = cluster.ipcluster("start", "-n", "2", "--daemon")
    assert proc.returncode == 1 and "--reuse" in proc.stdout, proc.stdout
    restart(cluster)


def test_restart_engines_brings_a_killed_engine_back_with_its_id(make_cluster):
    cluster = make_cluster(2, "--restart-engines")
    mec = cluster.client(timeout=60)
    events: list[dict] = []
    mec.subscribe_events(events.append)
    mec.execute("x = 1")
    old = cluster.engine_pid(mec, 1)
    running = mec.execute("import os, time; os.write(2, b'last words\\n'); time.sleep(60)",
                          targets=1, block=False)
    stderr = cluster.dir.log_file("ipengine-1.stderr")
    wait_until(lambda: b"last words" in stderr.read_bytes(), 10, "the cell running")
    os.kill(old, signal.SIGKILL)
    with pytest.raises(EngineError) as info:
        running.get_result()
    error = info.value
    assert error.engine_id == 1 and error.host == socket.gethostname()
    assert "SIGKILL" in error.exit and "last words" in error.stderr
    assert f"pid {old}" in str(error) and "SIGKILL" in str(error) and "last words" in str(error)
    # Back with its id and a fresh namespace (the timing is in bench/restart.py).
    wait_until(lambda: 1 in mec.get_ids() and cluster.engine_pid(mec, 1) != old, 15,
               "engine 1 restarted")
    assert "x" not in mec.keys(targets=1) and "x" in mec.keys(targets=0)
    wait_until(lambda: any(e["kind"] == "engine_restarted" and e["engine"] == 1
                           for e in events), 10, "the engine_restarted event")
    from ipython1.scripts.ipcluster import engine_pids

    # The supervisor rewrites the pid file just after starting it: ipcluster stop finds it.
    wait_until(lambda: cluster.engine_pid(mec, 1) in engine_pids(cluster.dir), 10, "pid file")
    # mec.restart: on request, fresh namespaces, same ids, back when it returns.
    mec.execute("y = 2")
    mec.restart()
    assert mec.get_ids() == [0, 1]
    assert not any("y" in keys for keys in mec.keys())


def test_subscriptions_are_renewed_after_a_restart(cluster):
    # A client that only listens (events, live output) gets them again after --reuse,
    # without making a call of its own; what happened before it was back too, once.
    listener = cluster.client(timeout=60)
    events: list = []
    listener._call(listener._async.subscribe_events, events.append, 0)
    worker = cluster.client(timeout=60)
    worker.execute("print('before the crash')", targets=0)

    def printed(text):
        return [e for e in events if e.get("kind") == "stdout"
                and text in str(e.get("data", {}).get("text"))]

    wait_until(lambda: printed("before the crash"), 30, "the listener's events")
    # A slow listener: it comes back only after the worker's command has run.
    reconnector, listener._async.reconnector = listener._async.reconnector, None
    crash_controller(cluster)
    restart(cluster)
    wait_until(lambda: len(worker.get_ids()) == 2, 30, "the engines back")
    worker.execute("print('after the restart')", targets=0)
    listener._async.reconnector = reconnector
    listener._call(reconnector.ensure)
    wait_until(lambda: printed("after the restart"), 30,
               "the listener's events after the restart")
    assert len(printed("after the restart")) == 1
    assert len(printed("before the crash")) == 1  # not again from the bus's history


def test_task_clients_of_a_user_reconnect_like_the_owners(cluster):
    # Through a user's own FURL, and through mec.task_client(): both go on after --reuse.
    furl_file = cluster.ipcluster("adduser", "erin").stdout.strip()
    own = client.TaskClient(furl_file, timeout=60)
    mec = client.MultiEngineClient(furl_file, timeout=60)
    through_mec = mec.task_client()
    assert own.get_task_result(own.run(client.MapTask(abs, args=(-1,))), block=True).result == 1
    crash_controller(cluster)
    restart(cluster)
    for tc in (own, through_mec):
        assert tc.get_task_result(tc.run(client.MapTask(abs, args=(-2,))), block=True).result == 2


def in_thread(call) -> dict[str, object]:
    """Run call on a thread of its own; its result (or error) lands in the dict."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["result"] = call()
        except BaseException as e:  # noqa: B036 - the test looks at whatever it was
            out["error"] = e

    out["thread"] = thread = threading.Thread(target=run)
    thread.start()
    return out


def test_results_sent_before_a_restart_are_fetched_after_it(cluster, tmp_path):
    mec = cluster.client(timeout=60)
    mec.execute("import time")
    # Finished before the crash, never fetched; running across it on engine 0; a
    # blocking call in flight on engine 1: all answered after --reuse.
    done = mec.execute("a = 6 * 7; a", block=False)
    pulled = mec.pull("a", block=False)
    wait_until(lambda: all(q["running"] is None and not q["queued"]
                           for q in mec.queue_status()), 10, "the first commands done")
    started = [tmp_path / "b", tmp_path / "c"]
    running = mec.execute(f"open({str(started[0])!r}, 'w').close(); time.sleep(2); b = 1; b",
                          targets=0, block=False)
    blocking = in_thread(lambda: mec.execute(
        f"open({str(started[1])!r}, 'w').close(); time.sleep(2); c = 3; c", targets=1))
    wait_until(lambda: all(p.exists() for p in started), 10, "both running on their engines")
    crash_controller(cluster)
    restart(cluster)
    blocking["thread"].join(60)
    assert "error" not in blocking, blocking.get("error")
    assert blocking["result"].output == 3
    assert [r.output for r in done.get_result()] == [42, 42]
    assert pulled.get_result() == [42, 42]
    assert running.get_result().output == 1
    with pytest.raises(InvalidPendingResult):
        mec.get_pending_result(done.id, timeout=10)  # fetched once, as any pending result


def test_a_part_that_had_not_started_is_reported_not_run(make_cluster):
    # --rejoin-wait ends the wait for parts nobody has: a command queued behind a
    # running one on the old controller never reached its engine.
    cluster = make_cluster(1)
    mec = cluster.client(timeout=60)
    mec.execute("import time")
    first = mec.execute("time.sleep(2)", block=False)
    queued = mec.execute("x = 1", block=False)
    wait_until(lambda: mec.queue_status()[0]["queued"], 10, "the second one queued")
    crash_controller(cluster)
    proc = cluster.ipcluster("start", "-n", "1", "--daemon", "--reuse", "--rejoin-wait", "3")
    cluster.record_pids()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert first.get_result()[0].engine_id == 0
    with pytest.raises(Exception, match="had not started"):
        queued.get_result()
    assert "x" not in mec.keys()[0]


def test_a_watched_engine_s_death_names_its_exit_and_stderr(cluster):
    # ipengine --watch: no supervisor, but its parent tells the controller how it ended.
    mec = cluster.client(timeout=60)
    before = set(mec.get_ids())
    watcher = cluster.start_engine("--watch")
    (new,) = wait_until(lambda: set(mec.get_ids()) - before, 30, "the watched engine")
    pid = cluster.engine_pid(mec, new)
    assert pid != watcher.pid
    cluster.pids.append(pid)
    running = mec.execute("import os, time; os.write(2, b'famous last words\\n'); "
                          "time.sleep(60)", targets=new, block=False)
    wait_until(lambda: mec.queue_status(targets=new)[0]["running"] is not None, 10, "running")
    time.sleep(0.3)  # let the words reach the watcher
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(EngineError) as info:
        running.get_result()
    assert "SIGKILL" in info.value.exit and "famous last words" in info.value.stderr
    assert info.value.host == socket.gethostname() and f"pid {pid}" in str(info.value)
    assert watcher.wait(10) == 0  # its only engine ended: so does the watcher


def test_missing_engines_only_are_started_with_reuse(cluster, tmp_path):
    """Last in the module: it replaces one of the shared cluster's engines."""
    from ipython1.scripts.ipcluster import engine_pids

    mec = cluster.client(timeout=60)
    tc = client.TaskClient(cluster.task_furl, timeout=60)
    pids = mec.apply(os.getpid)
    log = str(tmp_path / "runs")
    # A task that must not run twice, running on the engine that will not come back.
    once = tc.run(client.MapTask(logged_task(log, 30.0), args=("once",), idempotent=False))
    wait_until(lambda: runs(log), 20, "the task running")
    ids = mec.get_ids()
    owner = wait_until(lambda: [q["engine_id"] for q in mec.queue_status()
                                if q["running"] is not None], 10, "its engine")[0]
    doomed = pids[ids.index(owner)]
    (survivor,) = set(pids) - {doomed}
    crash_controller(cluster)  # first: the controller must not see the engine die
    os.kill(doomed, signal.SIGKILL)
    started = time.monotonic()
    proc = cluster.ipcluster("start", "-n", "2", "--daemon", "--reuse", "--rejoin-wait", "3")
    cluster.record_pids()
    assert proc.returncode == 0 and "1 engine(s) rejoined, 1 started" in proc.stdout, proc.stdout
    kept = set(ids) - {owner}
    ids = mec.get_ids()
    assert len(ids) == 2 and kept < set(ids)  # the survivor kept its id; the new one a new id
    pids = mec.apply(os.getpid)
    assert survivor in pids and doomed not in pids
    assert sorted(engine_pids(cluster.dir)) == sorted(pids)  # ipcluster stop finds both
    # Its engine did not rejoin within --rejoin-wait: failed, not run again.
    result = wait_until(lambda: tc.get_task_result(once), 30, "the task's outcome")
    assert time.monotonic() - started < 30  # --rejoin-wait 3, not the default 60
    assert isinstance(result.failure, EngineError) and "not idempotent" in str(result.failure)
    assert runs(log) == ["once"]
