"""Restart and recovery's pure pieces: supervisor policy, exits, in-place restart, late replies."""

from __future__ import annotations

import signal

import pytest

from ipython1.cluster.supervisor import Slot, Supervisor, describe_exit
from ipython1.common.errors import EngineError, error_from_wire, error_to_wire
from ipython1.controller.registry import with_exit_report
from ipython1.engine.rejoin import LateReplies
from ipython1.engine.restart import take_in_place_id


class Proc:
    pids = iter(range(100, 10_000))

    def __init__(self) -> None:
        self.pid = next(self.pids)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


def test_describe_exit():
    assert describe_exit(-signal.SIGKILL) == "killed by signal 9 (SIGKILL)"
    assert describe_exit(3) == "exited with code 3"


def test_supervisor_restarts_what_exits_with_its_id_and_says_why():
    spawned: list[tuple[int | None, str | None]] = []
    exits: list[tuple[int | None, int, str]] = []

    def spawn(slot, why):
        spawned.append((slot.engine_id, why))
        return Proc()

    sup = Supervisor(spawn, lambda slot, proc, why: exits.append((slot.engine_id, proc.pid, why)))
    sup.start([Slot(0, ["e0"]), Slot(1, ["e1"])])
    first = sup.pids()
    assert sup.poll() == []
    sup.slots[1].process.returncode = -9
    ended = sup.poll()
    assert [(s.engine_id, why) for s, why in ended] == [(1, "killed by signal 9 (SIGKILL)")]
    assert spawned[-1] == (1, "killed by signal 9 (SIGKILL)")
    assert exits == [(1, first[1], "killed by signal 9 (SIGKILL)")]
    assert sup.pids()[0] == first[0] and sup.pids()[1] != first[1]


def test_supervisor_gives_up_on_an_engine_that_keeps_dying():
    now = [0.0]
    sup = Supervisor(lambda slot, why: Proc(), clock=lambda: now[0], max_restarts=3, window=60)
    sup.start([Slot(None, ["mpiexec"])])  # an MPI job is one slot
    for _ in range(4):
        sup.slots[0].process.returncode = 1
        sup.poll()
        now[0] += 1
    assert sup.slots[0].given_up and sup.pids() == []


def test_an_engine_restarted_in_place_asks_for_its_id_and_forks_nothing():
    options = {"engine-id": None, "fork": 4, "pid-file": "/x/ipengines.pid"}
    environ = {"IPYTHON1_ENGINE_ID": "2"}
    take_in_place_id(options, environ)
    assert options == {"engine-id": 2, "fork": 1, "pid-file": None} and not environ
    untouched = {"engine-id": None, "fork": 4, "pid-file": "/x"}
    take_in_place_id(untouched, {})
    assert untouched == {"engine-id": None, "fork": 4, "pid-file": "/x"}


def test_late_replies_are_kept_only_when_their_connection_is_gone():
    late = LateReplies()
    gen = late.started([1, 2])
    assert late.registration_info() == {"late_tasks": [], "running_tasks": [1, 2],
                                        "finished_while_away": [], "kept_results": [],
                                        "running_command": None, "recent_tasks": [],
                                        "done_tasks": []}
    assert not late.finished(gen, [["r1"]])  # answered on its own connection
    # ... but maybe not journaled by a controller about to crash: named again on a rejoin.
    assert late.registration_info()["recent_tasks"] == [["r1"]]
    assert late.registration_info()["done_tasks"] == [1, 2]
    gen = late.started([3])
    late.lost()
    assert late.finished(gen, [["r3"]])
    info = late.registration_info()
    assert info["late_tasks"] == [["r3"]] and info["running_tasks"] == []
    late.rejoined(len(info["late_tasks"]))
    assert late.registration_info()["late_tasks"] == [] and late.connected
    # Lost while running, finished after the rejoin: sent now, not with a registration.
    gen = late.started([4])
    late.lost()
    late.rejoined(0)
    assert late.finished(gen, [["r4"]])
    assert late.take() == {"tasks": [["r4"]], "finished": [], "results": []}
    assert late.take() == {"tasks": [], "finished": [], "results": []}


