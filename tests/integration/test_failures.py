"""Dead engines, dead controllers, bad FURLs and busy engines: specific errors, no hangs."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from ipython1.client import blocking as client
from ipython1.common.errors import (
    CompositeError,
    ConnectionLost,
    ControllerNotFound,
    EngineError,
    NoEnginesRegistered,
)
from tests.conftest import wait_until


def test_engine_sigkilled_mid_command(make_cluster):
    cluster = make_cluster(2)
    mec = cluster.client(timeout=30)
    pid = cluster.engine_pid(mec, 1)
    running = mec.execute("import os, time; os.write(2, b'famous last words\\n'); "
                          "time.sleep(30)", targets=1, block=False)
    queued = mec.execute("a = 1", targets=1, block=False)
    wait_until(lambda: mec.queue_status(targets=1)[0]["running"] is not None, 10, "running")
    time.sleep(0.3)  # let the words reach the engine's watcher
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    for pending in (running, queued):
        with pytest.raises(EngineError) as info:
            pending.get_result(timeout=10)
        assert info.value.engine_id == 1 and "engine 1" in str(info.value)
    # ipcluster's engines run under a watcher: the error says how the engine died.
    assert "SIGKILL" in info.value.exit and "famous last words" in info.value.stderr
    assert time.monotonic() - t0 < 5
    # The other engine and the controller keep working; engine 1 is gone.
    assert mec.execute("1 + 1", targets=0).output == 2
    assert mec.get_ids() == [0]
    with pytest.raises(Exception, match="no engine with id 1"):
        mec.execute("1", targets=1)


def test_second_client_works_while_first_waits_on_a_blocked_engine(make_cluster):
    cluster = make_cluster(2)
    first, second = cluster.client(timeout=60), cluster.client(timeout=10)
    blocked = first.execute("import time; time.sleep(3); 'done'", targets=0, block=False)
    t0 = time.monotonic()
    assert second.execute("'quick'", targets=1).output == "quick"
    assert second.queue_status(targets=0)[0]["running"] is not None
    assert time.monotonic() - t0 < 2
    assert blocked.get_result().output == "done"


def test_eight_clients_two_hundred_commands_each(make_cluster):
    cluster = make_cluster(4)
    clients = [cluster.client(timeout=120) for _ in range(8)]
    errors: list[BaseException] = []

    def work(c: int, mec: client.MultiEngineClient) -> None:
        try:
            pending = []
            for i in range(200):
                target = (c + i) % 4
                pending.append((i, target, mec.execute(f"v_{c} = {i}\nv_{c} * 1000 + {c}",
                                                       targets=target, block=False)))
            for i, target, p in pending:
                result = p.get_result()
                assert result.engine_id == target
                assert result.output == i * 1000 + c, (c, i, result.output)
        except BaseException as e:  # noqa: B036
            errors.append(e)

    threads = [threading.Thread(target=work, args=(c, m)) for c, m in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors[:3]
    assert all(not t.is_alive() for t in threads)


def test_client_disconnecting_mid_command_disturbs_no_one(make_cluster):
    cluster = make_cluster(2)
    leaving, staying = cluster.client(), cluster.client(timeout=30)
    leaving.execute("import time; time.sleep(1); gone = 1", block=False)
    leaving.close()
    assert staying.execute("'ok'").__len__() == 2
    assert staying.pull("gone") == [1, 1]  # the command ran to completion


def test_no_engines_registered(make_cluster):
    cluster = make_cluster(1)
    mec = cluster.client(timeout=30)
    mec.kill()
    wait_until(lambda: mec.get_ids() == [], 10, "no engines")
    with pytest.raises(NoEnginesRegistered):
        mec.execute("1")
    with pytest.raises(NoEnginesRegistered):
        mec.scatter("x", [1, 2])
    # An engine that joins later is used at once.
    cluster.start_engine()
    wait_until(lambda: mec.get_ids() == [1], 30, "a new engine")
    assert mec.execute("2", targets=1).output == 2


def test_kill_is_not_queued_behind_a_running_cell(make_cluster):
    cluster = make_cluster(2)
    mec = cluster.client(timeout=30)
    pid = cluster.engine_pid(mec, 0)
    busy = mec.execute("import time; time.sleep(60)", targets=0, block=False)
    wait_until(lambda: mec.queue_status(targets=0)[0]["running"] is not None, 10, "running")
    t0 = time.monotonic()
    mec.kill(targets=0)
    wait_until(lambda: not cluster_pid_alive(pid), 5, "engine 0 to exit")
    assert time.monotonic() - t0 < 5
    with pytest.raises(EngineError):
        busy.get_result()
    assert mec.get_ids() == [1]


def cluster_pid_alive(pid: int) -> bool:
    from ipython1.common.clusterdir import pid_alive

    return pid_alive(pid)


def test_controller_going_away_gives_connection_lost(make_cluster):
    cluster = make_cluster(2)
    mec = cluster.client(timeout=5)  # a call made while it is down waits this long
    engine_pids = [cluster.engine_pid(mec, i) for i in (0, 1)]
    brief = cluster.start_engine("--reconnect-timeout", "1")  # gives up after 1 s
    wait_until(lambda: len(mec.get_ids()) == 3, 30, "the third engine")
    waiting = mec.execute("import time; time.sleep(30)", block=False)
    wait_until(lambda: mec.queue_status(targets=0)[0]["running"] is not None, 10, "running")
    mec.kill(controller=True, targets=[])
    t0 = time.monotonic()
    with pytest.raises((ConnectionLost, CompositeError, EngineError)):
        waiting.get_result(timeout=10)
    with pytest.raises(ConnectionLost, match="did not come back within"):
        mec.execute("1")
    assert time.monotonic() - t0 < 10
    # Engines outlive the controller (issue 15): they keep trying to rejoin it,
    # for --reconnect-timeout seconds.
    wait_until(lambda: brief.poll() is not None, 15, "the engine that gives up after 1 s")
    assert all(cluster_pid_alive(p) for p in engine_pids)
    logs = [cluster.dir.log_file(f"ipengine-{p}") for p in engine_pids]
    wait_until(lambda: all("trying to rejoin" in log.read_text() for log in logs), 15,
               "engines trying to rejoin")


def test_missing_furl_file_names_file_and_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHON1_DIR", str(tmp_path))
    with pytest.raises(ControllerNotFound) as info:
        client.MultiEngineClient(profile="nosuch")
    message = str(info.value)
    assert "ipcontroller-mec.furl" in message and "'nosuch'" in message
    assert "no controller is running" in message


def test_wrong_furl_fails_promptly(tmp_path):
    bad = tmp_path / "bad.furl"
    bad.write_text("pb://abcdefghijklmnopqrstuvwxyz234567@127.0.0.1:1/nothing\n")
    t0 = time.monotonic()
    with pytest.raises(ControllerNotFound, match="127.0.0.1:1"):
        client.MultiEngineClient(str(bad), connect_timeout=3)
    assert time.monotonic() - t0 < 6
    garbage = tmp_path / "garbage.furl"
    garbage.write_text("not a furl")
    with pytest.raises(ControllerNotFound, match="does not hold a FURL"):
        client.MultiEngineClient(str(garbage))


def test_wrong_swiss_number_is_refused(make_cluster, tmp_path):
    cluster = make_cluster(1)
    furl = open(cluster.mec_furl).read().strip()
    forged = furl.rsplit("/", 1)[0] + "/" + "x" * 32
    with pytest.raises(ControllerNotFound):
        client.MultiEngineClient(forged, connect_timeout=5)
