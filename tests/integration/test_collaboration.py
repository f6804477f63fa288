"""Several users on one controller, each a real client process over 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipython1.common.errors import ConnectionLost, ControllerNotFound, PermissionDenied
from tests.conftest import Cluster, wait_until

AGENT = str(Path(__file__).with_name("collab_agent.py"))


@pytest.fixture(scope="module")
def collab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, dict[str, str]]]:
    """A 2-engine cluster with users alice and bob (full) and carol (observer)."""
    cluster = Cluster(tmp_path_factory.mktemp("collab"))
    cluster.env["IPYTHON1_EVENT_BUFFER"] = "500"  # drop a stuck subscriber sooner
    try:
        cluster.start(2)
        furls = {}
        for name, extra in (("alice", ()), ("bob", ()), ("carol", ("--observer",))):
            proc = cluster.ipcluster("adduser", name, *extra)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            furls[name] = proc.stdout.strip()
            assert os.stat(furls[name]).st_mode & 0o777 == 0o600
        furls["owner"] = cluster.mec_furl
        yield cluster, furls
    finally:
        cluster.stop()


def agent(cluster: Cluster, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, AGENT, *args], env=cluster.env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    cluster.pids.append(proc.pid)
    return proc


def answer(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


class Subscriber:
    """A user's subscriber process; events land in a file with their receipt time."""

    def __init__(self, cluster: Cluster, furl: str, path: Path) -> None:
        self.path = path
        self.proc = agent(cluster, "subscribe", furl, str(path))
        assert json.loads(self.proc.stdout.readline())["ready"]  # type: ignore[union-attr]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(10)


def transcript(cluster: Cluster) -> list[dict[str, Any]]:
    path = cluster.dir.log / "transcript.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bob_sees_alice_input_output_and_result_attributed_within_200ms(
        collab: tuple[Cluster, dict[str, str]], tmp_path: Path) -> None:
    cluster, furls = collab
    bob = Subscriber(cluster, furls["bob"], tmp_path / "bob.jsonl")
    try:
        done = answer(agent(cluster, "execute", furls["alice"],
                            "print('hello from alice'); import time; time.sleep(0.5); 6 * 7"))
        assert "Out[" in done["ok"]

        def alice_results() -> list[dict[str, Any]]:
            return [e for e in bob.events() if e["user"] == "alice" and e["kind"] == "result"]

        wait_until(lambda: len(alice_results()) == 2, 10, "bob to see alice's results")
        seen = [e for e in bob.events() if e["user"] == "alice"]
        queued = [e for e in seen if e["kind"] == "queued"]
        assert len(queued) == 1 and queued[0]["data"]["code"].startswith("print('hello")
        assert queued[0]["data"]["targets"] == [0, 1]
        assert queued[0]["client"].startswith("alice/")
        stdout = [e for e in seen if e["kind"] == "stdout"]
        assert sorted(e["engine"] for e in stdout) == [0, 1]
        assert all(e["data"]["text"] == "hello from alice\n" for e in stdout)
        assert {e["data"]["repr"] for e in alice_results()} == {"42"}
        # Streamed: the line arrives while the cell still sleeps.
        finished = min(e["time"] for e in alice_results())
        assert max(e["recv"] for e in stdout) < finished - 0.3
        assert all(e["data"]["execution_count"] >= 1 for e in alice_results())
        # Within 200 ms of happening: of alice's call for her input, of the
        # controller's event time for the rest.
        assert queued[0]["recv"] - done["t0"] < 0.2
        assert max(e["recv"] - e["time"] for e in seen) < 0.2
    finally:
        bob.close()


