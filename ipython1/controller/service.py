"""The controller as a Twisted service: its Tub, the adapters it publishes, its FURL files.

``ControllerService`` builds the `Controller` (registry.py), publishes the
engine registration, the multi-engine and task farm adapters, the admin
capability and the users' FURLs, and writes the FURL files once it listens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from foolscap.api import Referenceable
from twisted.application import service
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from ipython1.common import clusterdir as cluster
from ipython1.common import processes, wire
from ipython1.common.interfaces import RIEngineRegistration
from ipython1.common.private import open_private_log
from ipython1.controller import userdir as users
from ipython1.controller.dashboard import Dashboard
from ipython1.controller.events import Transcript
from ipython1.controller.journal import open_journal
from ipython1.controller.monitor import ClusterMonitor
from ipython1.controller.multiengine import MultiEngine
from ipython1.controller.multienginesession import MultiEngineReferenceable
from ipython1.controller.recovered import REJOIN_WAIT
from ipython1.controller.registry import Controller, wait_for_exit_report
from ipython1.controller.relay import Relay
from ipython1.transport import channel as command_channel
from ipython1.transport import tcpchannel

log = Logger()

RELAY_PORT_FILE = "relay-port"  # in the cluster directory: the data relay's last port
COMMAND_PORT_FILE = "command-port"  # the TLS command channel's last port


def _saved_port(path: Path) -> int:
    """Return the port saved in path, or 0 (any) if there is none."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _furl_port(furl_file: Path) -> int:
    """Return the port of the FURL in furl_file, or 0 (any) if there is none."""
    try:
        return int(wire.furl_location(furl_file.read_text().strip()).rsplit(":", 1)[1])
    except (OSError, ValueError, IndexError):
        return 0


class EngineIds:
    """The ids this cluster's controller gave, kept for `ipcontroller --reuse`; and
    those of its engines alive now (``engine-ids.live``), which a restarted
    controller waits for (``RecoveredResults.expect``).

    Both files are lists of ids, one a line, appended to as engines come and
    go (``-ID`` in the live file: that engine ended); each is written whole
    only once per controller. A registration used to rewrite both and rename
    them into place, which ext4 flushes to disk: ~3 ms each under load, on the
    reactor thread, for every one of 512 engines starting at once.
    """

    FILE_NAME = "engine-ids"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: set[int] = set()
        self.live: set[int] = set()
        self.live_path = path.with_name(path.name + ".live")
        self._live_written = False  # the last controller's list stays until a change

    def load_live(self) -> set[int]:
        live: set[int] = set()
        for word in _words(self.live_path):
            (live.discard if word.startswith("-") else live.add)(abs(int(word)))
        return live

    def load(self) -> set[int]:
        self.ids = {int(w) for w in _words(self.path)}
        return set(self.ids)

    def save(self, ids: set[int]) -> None:
        self.ids = set(ids)
        cluster.write_private(self.path, "".join(f"{i}\n" for i in sorted(ids)))

    def on_controller(self, kind: str, data: dict[str, Any]) -> None:
        engine_id = data.get("engine_id")
        if not isinstance(engine_id, int):
            return
        if kind == "engine_registered" and engine_id not in self.ids:
            self.ids.add(engine_id)
            _append(self.path, f"{engine_id}\n")
        if kind == "engine_registered" and engine_id not in self.live:
            self.live.add(engine_id)
            self._live_changed(f"{engine_id}\n")
        elif kind == "engine_died" and engine_id in self.live:
            self.live.discard(engine_id)
            self._live_changed(f"-{engine_id}\n")

    def _live_changed(self, line: str) -> None:
        if self._live_written:
            _append(self.live_path, line)
        else:  # the first change replaces the last controller's list
            self._live_written = True
            cluster.write_private(self.live_path, "".join(f"{i}\n" for i in sorted(self.live)))


def _words(path: Path) -> list[str]:
    """The ids in a file of EngineIds; a torn last line (a crash mid-write) is skipped."""
    try:
        words = path.read_text().split()
    except OSError:
        return []
    return [w for w in words if w.lstrip("-").isdigit()]


def _append(path: Path, line: str) -> None:
    with open_private_log(path) as f:
        f.write(line)


