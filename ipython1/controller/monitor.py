"""The cluster monitor: one snapshot of everything a person watching a cluster wants.

``ipcluster status``, ``ipcluster status --json`` and the web dashboard all read
``ClusterMonitor.snapshot()``: per engine its host, pid, CPU and memory (asked
of the engine itself, so it works for engines on other hosts), state, running
command and for how long, queue length; the task farm's counts; the users and
their connected clients. It also keeps, bounded, a timeline of commands per
engine and a load history (busy engines and queued commands per second), which
the dashboard plots.

Engine CPU and memory are fetched on demand (``refresh``), at most once per
``STATS_INTERVAL``, so an unwatched cluster costs nothing.
"""

from __future__ import annotations

import collections
import os
import socket
import sys
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ipython1 import __version__

log = Logger()

TIMELINE = 5000  # finished commands kept for the timeline plot
LOAD_HISTORY = 600  # load samples kept (one per LOAD_INTERVAL)
LOAD_INTERVAL = 1.0  # s
STATS_INTERVAL = 1.0  # s: engines are asked for CPU/RSS at most this often
STATS_TIMEOUT = 2.0  # s: an engine that does not answer in time shows no figures


class ClusterMonitor:
    """Build status snapshots of a running controller; keep its recent history."""

    def __init__(self, service: Any, clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.service = service
        self.controller = service.controller
        self.started = time.time()
        self.timeline: collections.deque[dict[str, Any]] = collections.deque(maxlen=TIMELINE)
        self.load: collections.deque[dict[str, Any]] = collections.deque(maxlen=LOAD_HISTORY)
        self.stats: dict[int, dict[str, Any]] = {}  # engine id -> its last answer
        self._stats_at = 0.0
        self._refreshing: Deferred[None] | None = None
        self._sampler = task.LoopingCall(self._sample)
        self._sampler.clock = clock
        self.controller.add_observer(self._on_controller)

    def start(self) -> None:
        self._sampler.start(LOAD_INTERVAL, now=True)

    def stop(self) -> None:
        if self._sampler.running:
            self._sampler.stop()
        self.controller.remove_observer(self._on_controller)

    # -- history --

    def _on_controller(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "command_finished":
            command = data["command"]
            reply = data.get("reply")
            failed = isinstance(reply, BaseException) or type(reply).__name__ == "Failure"
            self.timeline.append({
                "engine": data["engine_id"], "op": command.op, "user": command.owner,
                "start": command.started or command.submitted, "end": time.time(),
                "ok": not failed,
            })
        elif kind == "engine_died":
            self.stats.pop(data.get("engine_id"), None)

    def _sample(self) -> None:
        busy = queued = 0
        for record in self.controller.engines.values():
            busy += record.queue.running is not None
            queued += len(record.queue)
        self.load.append({"time": time.time(), "busy": busy, "queued": queued,
                          "engines": len(self.controller.engines)})

    # -- engine figures --

    def refresh(self) -> Deferred[None]:
        """Ask every engine for its CPU and memory, unless that was done just now."""
        if self._refreshing is None:
            if self.clock.seconds() - self._stats_at < STATS_INTERVAL:
                return defer.succeed(None)
            self._refreshing = self._ask_engines()
        d: Deferred[None] = Deferred()
        self._refreshing.addBoth(lambda result: (d.callback(None), result)[1])
        return d

    def _ask_engines(self) -> Deferred[Any]:
        asks = []
        for engine_id in list(self.controller.engines):
            d = self.controller.control(engine_id, "stats")
            d.addTimeout(STATS_TIMEOUT, self.clock)
            d.addCallbacks(self._got_stats, lambda f, i=engine_id: self.stats.pop(i, None),
                           callbackArgs=(engine_id,))
            asks.append(d)

        def done(_: Any) -> None:
            self._stats_at = self.clock.seconds()
            self._refreshing = None

        return defer.DeferredList(asks, consumeErrors=True).addBoth(done)

    def _got_stats(self, stats: Any, engine_id: int) -> None:
        if isinstance(stats, dict):
            self.stats[engine_id] = dict(stats, at=time.time())

    # -- the snapshot --

    def snapshot(self) -> dict[str, Any]:
        """Describe the cluster now (plain data: JSON- and Foolscap-safe)."""
        now = time.time()
        engines = []
        for engine_id in sorted(self.controller.engines):
            record = self.controller.engines[engine_id]
            info = record.info
            running = record.queue.running
            stats = self.stats.get(engine_id, {})
            engines.append({
                "id": engine_id,
                "host": str(info.get("hostname", "")),
                "pid": info.get("pid"),
                "mpi_rank": info.get("mpi_rank"),
                "state": "busy" if running is not None else "idle",
                "running": _describe(running, now),
                "queued": len(record.queue),
                "cpu": stats.get("cpu"),
                "rss": stats.get("rss"),
                "transport": record.connection.name,
                "python": info.get("python"),
                "ipython1": info.get("ipython1"),
            })
        return {
            "time": now,
            "controller": {
                "pid": os.getpid(), "host": socket.gethostname(),
                "uptime": now - self.started, "ipython1": __version__,
                "python": sys.version.split()[0],
                "profile": self.service.cluster_dir.profile,
                "cluster_dir": str(self.service.cluster_dir.path),
                "versions": dict(self.controller.versions),
                # --data-encryption: how large values go between hosts (sealed, tls, off)
                "data_encryption": self.controller.data_encryption,
                "ports": {"foolscap": getattr(self.service, "port", None),
                          "relay": getattr(self.service, "relay_port", None),
                          "commands": getattr(self.service, "command_port", None),
                          "dashboard": getattr(getattr(self.service, "dashboard", None),
                                               "port", None)},
            },
            "engines": engines,
            "tasks": self._tasks(),
            "users": self._users(),
        }

    def _tasks(self) -> dict[str, Any] | None:
        farm = self.service.adapters.get("task")
        if farm is None:
            return None
        status = farm.queue_status()
        running = status["running"]
        per_engine = collections.Counter(
            t["engine"] for t in self.timeline if t["op"] == "run_tasks" and t["ok"])
        return {"queued": status["pending"], "running": sum(running.values()),
                "done": status["succeeded"], "failed": status["failed"],
                "running_per_engine": {str(e): n for e, n in running.items()},
                "batches_per_engine": {str(e): n for e, n in per_engine.items()}}

    def _users(self) -> list[dict[str, Any]]:
        directory = getattr(self.service, "users", None)
        if directory is None:
            return []
        rows = directory.listing()
        sessions = {"": directory.owner_sessions}
        sessions.update({u.name: u.sessions for u in directory.users.values()})
        for row in rows:
            key = "" if row["kind"] == "owner" else row["name"]
            row["clients"] = [
                dict(getattr(s, "where", {}), client=s.client) for s in sessions.get(key, [])]
        return rows


def _describe(command: Any, now: float) -> dict[str, Any] | None:
    if command is None:
        return None
    started = command.started or command.submitted
    return {"op": command.op, "user": command.owner, "description": command.description,
            "since": started, "elapsed": max(0.0, now - started)}


def format_snapshot(snap: dict[str, Any]) -> str:
    """Render a snapshot as the text of ``ipcluster status``."""
    c = snap["controller"]
    engines = snap["engines"]
    lines = [f"controller: pid {c['pid']} on {c['host']}, up {_duration(c['uptime'])}, "
             f"{len(engines)} engine(s), ipython1 {c['ipython1']}, {c['cluster_dir']}"]
    if engines:
        lines.append(f"  {'id':>4} {'host':<16} {'pid':>7} {'state':<5} {'cpu%':>5} "
                     f"{'rss':>8} {'queue':>5}  running")
    for e in engines:
        cpu = "-" if e["cpu"] is None else f"{e['cpu']:.0f}"
        rss = "-" if e["rss"] is None else _bytes(e["rss"])
        run = e["running"]
        what = "" if run is None else (
            f"{run['op']} {run['description'][:40]!r} by {run['user']} "
            f"for {_duration(run['elapsed'])}")
        ident = str(e["id"]) if e["mpi_rank"] is None else f"{e['id']}/r{e['mpi_rank']}"
        lines.append(f"  {ident:>4} {e['host'][:16]:<16} {e['pid'] or '-':>7} {e['state']:<5} "
                     f"{cpu:>5} {rss:>8} {e['queued']:>5}  {what}")
    t = snap["tasks"]
    if t is not None:
        lines.append(f"tasks: {t['queued']} queued, {t['running']} running, "
                     f"{t['done']} done, {t['failed']} failed")
    for u in snap["users"]:
        clients = ", ".join(
            f"{x['client']}" + (f" ({x['host']}, pid {x['pid']})" if "host" in x else "")
            for x in u["clients"]) or "no clients"
        lines.append(f"user {u['name']} [{u['kind']}]: {u['queued']} queued; {clients}")
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}GiB"
