"""Restart and recovery's pure pieces: supervisor policy, exits, in-place restart, late replies."""

from __future__ import annotations

import signal

from ipython1.cluster.supervisor import Slot, Supervisor, describe_exit
from ipython1.engine.rejoin import LateReplies
from ipython1.engine.restart import fresh_argv
from ipython1.kernel.controller import with_exit_report
from ipython1.kernel.errors import EngineError, error_from_wire, error_to_wire


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


def test_fresh_argv_drops_first_start_options_and_asks_for_the_id():
    argv = ["-m", "ipython1.scripts.ipengine", "--profile", "p", "--fork", "4",
            "--pid-file=/x", "--engine-id", "7", "--connect-timeout", "9"]
    assert fresh_argv(argv, 2) == ["-m", "ipython1.scripts.ipengine", "--profile", "p",
                                   "--connect-timeout", "9", "--engine-id", "2"]


def test_late_replies_are_kept_only_when_their_connection_is_gone():
    late = LateReplies()
    gen = late.started([1, 2])
    assert late.registration_info() == {"late_tasks": [], "running_tasks": [1, 2]}
    assert not late.finished(gen, [["r1"]])  # answered on its own connection
    gen = late.started([3])
    late.lost()
    assert late.finished(gen, [["r3"]])
    info = late.registration_info()
    assert info == {"late_tasks": [["r3"]], "running_tasks": []}
    late.rejoined(len(info["late_tasks"]))
    assert late.registration_info()["late_tasks"] == [] and late.connected
    # Lost while running, finished after the rejoin: sent now, not with a registration.
    gen = late.started([4])
    late.lost()
    late.rejoined(0)
    assert late.finished(gen, [["r4"]])
    assert late.take() == [["r4"]] and late.take() == []


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
