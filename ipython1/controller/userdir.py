"""Named users of one controller: a capability (FURL) each, sessions, revocation.

Each user is a distinct ``MultiEngineReferenceable`` registered on the
controller's Tub with its own swiss number, its FURL written to
``security/users/NAME.furl`` (0600). Everything done through it is attributed
to NAME. The list of users lives in ``security/users.json`` so that a restarted
controller publishes the same FURLs again.

The owner administers users through the admin capability
(``security/ipcontroller-admin.furl``), which ``ipcluster adduser/deluser/users``
use. Removing a user unregisters its Referenceable (the FURL stops
connecting at once), clears its waiting commands, and drops the connections
of its live sessions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foolscap.api import Referenceable
from twisted.internet import error as net_error
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ipython1.common import clusterdir as cluster
from ipython1.common import wire
from ipython1.common.errors import InvalidUserName, KernelError, error_to_wire
from ipython1.common.interfaces import RIControllerAdmin
from ipython1.controller.multienginesession import MultiEngineReferenceable
from ipython1.controller.users import (  # noqa: F401 - re-exported: their old home
    MAX_TRANSCRIPT_EVENTS,
    TRANSCRIPT,
    list_users,
    permission_denied,
    transcript_path,
    transcript_tail,
)

log = Logger()

ADMIN_FURL = cluster.ADMIN_FURL
USERS_FILE = "users.json"
KINDS = ("full", "observer")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def validate_user_name(name: Any) -> str:
    """Return name if it is a valid user name; raise InvalidUserName saying why."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
        raise InvalidUserName(
            f"invalid user name {name!r}: use 1 to 64 letters, digits, '-', '_' or '.'")
    return name



def user_furl_file(cluster_dir: cluster.ClusterDir, name: str) -> Path:
    return cluster_dir.security / "users" / f"{validate_user_name(name)}.furl"



@dataclass
class UserRecord:
    """One named user: kind, capability and open sessions."""

    name: str
    kind: str
    capability: Any = None
    sessions: list[Any] = field(default_factory=list)
    # Rotated since the user last connected: hand them their new FURL file.
    needs_new_furl: bool = False