def test_observer_is_refused_everything_that_runs_and_nothing_runs(
        collab: tuple[Cluster, dict[str, str]]) -> None:
    cluster, furls = collab
    refused = answer(agent(cluster, "execute", furls["carol"], "observer_was_here = 1"))
    assert refused["error"] == "PermissionDenied"
    assert "'carol'" in refused["message"] and "execute" in refused["message"]
    owner = cluster.client(timeout=30)
    ran = owner.execute("'observer_was_here' in globals()")
    assert [r.output_repr for r in ran] == ["False", "False"]
    from ipython1.client.blocking import MultiEngineClient

    carol = MultiEngineClient(furls["carol"], timeout=30)
    cluster.clients.append(carol)
    assert carol.user == "carol" and carol.kind == "observer"
    refusals = {
        "push": lambda: carol.push({"a": 1}), "pull": lambda: carol.pull("a"),
        "scatter": lambda: carol.scatter("a", [1, 2]), "gather": lambda: carol.gather("a"),
        "map": lambda: carol.map(abs, [1, -2]), "apply": lambda: carol.apply(abs, -1),
        "reset": carol.reset, "kill": carol.kill, "clear_queue": carol.clear_queue,
        "interrupt": carol.interrupt, "keys": carol.keys,
    }
    for _op, call in refusals.items():
        with pytest.raises(PermissionDenied, match="'carol' is an observer"):
            call()
    # ...and what an observer may do.
    assert carol.get_ids() == [0, 1]
    carol.say("just watching")
    assert {u["name"]: u["kind"] for u in carol.users()}["carol"] == "observer"
    assert any(e["kind"] == "chat" for e in carol.transcript(user="carol"))
    assert len(owner.get_ids()) == 2  # the engines are all still there
    events = transcript(cluster)
    assert not [e for e in events if e["user"] == "carol" and e["kind"] == "queued"]
    assert {e["data"]["op"] for e in events if e["kind"] == "denied"} >= {"execute", "push"}


def test_revoked_furl_stops_connecting_within_1s(collab: tuple[Cluster, dict[str, str]]) -> None:
    from ipython1.client.blocking import MultiEngineClient

    cluster, _ = collab
    furl_file = cluster.ipcluster("adduser", "dave").stdout.strip()
    dave = MultiEngineClient(furl_file, timeout=10)
    cluster.clients.append(dave)
    assert dave.user == "dave" and dave.get_ids() == [0, 1]
    furl = Path(furl_file).read_text().strip()
    listed = cluster.ipcluster("users").stdout
    assert "dave" in listed and "full" in listed
    revoke = cluster.ipcluster("deluser", "dave")
    t0 = time.monotonic()
    assert revoke.returncode == 0 and "1 connection(s) dropped" in revoke.stdout
    with pytest.raises(ControllerNotFound):
        MultiEngineClient(furl, connect_timeout=1)
    with pytest.raises(ConnectionLost):
        wait_until(lambda: dave.get_ids() and False, 1, "dave's connection to drop")
    assert time.monotonic() - t0 < 1.0
    assert not Path(furl_file).exists() and "dave" not in cluster.ipcluster("users").stdout
    bad = cluster.ipcluster("adduser", "no/slash")
    assert bad.returncode == 1 and "invalid user name" in bad.stdout


def test_fair_queue_bob_runs_after_at_most_one_of_alices_thousand(
        collab: tuple[Cluster, dict[str, str]], tmp_path: Path) -> None:
    from ipython1.client.blocking import MultiEngineClient

    cluster, furls = collab
    release = tmp_path / "release"
    flood = agent(cluster, "flood", furls["alice"], "1000", str(release))
    assert json.loads(flood.stdout.readline())["submitted"] == 1000  # type: ignore[union-attr]
    owner = cluster.client(timeout=30)
    assert owner.queue_status(targets=0)[0]["per_user"] == {"alice": 1000}
    bob = MultiEngineClient(furls["bob"], timeout=60)
    cluster.clients.append(bob)
    assert bob.clear_queue(targets=0)[0]["cleared"] == 0  # not bob's to clear
    mark = transcript(cluster)[-1]["seq"]
    bobs = bob.execute("bob_ran = 1", targets=0, block=False)
    assert owner.queue_status(targets=0)[0]["per_user"] == {"alice": 1000, "bob": 1}
    release.touch()  # alice's first command ends; the queue moves on
    bobs.get_result()
    answer(flood, 120)
    events = [e for e in transcript(cluster) if e["seq"] > mark]
    # Count from the moment bob's command was queued: alice's commands that
    # started while bob's request was still on its way do not count.
    queued = next(i for i, e in enumerate(events) if e["kind"] == "queued" and e["user"] == "bob")
    started = [e["user"] for e in events[queued:] if e["kind"] == "started" and e["engine"] == 0]
    assert started.index("bob") <= 1, started[:5]


