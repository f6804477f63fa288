"""The engine supervisor: a dead engine is started again, fresh, with its id.

``ipcluster start --restart-engines`` runs ``python -m
ipython1.cluster.supervisor`` beside the controller. It starts each engine
command itself (one per engine, or one ``mpiexec`` for the whole MPI job,
since a single rank cannot be replaced) and, when one exits, writes what it
saw to ``pid/exits/<pid>.json`` (the exit code or signal and the last lines
of the engine's stderr: the controller puts them in the ``EngineError`` of
the commands the engine was running) and starts the command again. The new
engine asks for its predecessor's id and says why it was restarted; the
controller publishes that as an ``engine_restarted`` event.

On another host (``ipcluster start --engines ssh --restart-engines``) it
runs there, records itself and its engines in the pid file it is given
(``ssh.remote_pid_file``), and also sends each report over the engine FURL
(``$IPYTHON1_ENGINE_FURL``, ``RIEngineRegistration.report_exit``): the
controller cannot read that host's files.

``Supervisor`` is the policy, pure: it takes a spawn callable and a clock.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipython1.cluster.local import ENGINES_PID_FILE, SUPERVISOR_PID_FILE, stop_pids
from ipython1.common.clusterdir import ClusterDir
from ipython1.common.private import open_private_log, write_private
from ipython1.common.processes import check, write_pid_file

RESTART_ENV = "IPYTHON1_ENGINE_RESTARTED"  # why the engine was restarted (for its event)
SUPERVISED_ENV = "IPYTHON1_SUPERVISED"  # set for supervised engines: they have exit reports
STDERR_LINES = 10  # lines of a dead engine's stderr kept in its EngineError
MAX_RESTARTS = 10  # per engine within RESTART_WINDOW; then it is left dead
RESTART_WINDOW = 60.0


def describe_exit(returncode: int) -> str:
    """Say how a process ended, from its Popen returncode."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-returncode} ({name})"
    return f"exited with code {returncode}"


@dataclass
class Slot:
    """One supervised command: an engine (its id), or a whole MPI job (id None)."""

    engine_id: int | None
    argv: list[str]
    process: Any = None
    restarts: list[float] = field(default_factory=list)
    given_up: bool = False


class Supervisor:
    """Start commands; start each again when it exits (bounded); pure policy."""

    def __init__(self, spawn: Callable[[Slot, str | None], Any],
                 on_exit: Callable[[Slot, Any, str], None] = lambda slot, proc, why: None,
                 clock: Callable[[], float] = time.monotonic,
                 max_restarts: int = MAX_RESTARTS, window: float = RESTART_WINDOW) -> None:
        self.spawn = spawn  # (slot, why it restarts or None) -> a started process (poll(), pid)
        self.on_exit = on_exit
        self.clock = clock
        self.max_restarts = max_restarts
        self.window = window
        self.slots: list[Slot] = []

    def start(self, slots: list[Slot]) -> None:
        self.slots = slots
        for slot in slots:
            slot.process = self.spawn(slot, None)

    def poll(self) -> list[tuple[Slot, str]]:
        """Restart whatever exited; return (slot, how it ended) for each."""
        ended = []
        for slot in self.slots:
            if slot.given_up or slot.process is None:
                continue
            code = slot.process.poll()
            if code is None:
                continue
            why = describe_exit(code)
            self.on_exit(slot, slot.process, why)
            ended.append((slot, why))
            now = self.clock()
            slot.restarts = [t for t in slot.restarts if now - t < self.window] + [now]
            if len(slot.restarts) > self.max_restarts:
                slot.given_up = True  # it dies as soon as it starts: stop trying
                continue
            slot.process = self.spawn(slot, why)
        return ended

    def pids(self) -> list[int]:
        return [s.process.pid for s in self.slots if s.process is not None and not s.given_up]


# -- exit reports: supervisor -> controller, through the cluster directory ---------


def exits_dir(pid_dir: Path) -> Path:
    return pid_dir / "exits"


def write_exit_report(pid_dir: Path, pid: int, report: dict[str, Any]) -> None:
    """Write what the supervisor saw of an engine's end (read by the controller)."""
    write_private(exits_dir(pid_dir) / f"{pid}.json", json.dumps(report))


def read_exit_report(pid_dir: Path, pid: Any) -> dict[str, Any] | None:
    try:
        with open(exits_dir(pid_dir) / f"{int(pid)}.json") as f:
            report = json.load(f)
    except (OSError, ValueError, TypeError):
        return None
    return report if isinstance(report, dict) else None