class UserDirectory:
    """The users of a controller and their live sessions."""

    def __init__(self, adapter: Any, tub: Any, cluster_dir: cluster.ClusterDir) -> None:
        self.adapter = adapter
        self.controller = adapter.controller
        self.tub = tub
        self.cluster_dir = cluster_dir
        self.users: dict[str, UserRecord] = {}
        self.owner_sessions: list[Any] = []
        self.file = cluster_dir.security / USERS_FILE
        adapter.directory = self

    # -- persistence --

    def load(self) -> None:
        """Publish the capabilities of the users saved in users.json."""
        try:
            saved = json.loads(self.file.read_text())
        except FileNotFoundError:
            saved = {}
        except (OSError, ValueError) as e:
            log.error("cannot read {file}: {e}; starting with no users", file=self.file, e=e)
            saved = {}
        for name, entry in sorted(saved.items()):
            try:
                self._publish(validate_user_name(name), entry.get("kind", "full"))
                self.users[name].needs_new_furl = bool(entry.get("needs_new_furl"))
            except KernelError as e:
                log.error("skipping user {name!r} in {file}: {e}", name=name, file=self.file, e=e)

    def _save(self) -> None:
        cluster.write_private(self.file, json.dumps(
            {u.name: {"kind": u.kind, "needs_new_furl": u.needs_new_furl}
             for u in self.users.values()}, indent=1) + "\n")

    def _publish(self, name: str, kind: str) -> Path:
        if kind not in KINDS:
            raise KernelError(f"unknown kind of user {kind!r}: use 'full' or 'observer'")
        path = user_furl_file(self.cluster_dir, name)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        capability = MultiEngineReferenceable(self.adapter, user=name, kind=kind)
        wire.publish(self.tub, capability, path)
        self.users[name] = UserRecord(name, kind, capability)
        return path

    # -- administration --

    def add(self, name: str, observer: bool = False) -> Path:
        """Give name a capability of its own; return its FURL file."""
        validate_user_name(name)
        if name == self.controller.owner:
            raise InvalidUserName(f"{name!r} is the owner of this cluster (who started it); "
                                  "the owner uses the default FURL")
        if name in self.users:
            raise InvalidUserName(f"user {name!r} exists already "
                                  f"({self.users[name].kind}); delete it first to change it")
        kind = "observer" if observer else "full"
        path = self._publish(name, kind)
        self._save()
        self.controller.events.publish("user_added", self.controller.owner, None,
                                       {"name": name, "kind": kind})
        log.info("user {name} added ({kind})", name=name, kind=kind)
        return path

    def remove(self, name: str) -> dict[str, Any]:
        """Revoke name's capability at once: FURL, waiting commands, live connections."""
        validate_user_name(name)
        record = self.users.pop(name, None)
        if record is None:
            known = ", ".join(sorted(self.users)) or "none"
            raise InvalidUserName(f"no user {name!r} (users: {known})")
        # The FURL stops connecting now: the swiss number is forgotten.
        self.tub.unregisterReference(record.capability)
        user_furl_file(self.cluster_dir, name).unlink(missing_ok=True)
        self._save()
        cleared = sum(r.queue.clear(name) for r in self.controller.engines.values())
        farm = getattr(self.adapter.service, "adapters", {}).get("task")
        if farm is not None:
            cleared += farm.revoke(name)  # tasks not started yet fail with TaskAborted
        dropped = 0
        for session in list(record.sessions):
            session.revoked = True
            session.remote_unsubscribe_events()
            if self._disconnect(session):
                dropped += 1
        # The user ran code as the engines' account, which can read every FURL
        # file: none of those FURLs may work for them any more.
        rotated = self.rotate_furls()
        self.controller.events.publish("user_removed", self.controller.owner, None,
                                       {"name": name, "cleared": cleared, "dropped": dropped})
        log.info("user {name} removed: {n} connection(s) dropped, {c} command(s) cleared, "
                 "{r} FURL(s) rotated", name=name, n=dropped, c=cleared, r=len(rotated))
        return {"name": name, "dropped": dropped, "cleared": cleared, "rotated": rotated,
                "new_furls": self.new_furls()}

    def rotate_furls(self) -> list[str]:
        """Give every published FURL a new swiss number; return the rewritten files.

        The old swiss numbers stop connecting at once; live connections
        (engines, sessions of the remaining users) go on. The owner's files
        are rewritten in place; each named user is marked as needing the new
        file (`new_furls`) until they connect with it.
        """
        from foolscap.referenceable import SturdyRef

        rotated = []
        for path in sorted(self.cluster_dir.security.glob("*.furl")):
            try:
                obj = self.tub.nameToReference.get(SturdyRef(path.read_text().strip()).name)
            except (OSError, ValueError):
                continue
            if obj is None:
                continue
            self.tub.unregisterReference(obj)
            path.unlink()  # so that publish picks a new swiss number
            furl = wire.publish(self.tub, obj, path)
            furls = getattr(getattr(self.adapter, "service", None), "furls", None)
            if isinstance(furls, dict) and path.name in furls:
                furls[path.name] = furl
            rotated.append(str(path))
        for record in self.users.values():
            self.tub.unregisterReference(record.capability)
            user_furl_file(self.cluster_dir, record.name).unlink(missing_ok=True)
            sessions = record.sessions
            # A new object: a session opened through it proves the new file arrived.
            rotated.append(str(self._publish(record.name, record.kind)))
            self.users[record.name].sessions = sessions
            self.users[record.name].needs_new_furl = True
        self._save()
        return rotated

    def new_furls(self) -> dict[str, str]:
        """Return the users who must be given their new FURL file, and its path."""
        return {u.name: str(user_furl_file(self.cluster_dir, u.name))
                for u in sorted(self.users.values(), key=lambda u: u.name) if u.needs_new_furl}

    def listing(self) -> list[dict[str, Any]]:
        """Describe the owner and every user: kind, connections, queued commands."""
        counts: dict[str, int] = {}
        for record in self.controller.engines.values():
            status = record.queue.status()
            for user, n in status["per_user"].items():
                counts[user] = counts.get(user, 0) + n
            if status["running"]:
                user = status["running"]["user"]
                counts[user] = counts.get(user, 0) + 1
        owner = self.controller.owner
        rows = [{"name": owner, "kind": "owner", "connected": len(self.owner_sessions),
                 "queued": counts.get(owner, 0)}]
        for u in sorted(self.users.values(), key=lambda u: u.name):
            rows.append({"name": u.name, "kind": u.kind, "connected": len(u.sessions),
                         "queued": counts.get(u.name, 0), "needs_new_furl": u.needs_new_furl})
        return rows

    # -- sessions --

    def _sessions_of(self, session: Any) -> list[Any]:
        if session.kind == "owner":
            return self.owner_sessions
        record = self.users.get(session.user)
        return record.sessions if record is not None else []

    def session_opened(self, session: Any, info: Any, capability: Any = None) -> None:
        """Track a new session: announce it, and watch its connection."""
        self._sessions_of(session).append(session)
        record = self.users.get(session.user) if session.kind != "owner" else None
        if record is not None and record.needs_new_furl and capability is record.capability:
            record.needs_new_furl = False  # they connected with the new FURL
            self._save()
        where = {}
        if isinstance(info, dict):
            where = {k: info[k] for k in ("host", "pid") if isinstance(info.get(k), (str, int))}
        session.where = where  # for status and the dashboard
        self.controller.events.publish("joined", session.user, None,
                                       {"kind": session.kind, **where}, session.client)
        # The session reaches its client in the answer to connect(); find its
        # connection once that answer is on its way.
        reactor.callLater(0, self._watch, session, 20)

    def _watch(self, session: Any, tries: int) -> None:
        broker = self._broker_of(session)
        if broker is not None:
            session._broker = broker
            broker.notifyOnDisconnect(self.session_closed, session)
        elif tries > 0:
            reactor.callLater(0.05, self._watch, session, tries - 1)
        else:
            log.warn("could not find the connection of session {c}", c=session.client)

    def _broker_of(self, obj: Any) -> Any:
        puid = obj.processUniqueID()
        for broker in list(self.tub.brokers.values()):
            if puid in getattr(broker, "myReferenceByPUID", {}):
                return broker
        return None

    def session_closed(self, session: Any) -> None:
        self.controller.debug_clients.pop(session.client, None)
        sessions = self._sessions_of(session)
        if session in sessions:
            sessions.remove(session)
        session.remote_unsubscribe_events()
        closed = getattr(session, "closed", None)
        if closed is not None:
            closed()  # its queued commands and results go with it
        self.controller.events.publish("left", session.user, None, {"kind": session.kind},
                                       session.client)

    def _disconnect(self, session: Any) -> bool:
        broker = getattr(session, "_broker", None) or self._broker_of(session)
        if broker is None:
            return False
        broker.shutdown(Failure(net_error.ConnectionLost("the user's capability was revoked")))
        return True