def test_engine_error_names_host_exit_and_stderr_across_the_wire():
    reason, death = with_exit_report(
        "engine 1 on h, pid 5 died (connection lost)", {"host": "h", "pid": 5},
        {"exit": "killed by signal 9 (SIGKILL)", "stderr": "Traceback...\nMemoryError"})
    error = error_from_wire(error_to_wire(EngineError(1, reason, death)))
    assert isinstance(error, EngineError)
    assert (error.engine_id, error.host, error.exit) == (1, "h", "killed by signal 9 (SIGKILL)")
    assert error.stderr.endswith("MemoryError")
    assert "pid 5 died (killed by signal 9 (SIGKILL))" in str(error)
    assert "MemoryError" in str(error)
    assert with_exit_report("r", {}, None) == ("r", {})


# -- the controller's rejoin rules, with stand-in engines -------------------------

def test_a_rejoining_engine_gets_its_id_back_unless_a_live_engine_has_it():
    from ipython1.controller.registry import Controller
    from tests.unit.test_mpi_controller import FakeEngine

    controller = Controller()
    first = FakeEngine()
    assert controller.register_engine(first, {}) == 0
    assert controller.register_engine(FakeEngine(), {}) == 1
    # While engine 0 lives, nobody gets its id, rejoining or not.
    assert controller.register_engine(FakeEngine(), {"requested_id": 0, "rejoin": True}) == 2
    first.disconnect()
    assert controller.register_engine(FakeEngine(), {"requested_id": 0}) == 3  # not a rejoin
    assert controller.register_engine(FakeEngine(), {"requested_id": 0, "rejoin": True}) == 0


def test_a_reused_controller_keeps_the_old_ids_for_the_engines_that_rejoin():
    from ipython1.controller.registry import Controller
    from tests.unit.test_mpi_controller import FakeEngine

    controller = Controller()
    controller.remember_ids({0, 1, 5})
    assert controller.register_engine(FakeEngine(), {}) == 6  # a new engine: a new id
    assert controller.register_engine(FakeEngine(), {"requested_id": 1, "rejoin": True}) == 1


def test_late_task_replies_reach_the_observers_not_the_engine_info():
    from ipython1.controller.registry import Controller
    from tests.unit.test_mpi_controller import FakeEngine

    controller = Controller()
    seen: list[tuple[str, dict]] = []
    controller.add_observer(lambda kind, data: seen.append((kind, data)))
    engine_id = controller.register_engine(FakeEngine(), {"late_tasks": [[7, "ok", 0.1, []]],
                                                          "running_tasks": [8]})
    registered = [d for k, d in seen if k == "engine_registered"][0]
    assert registered["late_tasks"] == [[7, "ok", 0.1, []]]
    assert "late_tasks" not in controller.engine_info([engine_id])[0]
    controller.deliver_late(engine_id, {"tasks": [[8, "ok", 0.2, []]], "finished": []})
    assert [d["late_tasks"] for k, d in seen if k == "late_replies"] == [[[8, "ok", 0.2, []]]]


# -- the client's reconnection, with a fake clock ------------------------------------

def test_reconnector_shares_one_attempt_and_gives_up_at_the_deadline():
    from twisted.internet import defer, task

    from ipython1.client.reconnect import Reconnector
    from ipython1.common.errors import ConnectionLost

    clock = task.Clock()
    tries: list[float] = []
    installed: list[object] = []
    up = [False]

    def reopen(seconds):
        tries.append(clock.seconds())
        return defer.succeed("session") if up[0] else defer.fail(OSError("refused"))

    r = Reconnector(reopen, installed.append, "the client", timeout=10, clock=clock)
    a, b = r.ensure(), r.ensure()
    clock.advance(0.1)
    clock.advance(0.2)
    assert len(tries) == 3 and not a.called
    up[0] = True
    clock.advance(0.4)
    assert a.called and b.called and installed == ["session"]  # one attempt for both
    up[0] = False
    late = r.ensure()
    for _ in range(30):
        clock.advance(1)
    failure = []
    late.addErrback(failure.append)
    assert failure and failure[0].check(ConnectionLost)
    assert "did not come back within 10 s" in str(failure[0].value)
    assert "--reuse" in str(failure[0].value)