def test_three_users_hundred_commands_each_all_in_transcript_in_order(
        collab: tuple[Cluster, dict[str, str]]) -> None:
    cluster, furls = collab
    mark = transcript(cluster)[-1]["seq"]
    procs = [agent(cluster, "many", furls[u], "100") for u in ("alice", "bob", "owner")]
    for p in procs:
        assert answer(p, 120)["done"]
    events = [e for e in transcript(cluster) if e["seq"] > mark]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))  # each once, in order
    owner_name = cluster.client().user
    for user in ("alice", "bob", owner_name):
        mine = [e for e in events if e["user"] == user]
        calls = [e["data"]["call"] for e in mine if e["kind"] == "queued"]
        assert len(calls) == 100 and calls == sorted(calls)
        for engine in (0, 1):
            for kind in ("started", "result"):
                got = [e["data"]["call"] for e in mine if e["kind"] == kind and
                       e["engine"] == engine]
                assert got == calls, (user, engine, kind)
    for engine in (0, 1):
        # One command at a time per engine: started and result alternate.
        run = [(e["kind"], e["data"]["call"]) for e in events
               if e["engine"] == engine and e["kind"] in ("started", "result")]
        assert len(run) == 600
        assert all(run[i][0] == "started" and run[i + 1] == ("result", run[i][1])
                   for i in range(0, 600, 2))