@implementer(RIControllerAdmin)
class ControllerAdmin(Referenceable):  # type: ignore[misc]
    """The owner's administrative capability: add, remove and list users."""

    def __init__(self, directory: UserDirectory, monitor: Any = None) -> None:
        self.directory = directory
        self.monitor = monitor  # monitor.ClusterMonitor, for status()

    @staticmethod
    def _answer(fn: Any, *args: Any) -> dict[str, Any]:
        try:
            return {"status": "ok", "value": fn(*args)}
        except KernelError as e:
            return {"status": "error", "error": error_to_wire(e)}

    def remote_add_user(self, name: str, observer: bool) -> dict[str, Any]:
        return self._answer(lambda: str(self.directory.add(name, observer)))

    def remote_remove_user(self, name: str) -> dict[str, Any]:
        return self._answer(self.directory.remove, name)

    def remote_users(self) -> dict[str, Any]:
        return self._answer(self.directory.listing)

    def remote_status(self) -> Deferred[dict[str, Any]]:
        """The cluster's status snapshot (ipcluster status), engine figures fresh."""
        monitor = self.monitor
        return monitor.refresh().addCallback(lambda _: self._answer(monitor.snapshot))


def __getattr__(name: str) -> Any:
    """Re-export the client half (admin_call) without the controller importing it."""
    if name == "admin_call":
        from ipython1.client.admin import admin_call

        return admin_call
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