def test_the_farm_takes_a_resent_submission_once():
    """A client whose submit answer was lost with the controller sends it again."""
    from twisted.internet import task

    from ipython1.controller.taskfarm import TaskFarm

    class Controller:
        owner = "me"

        def ids(self):
            return []

        def add_observer(self, observer):
            pass

    farm = TaskFarm(Controller(), clock=task.Clock())
    first = farm.scheduler.reserve(2)
    batch = [[first, {}, [b"payload"]], [first + 1, {}, [b"payload"]]]
    answers = []
    farm.submit(batch, "c", "me").addCallback(answers.append)
    farm.submit(batch, "c", "me").addCallback(answers.append)
    assert answers == [[None, None], [None, None]]
    assert farm.queue_status()["pending"] == 2
    # Another user cannot pass off a repeat of someone else's ids.
    farm.submit(batch[:1], "d", "eve").addCallback(answers.append)
    assert answers[-1][0]["ename"] == "InvalidTaskID"


def test_commands_finished_while_away_are_noted_for_the_rejoin():
    late = LateReplies()
    gen = late.generation
    assert not late.lost_since(gen)
    late.lost()
    assert late.lost_since(gen)
    late.note("execute", {"status": "ok", "value": {"execution_count": 7}})
    late.note("push", {"status": "error", "error": {"ename": "KeyboardInterrupt"}})
    assert late.registration_info()["finished_while_away"] == [
        {"op": "execute", "execution_count": 7},
        {"op": "push", "error": "KeyboardInterrupt"}]
    late.rejoined(0)
    assert late.registration_info()["finished_while_away"] == []
    assert not late.lost_since(late.generation) and late.lost_since(gen)
    # Ending after the rejoin: sent at once (the caller is told to).
    assert late.note("execute", {"status": "ok", "value": {"execution_count": 8}})
    assert late.take()["finished"] == [{"op": "execute", "execution_count": 8}]


def test_reconnector_gives_up_at_once_when_the_furl_is_refused():
    from twisted.internet import defer, task

    from ipython1.client.reconnect import Reconnector
    from ipython1.common.errors import ConnectionLost, ControllerNotFound

    clock = task.Clock()
    r = Reconnector(lambda s: defer.fail(ControllerNotFound(
        "cannot connect: \"unable to find reference for name starting with 'ab'\"")),
        lambda opened: None, "the client", timeout=60, clock=clock)
    failure = []
    r.ensure().addErrback(failure.append)
    assert failure and failure[0].check(ConnectionLost)  # at once, no waiting
    assert "revoked" in str(failure[0].value)