def test_stuck_subscriber_is_dropped_and_does_not_slow_the_others(
        collab: tuple[Cluster, dict[str, str]], tmp_path: Path) -> None:
    cluster, furls = collab
    stuck = Subscriber(cluster, furls["carol"], tmp_path / "stuck.jsonl")
    bob = Subscriber(cluster, furls["bob"], tmp_path / "bob.jsonl")
    os.kill(stuck.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        assert answer(agent(cluster, "many", furls["alice"], "150"), 120)["done"]
        elapsed = time.monotonic() - t0
        log = cluster.dir.log_file("ipcontroller")
        wait_until(lambda: "too slow or not reading" in log.read_text(), 10,
                   "the stuck subscriber to be dropped")
        wait_until(lambda: len([e for e in bob.events() if e["user"] == "alice"
                                and e["kind"] == "result"]) == 300, 10, "bob's events")
        lags = [e["recv"] - e["time"] for e in bob.events()]
        assert max(lags) < 1.0, max(lags)
        assert elapsed < 30
    finally:
        os.kill(stuck.proc.pid, signal.SIGCONT)
        stuck.proc.kill()
        bob.close()


def spawn_shell(cluster: Cluster, furl: str, tmp_path: Path) -> Any:
    import pexpect

    env = dict(cluster.env, PROMPT_TOOLKIT_NO_CPR="1", IPYTHONDIR=str(tmp_path / "ipython"),
               TERM="xterm")
    shell = pexpect.spawn(sys.executable, ["-m", "ipython1.client.shell", "--furl-file", furl,
                                           "--no-color"],
                          env=env, dimensions=(40, 160), encoding="utf-8", timeout=30)
    cluster.pids.append(shell.pid)
    shell.expect(r"In \[\d+\]:")
    return shell


def test_shell_shows_another_users_cell_and_output_and_keeps_the_typed_line(
        collab: tuple[Cluster, dict[str, str]], tmp_path: Path) -> None:
    from ipython1.client.blocking import MultiEngineClient

    cluster, furls = collab
    shell = spawn_shell(cluster, furls["alice"], tmp_path)
    try:
        shell.send("typed_by_al")  # half a line, not yet entered
        bob = MultiEngineClient(furls["bob"], timeout=30)
        cluster.clients.append(bob)
        bob.execute("print('bob was here'); 6 * 7")
        shell.expect(r"\[bob\] In \[[\d*]+\] on 0-1: print\('bob was here'\); 6 \* 7")
        shell.expect(r"\[bob\]\[stdout:\d\] bob was here")
        shell.expect(r"\[bob\]\[\d\] Out\[\d+\]: 42")
        shell.expect("typed_by_al")  # the prompt is drawn again below, with the typed text
        shell.send("ice = 7\r")
        shell.expect(r"\[0\] In \[\d+\]: typed_by_alice = 7")
        shell.expect(r"In \[\d+\]:")
        assert bob.pull("typed_by_alice") == [7, 7]  # the whole line reached the engines
        shell.send("%users\r")
        shell.expect(r"bob\s+full\s+connected")
    finally:
        shell.terminate(force=True)
    observer = spawn_shell(cluster, furls["carol"], tmp_path)
    try:
        observer.send("observer_cell = 1\r")
        observer.expect("carol is an observer: cells cannot run on the cluster")
    finally:
        observer.terminate(force=True)


# -- the task farm through users' own capabilities ------------------------------------

def _gate(path: Path) -> Any:
    """A task that holds its engine until path exists (at most 60 s)."""
    from ipython1.client.blocking import StringTask

    return StringTask("import os, time\nt = time.monotonic()\n"
                      "while not os.path.exists(p) and time.monotonic() - t < 60:\n"
                      "    time.sleep(0.01)", push={"p": str(path)})


def test_users_run_tasks_with_their_own_furl_attributed_and_abort_only_their_own(
        collab: tuple[Cluster, dict[str, str]], tmp_path: Path) -> None:
    from ipython1.client.blocking import MultiEngineClient, StringTask, TaskClient
    from ipython1.common.errors import TaskAborted

    cluster, furls = collab
    alice = TaskClient(furls["alice"], timeout=60)  # a user's FURL file finds the farm
    bob_mec = MultiEngineClient(furls["bob"], timeout=60)
    cluster.clients.append(bob_mec)
    bob = bob_mec.task_client()
    owner = TaskClient(cluster.task_furl, timeout=60)
    try:
        tid = alice.run(StringTask("b = a * 2", push={"a": "alice-secret-21"}, pull="b"))
        assert alice.get_task_result(tid, block=True).ns.b == "alice-secret-21" * 2
        gate = bob.run(_gate(tmp_path / "open"))
        waiting = bob.run(StringTask("c = 1", after=[gate]))
        bob.queue_status()  # ordered after bob's submission: the tasks are on the controller
        with pytest.raises(PermissionDenied, match="'alice' may not abort task .*'bob'"):
            alice.abort(waiting)
        with pytest.raises(PermissionDenied, match="'alice' may not clear task"):
            alice.clear([waiting])
        owner.abort(waiting)  # the owner may
        res = bob.get_task_result(waiting, block=True)
        assert isinstance(res.failure, TaskAborted)
        (tmp_path / "open").touch()
        assert bob.get_task_result(gate, block=True).succeeded
        assert alice.clear() == 1  # alice's own finished task only
        assert bob.get_task_result(gate).succeeded  # bob's result is still there
        events = [e for e in transcript(cluster) if e["kind"].startswith("task_")]
        mine = {(e["kind"], e["data"].get("status")) for e in events if e["user"] == "alice"}
        assert {("task_submitted", None), ("task_finished", "succeeded")} <= mine
        assert any(e["user"] == "bob" and e["data"].get("status") == "failed"
                   and e["data"]["errors"] == {"TaskAborted": 1} for e in events)
        assert "alice-secret" not in (cluster.dir.log / "transcript.jsonl").read_text()
    finally:
        (tmp_path / "open").touch()
        for tc in (alice, bob, owner):
            tc.close()


def test_observer_cannot_run_abort_or_clear_tasks_and_nothing_runs(
        collab: tuple[Cluster, dict[str, str]]) -> None:
    from ipython1.client.blocking import StringTask, TaskClient

    cluster, furls = collab
    carol = TaskClient(furls["carol"], timeout=30)
    try:
        before = carol.queue_status()  # watching is allowed
        for op, call in (("run tasks", lambda: carol.run(StringTask("x = 1"))),
                         ("abort", lambda: carol.abort(0)), ("clear", carol.clear),
                         ("get_task_result", lambda: carol.get_task_result(0))):
            with pytest.raises(PermissionDenied, match=f"'carol' is an observer and may not {op}"):
                call()
        after = carol.queue_status()
        assert (after["pending"], after["succeeded"], after["failed"]) == (
            before["pending"], before["succeeded"], before["failed"])
        events = transcript(cluster)
        assert not [e for e in events if e["user"] == "carol" and e["kind"] == "task_submitted"]
        assert {"run tasks", "abort", "clear"} <= {
            e["data"]["op"] for e in events if e["kind"] == "denied" and e["user"] == "carol"}
    finally:
        carol.close()


def test_deluser_cuts_task_farm_access_at_once_and_aborts_waiting_tasks(
        collab: tuple[Cluster, dict[str, str]], tmp_path: Path) -> None:
    from ipython1.client.blocking import StringTask, TaskClient
    from ipython1.common.errors import KernelError, TaskAborted

    cluster, _ = collab
    furl_file = cluster.ipcluster("adduser", "hank").stdout.strip()
    hank = TaskClient(furl_file, timeout=10)
    owner = TaskClient(cluster.task_furl, timeout=30)
    try:
        gate = hank.run(_gate(tmp_path / "open"))
        waiting = hank.run(StringTask("c = 1", after=[gate]))
        wait_until(lambda: owner.queue_status()["pending"] >= 1, 10, "hank's tasks queued")
        assert cluster.ipcluster("deluser", "hank").returncode == 0
        t0 = time.monotonic()
        with pytest.raises(KernelError):  # ConnectionLost or PermissionDenied
            wait_until(lambda: hank.queue_status() and False, 1, "hank to be cut off")
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(KernelError):
            hank.run(StringTask("x = 1"))
        assert isinstance(owner.get_task_result(waiting, block=True).failure, TaskAborted)
    finally:
        (tmp_path / "open").touch()
        hank.close()
        owner.close()


def test_two_shells_started_together_see_each_other_the_recent_history_and_echoes(
        collab: tuple[Cluster, dict[str, str]], tmp_path: Path) -> None:
    import pexpect

    from ipython1.client.blocking import MultiEngineClient

    cluster, furls = collab
    bob = MultiEngineClient(furls["bob"], timeout=30)
    cluster.clients.append(bob)
    bob.say("said before the shells started")
    env = dict(cluster.env, PROMPT_TOOLKIT_NO_CPR="1", IPYTHONDIR=str(tmp_path / "ipython"),
               TERM="xterm")
    shells = {}
    for name in ("alice", "carol"):  # at the same moment
        shells[name] = pexpect.spawn(
            sys.executable,
            ["-m", "ipython1.client.shell", "--furl-file", furls[name], "--no-color"],
            env=env, dimensions=(40, 160), encoding="utf-8", timeout=30)
        cluster.pids.append(shells[name].pid)
    alice, carol = shells["alice"], shells["carol"]
    try:
        for shell, other in ((alice, "carol"), (carol, "alice")):
            shell.expect("recent activity on this cluster")
            shell.expect(r"\[bob\] says: said before the shells started")
            shell.expect(rf"\* {other} joined")  # from the history or live: never missed
        alice.expect(r"In \[\d+\]:")
        alice.send("%say hello all\r")
        alice.expect(r"\[alice\] says: hello all")  # the one who said it sees it too
        carol.expect(r"\[alice\] says: hello all")
        alice.send("%local 6 * 7\r")
        alice.expect(r"Out\[\d+\]: (\x1b\[[\d;]*m)*42")
        alice.send("%local print('local' + '-done')\r")
        alice.expect("local-done")
        assert "ExecutionResult" not in alice.before
        alice.send("undefined_here?\r")
        carol.expect(r"\[alice\] inspect undefined_here (0 )?on 0\b")
        assert "inspect inspect" not in carol.before
    finally:
        for shell in shells.values():
            shell.terminate(force=True)
