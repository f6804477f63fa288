"""Queued commands over the local command channel, and over Foolscap without it."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from ipython1.client.blocking import MapTask, StringTask, TaskClient
from ipython1.common.errors import (
    CompositeError,
    EngineError,
    InvalidTaskID,
    KernelError,
    RemoteError,
)
from tests.conftest import Cluster, wait_until


def _exercise(cluster: Cluster) -> None:
    """What every queued command must do, whichever way it travels."""
    mec = cluster.client()
    ids = mec.get_ids()
    mec.execute("a = 6 * 7")
    assert mec.pull("a") == [42] * len(ids)
    mec.push({"b": {"nested": (1, 2.5, b"\x00")}})
    assert mec.pull("b", targets=ids[0]) == {"nested": (1, 2.5, b"\x00")}
    assert mec.apply(lambda x: x + 1, 1, targets=ids[0]) == 2
    # Values under the data channel's threshold travel in the command's own
    # frames, here several times the engine end's read size, both ways.
    medium = np.arange(25_000, dtype=np.float64)  # 200 kB
    mec.push({"m": medium}, targets=ids[0])
    assert np.array_equal(mec.pull("m", targets=ids[0]), medium)
    assert mec.map(lambda x: x * x, range(8)) == [x * x for x in range(8)]
    records = mec.execute("print('hi'); a", targets=ids[0])
    assert records.stdout == "hi\n" and records.output_repr == "42"
    with pytest.raises(RemoteError) as info:
        mec.execute("1/0", targets=ids[0])
    assert "ZeroDivisionError" in str(info.value)
    assert mec.complete("a", targets=ids[0])
    # A subscription (Foolscap) sent right before a command (the channel) is in
    # place when the command runs: its output is not missed.
    got: list[str] = []

    def subscribe_then_execute() -> object:
        mec._async.subscribe(lambda engine, name, text: got.append(text))
        return mec._async.execute("print('ordered')", ids[0], True)

    mec._call(subscribe_then_execute)
    wait_until(lambda: "".join(got) == "ordered\n", 10, "the output of the command")
    mec.unsubscribe()
    # An interrupt right behind its command stops it, even before it started.
    for _ in range(5):
        spinning = mec.execute("while True: pass", targets=ids[0], block=False)
        mec.interrupt(targets=ids[0])
        with pytest.raises(RemoteError) as stopped:
            spinning.get_result(timeout=10)
        assert "KeyboardInterrupt" in str(stopped.value)
    # A dead engine fails its running command at once, naming it.
    victim = ids[-1]
    pid = cluster.engine_pid(mec, victim)
    pending = mec.execute("import time; time.sleep(30)", targets=victim, block=False)
    wait_until(lambda: mec.queue_status(targets=victim)[0]["running"], 10, "the sleep to start")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises((EngineError, CompositeError)) as died:
        pending.get_result(timeout=10)
    assert str(victim) in str(died.value)
    assert mec.pull("a", targets=ids[0]) == 42  # the others go on


def _every_op(mec: object, ids: list[int]) -> None:
    """The op table's commands end to end (tests/unit/test_conformance.py has them all
    over every pairing in-process)."""
    one = ids[0]
    mec.execute("c = 3; print('x')", targets=one)
    assert mec.get_result(targets=one).stdout == "x\n"
    assert "c" in mec.keys(targets=one) and "c" in mec.who(targets=one)
    assert "int" in mec.whos(targets=one)["text"]
    assert "int" in mec.inspect("c", targets=one)["text"]
    assert mec.history(targets=one)[-1][1].startswith("c = 3")
    mec.scatter("part", list(range(12)), targets=ids)
    assert mec.gather("part", targets=ids) == list(range(12))
    assert all(p["pid"] > 0 for p in mec.ping(targets=ids))
    mec.reset(targets=one)
    assert mec.keys(targets=one) == []


def _exercise_tasks(cluster: Cluster, local: bool) -> None:
    """The task farm's calls, whichever way they travel (tests/integration/test_tasks.py
    runs the whole task farm over both paths of the client)."""
    for tc in (TaskClient(cluster.task_furl, timeout=60), cluster.client().task_client()):
        assert tc.local_channel == local
        res = tc.get_task_result(tc.run(StringTask("b = a * 2", push={"a": 21}, pull="b")),
                                 block=True)
        assert res.ns.b == 42 and res.attempts == 1
        res = tc.get_task_result(tc.run(MapTask(divmod, args=(17, 5))), block=True)
        assert res.result == (3, 2)
        failed = tc.get_task_result(tc.run(StringTask("1/0")), block=True)
        assert isinstance(failed.failure, RemoteError)
        assert failed.failure.ename == "ZeroDivisionError"
        with pytest.raises(InvalidTaskID, match="no task with id"):
            tc.get_task_result(10**9)
        with pytest.raises(KernelError, match="bad arguments to abort"):
            tc.abort("x")
        assert tc.map(lambda x: x + 1, range(50)) == list(range(1, 51))
        tc.close()


def test_engines_on_the_controllers_host_take_the_channel(tmp_path):
    cluster = Cluster(tmp_path / "on").start(3)
    try:
        mec = cluster.client()
        assert mec.local_channel
        wait_until(lambda: all(i["command_channel"] for i in mec.engine_info()), 10,
                   "every engine's command channel")
        _exercise_tasks(cluster, local=True)
        _every_op(mec, mec.get_ids())
        # A large reply crosses the channel in linear time (it took 31.5 s for
        # 64 MiB when each read re-joined the whole buffer; ~1 s over Foolscap).
        start = time.monotonic()
        printed = mec.execute("print('x' * (64 * 2**20), end='')", targets=0)
        elapsed = time.monotonic() - start
        assert len(printed.stdout) == 64 * 2**20
        assert elapsed < 8, f"64 MiB of output took {elapsed:.1f} s over the channel"
        # Mixed: a client on Foolscap, engines on the channel.
        os.environ["IPYTHON1_COMMAND_CHANNEL"] = "0"
        try:
            remote = cluster.client()
        finally:
            del os.environ["IPYTHON1_COMMAND_CHANNEL"]
        assert not remote.local_channel
        _every_op(remote, remote.get_ids())
        # Mixed the other way: the client on the channel, an engine on Foolscap.
        cluster.start_engine(env=dict(cluster.env, IPYTHON1_COMMAND_CHANNEL="0"))
        wait_until(lambda: len(mec.get_ids()) == 4, 30, "the fourth engine")
        (foolscap_engine,) = [i["engine_id"] for i in mec.engine_info()
                              if not i["command_channel"]]
        _every_op(mec, [foolscap_engine])
        _exercise(cluster)
    finally:
        cluster.stop()


def test_without_the_channel_commands_travel_over_foolscap(tmp_path):
    cluster = Cluster(tmp_path / "off")
    cluster.env["IPYTHON1_COMMAND_CHANNEL"] = "0"
    cluster.start(3)
    try:
        mec = cluster.client()
        assert not mec.local_channel
        assert not any(i["command_channel"] for i in mec.engine_info())
        _exercise_tasks(cluster, local=False)
        _every_op(mec, mec.get_ids())
        _exercise(cluster)
    finally:
        cluster.stop()