@implementer(RIEngineRegistration)
class EngineRegistration(Referenceable):  # type: ignore[misc]
    """The engine-facing capability: engines call register_engine."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def remote_register_engine(self, engine: Any, info: dict[str, Any]) -> int:
        self.controller.check_versions(
            info, f"engine pid {info.get('pid')} on {info.get('hostname')}")
        return self.controller.register_engine(engine, info)

    def remote_deliver_late(self, engine_id: int, late: Any) -> None:
        self.controller.deliver_late(engine_id, late)

    def remote_report_exit(self, report: Any) -> None:
        self.controller.exit_reported(report)


class ControllerService(service.MultiService):
    """Controller + Tub + FURL files: what `twistd ipcontroller` runs."""

    def __init__(self, cluster_dir: cluster.ClusterDir, ip: str = "127.0.0.1",
                 port: int = 0, reserve_ids: int = 0, location: str | None = None,
                 relay_port: int = 0, command_port: int = 0,
                 dashboard: tuple[str, int] | None = ("127.0.0.1", 0),
                 reuse: bool = False, rejoin_wait: float = REJOIN_WAIT) -> None:
        super().__init__()
        # How long after start-up engines may rejoin with what they were running.
        self.rejoin_wait = rejoin_wait
        self.reuse = reuse
        self._rejoin_window: Any = None
        self.dashboard_address = dashboard  # (ip, port) of the web dashboard, or None
        self.monitor: Any = None
        self.dashboard: Any = None
        self.cluster_dir = cluster_dir.create(tighten=True)
        self.ip = ip
        self.port = port
        self.location = location  # what the FURLs advertise (addresses.advertised)
        self.relay_port = relay_port
        self.command_port = command_port  # the command channel's TLS port (other hosts)
        self.controller = Controller(reserve_ids=reserve_ids)
        self.controller.setServiceParent(self)
        # --reuse (issue 15): the last controller's port and engine ids, so its
        # engines and clients find this one at the same FURLs and rejoin as before.
        self.engine_ids = EngineIds(self.cluster_dir.path / EngineIds.FILE_NAME)
        if reuse:
            self.port = port or _furl_port(self.cluster_dir.furl_file(cluster.ENGINE_FURL))
            self.relay_port = relay_port or _saved_port(self.cluster_dir.path / RELAY_PORT_FILE)
            self.command_port = command_port or _saved_port(
                self.cluster_dir.path / COMMAND_PORT_FILE)
            self.controller.remember_ids(self.engine_ids.load())
            # Until these rejoin, results of the last controller's commands may come.
            self.controller.recovered.expect(self.engine_ids.load_live())
        else:
            self.engine_ids.save(set())
        self.controller.add_observer(self.engine_ids.on_controller)
        self.controller.exit_reports = lambda pid: wait_for_exit_report(self.cluster_dir.pid, pid)
        self.furls: dict[str, str] = {}
        self.adapters: dict[str, Any] = {}
        self.tub: Any = None

    def startService(self) -> None:
        cert = self.cluster_dir.security / cluster.CONTROLLER_CERT
        # The relay first: a busy --relay-port stops start-up before the Tub listens.
        self.controller.relay = relay = Relay(self.ip, self.relay_port)
        self.relay_port = relay.port
        # --reuse listens on it again: firewalls and tunnels keep working after a restart.
        cluster.write_private(self.cluster_dir.path / RELAY_PORT_FILE, f"{relay.port}\n")
        # A transfer with an engine that died fails at once, not after PAIR_TIMEOUT.
        self.controller.add_observer(
            lambda kind, data: relay.engine_lost(data["engine_id"])
            if kind == "engine_died" else None)
        self.tub, self.port = wire.listening_tub(cert, self.ip, self.port, self.location)
        self._start_command_channels(cert)
        self.tub.setServiceParent(self)
        # Only a controller taking over (--reuse) has engines rejoining with results.
        self._rejoin_window = reactor.callLater(self.rejoin_wait if self.reuse else 0,
                                                self.controller.recovered.expire)
        # Listen first, then write the FURL files: whoever sees a file (a
        # script, an engine, a test) can connect at once, never be refused.
        super().startService()
        self.monitor = ClusterMonitor(self)
        self.adapters["mec"] = MultiEngine(self.controller, self)
        self._publish(EngineRegistration(self.controller), cluster.ENGINE_FURL)
        self._publish(MultiEngineReferenceable(self.adapters["mec"]), cluster.MEC_FURL)
        self._publish_users()
        self._publish_extra_adapters()
        processes.write_pid_file(self.cluster_dir.pid_file("ipcontroller"), [os.getpid()])
        log.info("controller listening on {ip}:{port} (data relay on port {relay}); "
                 "FURLs advertise {location}", ip=self.ip, port=self.port,
                 relay=self.relay_port, location=wire.furl_location(self.furls[cluster.MEC_FURL]))
        self._start_monitoring()

    def _start_command_channels(self, cert: Path) -> None:
        """The Unix socket for this host, the TLS port for others (transport.tcpchannel)."""
        if not command_channel.enabled():
            return
        pem, ip, port = cert.read_bytes(), self.ip, self.command_port
        listen_tcp = (lambda server: tcpchannel.TCPListener(server, ip, port, pem)) \
            if tcpchannel.enabled() else None
        if listen_tcp is None and not command_channel.host_key():
            return
        channels = command_channel.CommandChannelServer(self.controller, listen_tcp)
        self.controller.command_channels = channels
        if channels.tcp_port is not None:
            self.command_port = channels.tcp_port
            # --reuse listens on it again, as on the relay's port.
            cluster.write_private(self.cluster_dir.path / COMMAND_PORT_FILE,
                                  f"{self.command_port}\n")

    def _start_monitoring(self) -> None:
        """The status snapshots (ipcluster status) and the web dashboard."""
        self.monitor.start()
        if self.dashboard_address is not None:
            self.dashboard = Dashboard(self, self.monitor, *self.dashboard_address)
            try:
                self.dashboard.start()
            except Exception as e:  # a taken port must not stop the controller
                log.error("no web dashboard: {e}", e=e)
                self.dashboard = None

    def _publish_users(self) -> None:
        """The transcript, the named users' capabilities and the owner's admin FURL."""
        bound = os.environ.get("IPYTHON1_EVENT_BUFFER")  # events per subscriber (tests)
        if bound:
            self.controller.events.max_buffered = int(bound)
        self.controller.events.set_transcript(
            Transcript(users.transcript_path(self.cluster_dir)))
        self.users = users.UserDirectory(self.adapters["mec"], self.tub, self.cluster_dir)
        self.users.load()
        self._publish(users.ControllerAdmin(self.users, self.monitor), users.ADMIN_FURL)

    def _publish_extra_adapters(self) -> None:
        """Publish the optional adapters that are installed (task farm)."""
        try:
            # the task farm is optional: the controller runs without it
            from ipython1.controller.taskfarm import TaskFarm
            from ipython1.controller.tasksession import TaskFarmReferenceable
        except ImportError:
            return
        self.journal = open_journal(self.cluster_dir.path)
        self.adapters["task"] = TaskFarm(self.controller, journal=self.journal,
                                         rejoin_grace=self.rejoin_wait)
        self._publish(TaskFarmReferenceable(self.adapters["task"]), cluster.TASK_FURL)

    def _publish(self, obj: Any, name: str) -> None:
        path = self.cluster_dir.furl_file(name)
        self.furls[name] = wire.publish(self.tub, obj, path)

    def stopService(self) -> Deferred[Any]:
        if self._rejoin_window is not None and self._rejoin_window.active():
            self._rejoin_window.cancel()
        if self.dashboard is not None:
            self.dashboard.stop()
        if self.monitor is not None:
            self.monitor.stop()
        if self.controller.relay is not None:
            self.controller.relay.close()
        if self.controller.command_channels is not None:
            self.controller.command_channels.close()
        d = defer.maybeDeferred(super().stopService)
        if "task" in self.adapters:
            self.adapters["task"].close()

        def cleanup(result: Any) -> Any:
            pid_file = self.cluster_dir.pid_file("ipcontroller")
            if cluster.read_pid(pid_file) == os.getpid():
                Path(pid_file).unlink(missing_ok=True)
            return result

        return d.addBoth(cleanup)

    def shutdown(self) -> None:
        """Stop the whole process (kill(controller=True))."""
        reactor.callLater(0.1, reactor.stop)
