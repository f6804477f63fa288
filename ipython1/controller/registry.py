"""The controller: a registry of engines with one command queue per engine.

It never runs user code and never unpickles values: it relays frames between
clients and engines. Adapters (multi-engine, task farm) are built on
``Controller.submit`` and published each at its own FURL by
``ControllerService``.
"""

from __future__ import annotations

import getpass
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foolscap.api import DeadReferenceError
from twisted.application import service
from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from ipython1.cluster.supervisor import read_exit_report
from ipython1.common import versions, wire
from ipython1.common.errors import (
    EngineError,
    InvalidEngineID,
    NoEnginesRegistered,
    VersionMismatch,
)
from ipython1.common.interfaces import IEngineRegistry
from ipython1.controller.events import EventBus
from ipython1.controller.output import OutputReceiver
from ipython1.controller.queue import Command, EngineQueue, user_of
from ipython1.controller.recovered import RecoveredResults
from ipython1.transport import channel as command_channel
from ipython1.transport import foolscap as foolscap_transport
from ipython1.transport.foolscap import FoolscapEngineConnection
from ipython1.transport.interfaces import IEngineConnection

log = Logger()


@dataclass
class EngineRecord:
    """A registered engine: its id, connection, queue and properties."""

    id: int
    # Foolscap's, swapped for the command channel's while the engine's channel is open.
    connection: IEngineConnection
    queue: EngineQueue
    info: dict[str, Any] = field(default_factory=dict)
    # set_properties() (IPython 0.10): plain data kept here, where property depends run
    properties: dict[str, Any] = field(default_factory=dict)


MAX_ENGINE_ID = 2**31 - 1


def _rank(record: EngineRecord) -> str:
    """Describe an engine's MPI rank for messages ('' for a non-MPI engine)."""
    if "mpi_rank" not in record.info:
        return ""
    return f" (MPI rank {record.info['mpi_rank']} of {record.info.get('mpi_size', '?')})"


def parse_targets(targets: Any, registered: list[int]) -> list[int]:
    """Turn 'all', an int or a list of ints into engine ids; validate them."""
    if not registered:
        raise NoEnginesRegistered("no engines are registered with the controller")
    if targets is None or targets == "all":
        return sorted(registered)
    if isinstance(targets, bool):
        raise InvalidEngineID(f"invalid targets {targets!r}")
    if isinstance(targets, int):
        ids = [targets]
    elif isinstance(targets, (list, tuple)) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in targets
    ):
        ids = list(targets)
    else:
        raise InvalidEngineID(f"invalid targets {targets!r}: use 'all', an int or a list of ints")
    known = set(registered)
    unknown = [t for t in ids if t not in known]
    if unknown:
        raise InvalidEngineID(
            f"no engine with id {unknown[0]} (registered: {sorted(registered)})"
        )
    if not ids:
        raise InvalidEngineID("targets is an empty list")
    return ids