def tail(path: Path, start: int, lines: int = STDERR_LINES) -> str:
    """Return the last lines of path written after offset start."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read()[-65536:].decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])[-20_000:]  # the report's bound on the wire


# -- the process -------------------------------------------------------------------


def foolscap_reporter(furl: str) -> Callable[[dict[str, Any]], None]:
    """Return a function that sends an exit report to the controller (a reactor thread)."""
    import threading

    from twisted.internet import reactor

    from ipython1.common import wire
    from ipython1.transport.foolscap import FoolscapRegistrationConnection

    threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                     name="reactor", daemon=True).start()
    tubs: list[Any] = []

    def send(report: dict[str, Any]) -> None:
        if not tubs:
            tubs.append(wire.client_tub())
        d = wire.get_reference(tubs[0], furl, 10.0)
        d.addCallback(lambda reference: FoolscapRegistrationConnection(reference).report_exit(
            report))
        d.addErrback(lambda f: sys.stderr.write(
            f"supervisor: could not report pid {report.get('pid')}'s end: "
            f"{f.getErrorMessage()}\n"))

    return lambda report: reactor.callFromThread(send, report)


def run(profile: str, commands: list[tuple[int | None, list[str]]],
        poll_interval: float = 0.05, pid_file: str | None = None) -> None:
    """Supervise commands until SIGTERM; then stop them all. With pid_file (on
    another host) record itself and its engines there, and report over Foolscap."""
    cluster_dir = ClusterDir(profile).create()
    offsets: dict[int, tuple[Path, int]] = {}
    furl = os.environ.get("IPYTHON1_ENGINE_FURL", "").strip()
    report_over_foolscap = foolscap_reporter(furl) if pid_file and furl else None
    engines_file = Path(pid_file) if pid_file else cluster_dir.pid_file(ENGINES_PID_FILE)

    def spawn(slot: Slot, why: str | None) -> subprocess.Popen[bytes]:
        name = "mpiexec" if slot.engine_id is None else f"ipengine-{slot.engine_id}"
        err = cluster_dir.log_file(f"{name}.stderr")
        env = dict(os.environ, **{SUPERVISED_ENV: "1"})
        if why is not None:
            env[RESTART_ENV] = why
        with open_private_log(err) as stderr:
            start = stderr.tell()
            proc = subprocess.Popen(slot.argv, stdin=subprocess.DEVNULL, stderr=stderr,
                                    stdout=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        offsets[proc.pid] = (err, start)
        return proc

    def on_exit(slot: Slot, proc: Any, why: str) -> None:
        err, start = offsets.pop(proc.pid, (None, 0))
        report = {"engine_id": slot.engine_id, "pid": proc.pid, "host": socket.gethostname(),
                  "exit": why, "stderr": tail(err, start) if err else ""}
        write_exit_report(cluster_dir.pid, proc.pid, report)
        if report_over_foolscap is not None:
            report_over_foolscap(report)

    def write_pids() -> None:
        # With start times and command lines: ipcluster stop signals only these.
        write_pid_file(engines_file, ([os.getpid()] if pid_file else []) + supervisor.pids())

    supervisor = Supervisor(spawn, on_exit)
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *a: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *a: stopping.append(True))
    if not pid_file:  # on another host: the one pid file (its stop ends us first)
        write_pid_file(cluster_dir.pid_file(SUPERVISOR_PID_FILE), [os.getpid()])
    supervisor.start([Slot(engine_id, argv) for engine_id, argv in commands])
    write_pids()
    recheck = time.monotonic() + 0.5
    try:
        while not stopping:
            if supervisor.poll():
                write_pids()
                recheck = time.monotonic() + 0.5
            if time.monotonic() >= recheck:
                recheck = float("inf")
                # A child recorded before its exec finished has the wrong command line
                # in the file (ipcluster stop would not recognise it): record it again.
                recorded_live = set(check(engines_file).live) - {os.getpid()}
                if recorded_live != set(supervisor.pids()):
                    write_pids()
                    recheck = time.monotonic() + 0.5
            time.sleep(poll_interval)  # polling children: nothing to wait on for several
    finally:
        stop_pids(supervisor.pids(), grace=5)
        if not pid_file:
            cluster_dir.pid_file(SUPERVISOR_PID_FILE).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    """python -m ipython1.cluster.supervisor PROFILE COMMANDS_JSON [PID_FILE]"""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        raise SystemExit("usage: python -m ipython1.cluster.supervisor PROFILE COMMANDS_JSON "
                         "[PID_FILE]")
    commands = [(c[0], list(c[1])) for c in json.loads(args[1])]
    run(args[0], commands, pid_file=args[2] if len(args) == 3 else None)


if __name__ == "__main__":
    main()