def test_an_engine_keeps_its_last_tagged_replies_within_bounds(monkeypatch):
    from ipython1.engine import rejoin

    monkeypatch.setattr(rejoin, "MAX_KEPT", 3)
    late = LateReplies()
    for i in range(4):
        gen = late.command_started(f"t/{i}/1")
        assert late.registration_info()["running_command"] == f"t/{i}/1"
        assert not late.command_finished(gen, f"t/{i}/1", {"value": i})  # delivered
    assert late.registration_info()["kept_results"] == ["t/1/1", "t/2/1", "t/3/1"]
    assert late.kept_reply("t/0/1") == (False, None)  # the oldest went first
    assert late.kept_reply("t/3/1") == (True, {"value": 3})
    big = {"value": b"x" * (rejoin.MAX_KEPT_BYTES // 2)}
    assert not late.command_finished(late.command_started("t/9/1"), "t/9/1", big)
    assert late.kept_reply("t/9/1") == (True, None)  # kept as "too large"
    # Finished while away, after the engine rejoined: reported at once (deliver_late).
    gen = late.command_started("t/10/2")
    late.lost()
    info = late.registration_info()
    assert info["running_command"] == "t/10/2"
    late.rejoined(0, info["kept_results"])
    assert late.command_finished(gen, "t/10/2", {"value": 10})
    assert late.take()["results"] == ["t/10/2"]


def test_recovered_results_gather_the_parts_the_rejoining_engines_name():
    from twisted.internet.defer import Deferred

    from ipython1.controller.recovered import KEPT, LOST, RecoveredResults, make_tag

    rec = RecoveredResults()
    tag = make_tag("tok", 7, 3)
    # A client asks before any engine rejoined: it waits.
    waiting: Deferred = rec.wait("tok", 7)
    got: list = []
    waiting.addCallback(got.append)
    rec.rejoined(0, [tag, make_tag("tok", 6, 1)], None)
    rec.rejoined(1, [], tag)  # still running it
    assert not got and not rec.complete("tok", 7)
    rec.finished(1, [tag])
    rec.rejoined(2, [tag], None)
    assert got[0][0] == tag and got[0][1].parts == {0: KEPT, 1: KEPT, 2: KEPT}
    # An engine that dies loses its part; one that never names it is missing at the
    # end of the window.
    other = make_tag("tok", 8, 2)
    rec.rejoined(0, [other], None)
    rec.lost(0)
    assert not rec.complete("tok", 8)
    rec.expire()
    assert rec.complete("tok", 8)
    assert rec.calls[("tok", 8)].parts == {0: LOST} and rec.calls[("tok", 8)].missing == 1
    # After the window, a call no engine named is unknown; another token sees nothing.
    assert not rec.knows("tok", 99) and not rec.knows("else", 6) and rec.knows("tok", 6)
    rec.forget("tok", 6)
    assert not rec.knows("tok", 6)
    none: list = []
    rec.wait("tok", 99).addCallback(none.append)
    assert none == [None]


def test_the_window_ends_once_the_engines_alive_at_the_loss_rejoined():
    from ipython1.controller.recovered import RecoveredResults, make_tag

    rec = RecoveredResults()
    rec.expect({0, 1})
    waiting: list = []
    rec.wait("tok", 1).addCallback(waiting.append)  # no engine has named it yet
    rec.rejoined(0, [make_tag("tok", 2, 1)], None)
    assert not rec.window_over and not waiting
    rec.rejoined(1, [], None)
    assert rec.window_over and waiting == [None]  # nobody had it: it never started
    nobody = RecoveredResults()
    nobody.expect(set())
    assert nobody.window_over


@pytest.mark.parametrize("engine_link", ["channel", "foolscap"])
def test_a_tagged_command_keeps_the_very_bytes_that_answered_it(engine_link):
    """The engine encodes a reply once: the kept reply is the sent one, sized by its length."""
    from ipython1.controller.queue import Command
    from tests.unit.test_conformance import Cluster

    cluster = Cluster("foolscap", engine_link)
    engine = cluster.engine_ref.target
    sent = cluster.result(cluster.controller.submit(0, Command(
        "execute", ("x = 'kept' * 3",), tag="tok/7/1")))
    untagged = cluster.result(cluster.controller.submit(0, Command("execute", ("y = 1",))))
    assert isinstance(sent, bytes) and isinstance(untagged, bytes)
    assert engine.late.kept_reply("tok/7/1") == (True, sent)
    assert engine.late.registration_info()["kept_results"] == ["tok/7/1"]
    assert engine.remote_kept_result("tok/7/1") == sent
    assert engine.late._kept_bytes == len(sent)