@implementer(IEngineRegistry)
class Controller(service.MultiService):
    """Keep the engines and their queues; the adapters' common core."""

    def __init__(self, reserve_ids: int = 0) -> None:
        super().__init__()
        self.engines: dict[int, EngineRecord] = {}
        self._next_id = 0
        self._observers: list[Callable[[str, dict[str, Any]], None]] = []
        # Who started the cluster: the owner's FURL acts as this user.
        self.owner = _login_name()
        self.events = EventBus()  # the shared, attributed view of everything (issue 8)
        self.add_observer(self.events.on_controller)
        self.relay: Any = None  # controller.relay.Relay, set by ControllerService
        # --data-encryption: how direct transfers go between hosts ("sealed": AES-GCM
        # frames after a TLS handshake, "tls": TLS records, "off": unencrypted, HMAC'd).
        self.data_encryption = "sealed"
        # Engines on this host take their queued commands over it (see transport.channel).
        self.command_channels: command_channel.CommandChannelServer | None = None
        # Ids below reserve_ids are given only to engines that ask for them
        # (MPI ranks under `ipcluster start --mpi`); no id is ever given twice.
        self.reserve_ids = reserve_ids
        self._used_ids: set[int] = set()
        self._broken_mpi_jobs: dict[str, str] = {}  # job -> the engine it lost first
        # pid -> Deferred[report or None]: a supervised engine's end (ControllerService)
        self.exit_reports: Callable[[Any], Deferred[dict[str, Any] | None]] | None = None
        self._dying: dict[int, list[Callable[[], None]]] = {}  # engines awaiting a report
        self.versions = versions.local_versions()
        self.debug_clients: dict[str, Any] = {}  # client name -> its debugger observer
        # Clients not reading their replies: their queued commands wait (backpressure).
        self.held_clients: set[str] = set()
        # The last controller's commands, as the rejoining engines keep them (issue 15);
        # ControllerService ends its window after --rejoin-wait.
        self.recovered = RecoveredResults()
        self._reports: dict[tuple[str, Any], dict[str, Any]] = {}  # came before the death
        self._report_waiters: dict[tuple[str, Any], list[Deferred[Any]]] = {}

    # -- registry --

    def register_engine(self, engine: Any, info: dict[str, Any]) -> int:
        """Add an engine; return its id, which it keeps for its life."""
        info = dict(info)
        late_tasks = info.pop("late_tasks", None)  # a rejoining engine's (issue 15)
        # Replies it sent the last controller just before the loss: maybe not journaled.
        recent = info.pop("recent_tasks", None)
        late_tasks = [*(recent if isinstance(recent, list) else []),
                      *(late_tasks if isinstance(late_tasks, list) else [])] or None
        done_tasks = info.pop("done_tasks", None)
        kept, running = info.pop("kept_results", None), info.pop("running_command", None)
        direct = info.get("direct_data")
        if isinstance(direct, dict):  # clients reach its data port where we reach the engine
            info["direct_data"] = dict(direct, host=wire.peer_host(engine),
                                       encryption=self.data_encryption)
        engine_id = self._assign_id(info.get("requested_id"), bool(info.get("rejoin")))
        self.recovered.rejoined(engine_id, kept, running)
        if "mpi_rank" in info:
            # A rank blocked in a GIL-holding collective cannot answer pings.
            wire.relax_disconnect_timeout(engine)

        def send(command: Command) -> Deferred[Any]:
            self._notify("command_started", {"engine_id": engine_id, "command": command})
            tag = (command.tag,) if command.tag else ()
            d = record.connection.call(command.op, command.args, *tag)

            def finished(reply: Any) -> Any:
                self._notify("command_finished",
                             {"engine_id": engine_id, "command": command, "reply": reply})
                return reply

            d.addBoth(finished)
            return d.addErrback(self._call_failed, engine_id)

        connection = FoolscapEngineConnection(engine)
        record = EngineRecord(engine_id, connection, EngineQueue(engine_id, send), dict(info))
        record.queue.held = lambda command: command.client in self.held_clients
        self.engines[engine_id] = record
        connection.notifyOnDisconnect(self._engine_lost, engine_id)
        channels = self.command_channels
        tcp = channels.offer_for(info.get("host_key")) if channels is not None else None
        if tcp is not None:  # the Unix socket on this host, else TLS (transport.tcpchannel)
            d = connection.control("open_command_channel", engine_id,
                                   channels.offer(engine_id, tcp=tcp))
            d.addErrback(lambda f: None)  # Foolscap carries its commands instead
        # Live stdout/stderr: the engine sends it to this receiver as it is written.
        d = connection.control("subscribe_output", OutputReceiver(
            engine_id, self._engine_output, self._engine_debugger))
        d.addErrback(lambda f: None)  # an engine without live output still works
        log.info("engine {id} registered: {info}", id=engine_id, info=info)
        self._notify("engine_registered", {"engine_id": engine_id, "info": dict(info),
                                           "late_tasks": late_tasks, "done_tasks": done_tasks})
        return engine_id

    def deliver_late(self, engine_id: int, late: Any) -> None:
        """Pass on what ended on an engine while the controller was away: task
        replies to the task farm, other commands as a finished_while_away event."""
        if engine_id not in self.engines or not isinstance(late, dict):
            return
        self.recovered.finished(engine_id, late.get("results"))
        if isinstance(late.get("tasks"), list) and late["tasks"]:
            self._notify("late_replies", {"engine_id": engine_id, "late_tasks": late["tasks"]})
        if isinstance(late.get("finished"), list) and late["finished"]:
            self.events.publish("finished_while_away", engine=engine_id,
                                data={"commands": late["finished"][:100]})

    def remember_ids(self, ids: set[int]) -> None:
        """Keep ids given by an earlier controller for the engines that rejoin."""
        self._used_ids |= ids
        self._next_id = max([self._next_id, *(i + 1 for i in ids)])

    def check_versions(self, info: Any, who: str) -> None:
        """Refuse a peer speaking another protocol; log and publish other differences."""
        theirs = info.get("versions") if isinstance(info, dict) else None
        errors, warnings = versions.compare(self.versions, theirs, "the controller", who)
        if errors:
            log.error("refused {who}: {why}", who=who, why=errors[0])
            raise VersionMismatch(errors[0])
        for warning in warnings:
            log.warn("{w}", w=warning)
            self.events.publish("version_warning", data={"message": warning})

    def _call_failed(self, failure: Any, engine_id: int) -> Any:
        """A lost connection fails the call before notifyOnDisconnect fires:
        mark the engine dead now, so its commands fail with the full reason."""
        if failure.check(DeadReferenceError):
            self._engine_lost(engine_id)
            hold = self._dying.get(engine_id)
            if hold is not None:  # its commands fail with how it ended, in a moment
                d: Deferred[Any] = Deferred()
                hold.append(lambda: d.errback(failure))
                return d
        return failure

    def _assign_id(self, requested: Any, rejoin: bool = False) -> int:
        """Give the requested id if no engine ever had it, else the next free one.

        An engine that rejoins (its controller restarted, or a supervisor
        replaced it) gets its old id back unless a live engine holds it.
        Registration runs on the reactor thread, so checking and taking an id
        is atomic: two engines asking for the same id get different ones.
        """
        if (isinstance(requested, int) and not isinstance(requested, bool)
                and 0 <= requested < MAX_ENGINE_ID and requested not in self.engines
                and (rejoin or requested not in self._used_ids)):
            engine_id = requested
        else:
            engine_id = max(self._next_id, self.reserve_ids)
            while engine_id in self._used_ids:
                engine_id += 1
            self._next_id = engine_id + 1
            if requested is not None:
                log.warn("engine asked for id {req!r}, which is taken or invalid; "
                         "it gets id {id}", req=requested, id=engine_id)
        self._used_ids.add(engine_id)
        return engine_id

    def _engine_lost(self, engine_id: int, reason: str | None = None) -> None:
        record = self.engines.pop(engine_id, None)
        if record is None:
            return
        job = record.info.get("mpi_job")
        if reason is None and job in self._broken_mpi_jobs:
            reason = (f"engine {engine_id}{_rank(record)} died: its MPI job {job} lost "
                      f"{self._broken_mpi_jobs[job]} first")
        death = {k: record.info[v] for k, v in (("host", "hostname"), ("pid", "pid"))
                 if v in record.info}
        where = (f" on {death['host']}, pid {death['pid']}"
                 if {"host", "pid"} <= set(death) else "")
        reason = reason or f"engine {engine_id}{_rank(record)}{where} died (connection lost)"
        log.info("{reason}", reason=reason)
        record.connection.close()
        if record.info.get("supervised") and self.exit_reports is not None or \
                record.info.get("watched"):
            # Its supervisor tells how it ended (signal, code, stderr) in a moment.
            self._dying[engine_id] = hold = []

            def report_came(report: dict[str, Any] | None) -> None:
                record.queue.engine_died(*with_exit_report(reason, death, report))
                if self._dying.get(engine_id) is hold:
                    del self._dying[engine_id]
                for release in hold:
                    release()

            self._exit_report(death.get("host"), death.get("pid")).addCallback(report_came)
        else:
            record.queue.engine_died(reason, death)
        self.recovered.lost(engine_id)
        self._notify("engine_died", {"engine_id": engine_id})
        self._mpi_job_lost(record)

    def exit_reported(self, report: Any) -> None:
        """Take a report of an engine's end from its watcher (ipengine --watch) or its
        supervisor, over the engine FURL: {pid, host, exit, stderr}."""
        if not isinstance(report, dict):
            return
        report = {k: str(report.get(k, ""))[:20_000] for k in ("host", "exit", "stderr")} | {
            "pid": report.get("pid")}
        key = (report["host"], report["pid"])
        waiters = [d for d in self._report_waiters.pop(key, []) if not d.called]
        for d in waiters:
            d.callback(report)
        if not waiters:  # before the controller noticed the engine's end
            self._reports[key] = report
            while len(self._reports) > MAX_EXIT_REPORTS:
                self._reports.pop(next(iter(self._reports)))

    def _exit_report(self, host: Any, pid: Any) -> Deferred[dict[str, Any] | None]:
        """Fire with the report of an engine's end (over Foolscap, or the local
        supervisor's file), or None after EXIT_REPORT_WAIT."""
        key = (str(host), pid)
        if key in self._reports:
            return defer.succeed(self._reports.pop(key))
        d: Deferred[dict[str, Any] | None] = Deferred()
        self._report_waiters.setdefault(key, []).append(d)

        def offer(report: dict[str, Any] | None) -> None:
            if report and not d.called:
                d.callback(report)

        if self.exit_reports is not None:  # the local supervisor writes a file
            self.exit_reports(pid).addCallback(offer)

        def give_up() -> None:
            waiting = self._report_waiters.get(key, [])
            if d in waiting:
                waiting.remove(d)
            if not waiting:
                self._report_waiters.pop(key, None)
            if not d.called:
                d.callback(None)

        reactor.callLater(EXIT_REPORT_WAIT, give_up)
        return d

    def _mpi_job_lost(self, record: EngineRecord) -> None:
        """End the other engines of a dead engine's MPI job, as MPI itself would.

        Without every rank the job's communicators are broken; the launcher
        usually kills the job already, and this makes each of its engines
        fail with an EngineError that says why, whatever the MPI.
        """
        job = record.info.get("mpi_job")
        if not job or job in self._broken_mpi_jobs:
            return
        self._broken_mpi_jobs[job] = f"engine {record.id}{_rank(record)}"
        peers = [r for r in self.engines.values() if r.info.get("mpi_job") == job]
        if peers:
            log.warn("MPI job {job} lost engine {id}{rank}: ending its other engines {peers}",
                     job=job, id=record.id, rank=_rank(record), peers=[p.id for p in peers])
        for peer in peers:
            d = peer.connection.kill()
            d.addErrback(lambda f: None)  # it may be gone already
            self._engine_lost(peer.id, (
                f"engine {peer.id}{_rank(peer)} was ended: its MPI job {job} lost "
                f"engine {record.id}{_rank(record)}"))

    def _engine_output(self, engine_id: int, chunks: list[list[str]]) -> Deferred[None]:
        """Pass live output on to observers, labelled with the running command.

        Fires when the observers have it (at most OUTPUT_ACK_TIMEOUT s): the
        engine waits for this before it replies, so a command's output reaches
        its client before its result.
        """
        record = self.engines.get(engine_id)
        running = record.queue.running if record is not None else None
        results = self._notify("output", {
            "engine_id": engine_id, "chunks": chunks,
            "client": running.client if running else "",
            "command_id": running.id if running else None,
            "call": running.call if running else 0,
        })
        return _first_of(defer.DeferredList(
            [r for r in results if isinstance(r, Deferred)], consumeErrors=True),
            OUTPUT_ACK_TIMEOUT)

    def wait_registered(self, ids: list[int], timeout: float) -> Deferred[None]:
        """Fire once each of ids has registered again (restart), or fail at timeout."""
        waiting = set(ids)
        done: Deferred[None] = Deferred()

        def observe(kind: str, data: dict[str, Any]) -> None:
            if kind == "engine_registered":
                waiting.discard(data.get("engine_id"))
                if not waiting and not done.called:
                    self.remove_observer(observe)
                    expiry.cancel()
                    done.callback(None)

        def expire() -> None:
            self.remove_observer(observe)
            done.errback(EngineError(min(waiting), f"engine(s) {sorted(waiting)} did not "
                                                   f"come back within {timeout:g} s"))

        self.add_observer(observe)
        expiry = reactor.callLater(timeout, expire)
        return done

    def unregister_engine(self, engine_id: int) -> None:
        """Forget an engine as though it died (e.g. after kill)."""
        self._engine_lost(engine_id)

    def ids(self) -> list[int]:
        return sorted(self.engines)

    def targets(self, targets: Any) -> list[int]:
        return parse_targets(targets, list(self.engines))

    # -- observers (task farm, sessions, event streams) --

    def add_observer(self, observer: Callable[[str, dict[str, Any]], None]) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: Callable[[str, dict[str, Any]], None]) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def _notify(self, kind: str, data: dict[str, Any]) -> list[Any]:
        results = []
        for observer in list(self._observers):
            try:
                results.append(observer(kind, data))
            except Exception:
                log.failure("observer {o} failed", o=observer)
        return results

    # -- commands --

    def submit(self, engine_id: int, command: Command) -> Deferred[Any]:
        """Queue a command on one engine; fires with the engine's reply dict."""
        record = self.engines.get(engine_id)
        if record is None:
            return defer.fail(InvalidEngineID(f"no engine with id {engine_id}"))
        return record.queue.submit(command)

    def call_now(self, engine_id: int, op: str) -> Deferred[Any]:
        """Call an engine directly, bypassing its queue: "interrupt", "kill" or "restart"."""
        record = self.engines.get(engine_id)
        if record is None:
            return defer.fail(InvalidEngineID(f"no engine with id {engine_id}"))
        if op == "interrupt":
            return record.connection.interrupt()
        if op == "restart":
            return record.connection.control("restart")
        return record.connection.kill()

    def _engine_debugger(self, engine_id: int, text: str) -> bool:
        """Hand an engine's pdb prompt to the client whose command is running there."""
        record = self.engines.get(engine_id)
        command = record.queue.running if record is not None else None
        observer = self.debug_clients.get(command.client) if command is not None else None
        if observer is None:
            return False
        self.events.publish("debugger", command.owner, engine_id,
                            {"op": command.op, "text": text[-2000:]}, command.client)
        d = foolscap_transport.call(observer, "debugger_waiting", engine_id, text)
        d.addErrback(lambda f: None)  # a client gone: interrupt ends the debugger
        return True

    def debugger_owner(self, engine_id: int) -> Any:
        """Return the running command of an engine (its client owns the debugger)."""
        record = self.engines.get(engine_id)
        return record.queue.running if record is not None else None

    def control(self, engine_id: int, method: str, *args: Any) -> Deferred[Any]:
        """Ask an engine something it answers off its queue (stats, logs, debugger input)."""
        record = self.engines.get(engine_id)
        if record is None:
            return defer.fail(InvalidEngineID(f"no engine with id {engine_id}"))
        return record.connection.control(method, *args)

    def queue_status(self, ids: list[int]) -> list[dict[str, Any]]:
        statuses = []
        for i in ids:
            if i in self.engines:
                status = self.engines[i].queue.status()
                if "mpi_rank" in self.engines[i].info:
                    status["mpi_rank"] = self.engines[i].info["mpi_rank"]
                statuses.append(status)
        return statuses

    def engine_info(self, ids: list[int]) -> list[dict[str, Any]]:
        """Return what each engine said of itself at registration (pid, MPI rank...),
        whether its commands take a command channel, and which one
        (command_transport: "channel", "tcp-channel" or "foolscap")."""
        return [dict(self.engines[i].info, engine_id=i,
                     command_channel=self.engines[i].connection.local,
                     command_transport=self.engines[i].connection.name)
                for i in ids if i in self.engines]

    def clear_queue(self, ids: list[int], client: str | None = None) -> list[dict[str, Any]]:
        """Drop waiting commands: all of them for the owner, else only client's user's."""
        user = user_of(client) if client else None
        only = None if user is None or user == self.owner else user
        cleared = [
            {"engine_id": i, "cleared": self.engines[i].queue.clear(only)}
            for i in ids if i in self.engines
        ]
        self.events.publish("cleared", user or "", data={
            "targets": ids, "counts": {str(c["engine_id"]): c["cleared"] for c in cleared},
            "scope": "all users" if only is None else "own commands"}, client=client or "")
        return cleared


