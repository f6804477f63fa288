"""The task farm on the wire: a client's session (``RITaskFarmSession``) and the published farm.

Answers are plain data (``{"status": "ok", "value": ...}`` or an error as
data); observers may only watch (`OBSERVER_ALLOWED`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from ipython1.common import replies
from ipython1.common.errors import (
    KernelError,
    PermissionDenied,
    error_to_wire,
)
from ipython1.common.interfaces import RITaskFarm, RITaskFarmSession
from ipython1.controller.taskfarm import TaskFarm
from ipython1.controller.users import permission_denied
from ipython1.transport import channel as command_channel


def _as_data(failure: Failure) -> dict[str, Any]:
    return {"status": "error", "error": error_to_wire(failure.value)}


def _ok(value: Any) -> dict[str, Any]:
    return {"status": "ok", "value": value}


def _pack(answer: dict[str, Any]) -> dict[str, Any]:
    """Encode result records as one msgpack byte string: Foolscap's per-token
    cost made 20,000 records as nested dicts take ~6 s to send; one string takes
    ms. The records are plain data (msgpack, as the journal keeps them) and each
    value stays the engine's frames: nobody unpickles anything but the client,
    which deserializes the values it asked for."""
    if answer.get("status") == "ok":
        return {"status": "ok", "value": replies.dumps(answer["value"])}
    return answer


# What an observer's task session may do: look, never run, fetch, abort or clear.
OBSERVER_ALLOWED = frozenset({"queue_status", "wait", "spin"})


@implementer(RITaskFarmSession)
class TaskFarmSession(Referenceable):  # type: ignore[misc]
    """One client's connection to the task farm, acting as one user.

    ``parent`` is the user's multi-engine session when the task farm was
    reached through a user's capability (``connect_tasks``): revoking the
    user marks it revoked, and this session refuses everything from then on.
    """

    def __init__(self, farm: TaskFarm, client: str, user: str = "", kind: str = "owner",
                 parent: Any = None) -> None:
        self.farm = farm
        self.client = client
        self.user = user or farm._owner()
        self.kind = kind
        self.parent = parent

    def _denied(self, op: str) -> PermissionDenied | None:
        return permission_denied(
            self.user, self.kind, getattr(self.parent, "revoked", False), op, OBSERVER_ALLOWED,
            "observers can watch the task farm (queue_status) but not run, fetch, abort or "
            "clear tasks")

    def _call(self, method: Callable[..., Any], *args: Any, op: str = "") -> Deferred[Any]:
        denied = self._denied(op or method.__name__)
        if denied is not None:
            # Refused before anything is queued: nothing runs.
            if self.farm.events is not None:
                self.farm.events.publish("denied", self.user, None,
                                         {"op": op or method.__name__, "reason": str(denied)},
                                         self.client)
            return defer.succeed(_as_data(Failure(denied)))
        d = defer.maybeDeferred(method, *args)
        return d.addCallbacks(_ok, _as_data)

    def remote_reserve(self, n: int) -> Deferred[Any]:
        return self._call(self.farm.reserve, n, op="run tasks")

    def remote_submit(self, tasks: list[Any]) -> Deferred[Any]:
        return self._call(self.farm.submit, tasks, self.client, self.user, op="run tasks")

    def remote_get_results_packed(self, tids: list[int], block: bool) -> Deferred[Any]:
        d = self._call(self.farm.get_results, tids, block, op="get_task_result")
        return d.addCallback(_pack)

    def remote_wait(self, tids: list[int], all_: bool, timeout: Any) -> Deferred[Any]:
        return self._call(self.farm.wait, tids, all_, timeout)

    def remote_abort(self, tid: int) -> Deferred[Any]:
        return self._call(self.farm.abort, tid, self.user, op="abort")

    def remote_queue_status(self, verbose: bool) -> Deferred[Any]:
        return self._call(self.farm.queue_status, verbose)

    def remote_clear(self, tids: Any) -> Deferred[Any]:
        if tids is not None and not (isinstance(tids, list) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in tids)):
            return defer.succeed(_as_data(Failure(KernelError(
                "clear() takes a list of task ids or None"))))
        return self._call(self.farm.clear, tids, None if tids is not None else self.client,
                          self.user, op="clear")

    def remote_spin(self) -> Deferred[Any]:
        return self._call(self.farm.spin)

    def remote_open_command_channel(self, host: str) -> dict[str, Any] | None:
        """Offer this session over the local command channel to a client on this host."""
        return command_channel.offer_to_client(
            getattr(self.farm.controller, "command_channels", None), self, host)


@implementer(RITaskFarm)
class TaskFarmReferenceable(Referenceable):  # type: ignore[misc]
    """The client-facing FURL: each client connects and gets a session."""

    _client_ids = itertools.count(1)

    def __init__(self, farm: TaskFarm) -> None:
        self.farm = farm

    def remote_connect(self, info: Any) -> TaskFarmSession:
        # The owner's capability: everything is attributed to the owner.
        owner = self.farm._owner()
        return TaskFarmSession(self.farm, f"{owner}/task-client-{next(self._client_ids)}",
                               owner)