def _login_name() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "owner"


OUTPUT_ACK_TIMEOUT = 2.0  # seconds a command's reply may wait for its output to be delivered


def _first_of(d: Deferred[Any], timeout: float, clock: Any = None) -> Deferred[None]:
    """Fire with None when d fires or timeout passes, whichever is first (d goes on)."""
    done: Deferred[None] = Deferred()
    clock = clock or reactor
    call = clock.callLater(timeout, lambda: done.called or done.callback(None))

    def fired(_: Any) -> None:
        if call.active():
            call.cancel()
        if not done.called:
            done.callback(None)

    d.addBoth(fired)
    return done


EXIT_REPORT_WAIT = 2.0  # seconds a supervised engine's commands wait for how it ended
MAX_EXIT_REPORTS = 1000  # reports kept that came before their engine's end was noticed


def with_exit_report(reason: str, death: dict[str, Any],
                     report: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """Add what the supervisor saw (exit, stderr) to an engine's death."""
    if not report:
        return reason, death
    death = dict(death, exit=report.get("exit"), stderr=report.get("stderr") or "")
    reason = reason.replace("(connection lost)", f"({death['exit']})")
    if death["stderr"]:
        reason += "; the last lines of its stderr:\n" + death["stderr"]
    return reason, death


def wait_for_exit_report(pid_dir: Path, pid: Any, timeout: float = EXIT_REPORT_WAIT,
                         interval: float = 0.05) -> Deferred[dict[str, Any] | None]:
    """Fire with the supervisor's report of pid's end, or None after timeout."""
    deadline = reactor.seconds() + timeout

    def look() -> Any:
        report = read_exit_report(pid_dir, pid)
        if report is not None or reactor.seconds() > deadline:
            return report
        return task.deferLater(reactor, interval, look)

    return defer.maybeDeferred(look)


# What this module held before the controller was split (its old name is
# ipython1.kernel.controller).
_MOVED_OUT = {"ControllerService": "service", "EngineRegistration": "service",
              "EngineIds": "service", "RELAY_PORT_FILE": "service"}


def __getattr__(name: str) -> Any:
    """Re-export the service's names, imported only when asked for (it imports this)."""
    if name in _MOVED_OUT:
        return getattr(importlib.import_module(f"ipython1.controller.{_MOVED_OUT[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
