"""Connecting a client: open a session at a FURL, check versions, reopen it after a restart.

``get_multiengine_client`` and ``get_task_client`` (IPython 0.10's
``asyncclient`` names) fire with an `AsyncMultiEngineClient` or an
`AsyncTaskClient`; ``MultiEngineClient`` and ``TaskClient`` wrap them.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet import defer

from ipython1.client.multiengine import (
    AsyncMultiEngineClient,
    DebuggerObserver,
    _connect_tasks,
    _open_command_channel,
    _task_client,
    client_info,
)
from ipython1.client.reconnect import Reconnector
from ipython1.common import wire
from ipython1.common.clusterdir import MEC_FURL, TASK_FURL
from ipython1.common.errors import KernelError
from ipython1.common.interfaces import RIMultiEngine
from ipython1.common.versions import compare as compare_versions
from ipython1.common.versions import local_versions, refusal
from ipython1.transport import foolscap as foolscap_transport


def warn_about_engine_versions(infos: list[dict[str, Any]]) -> list[str]:
    """Warn (once per difference) when engines run another Python or cloudpickle."""
    import warnings

    mine = local_versions()
    by_message: dict[str, list[int]] = {}
    for info in infos:
        _, problems = compare_versions(mine, info.get("versions"), "this client",
                                       "engine {ids}")
        for problem in problems:
            by_message.setdefault(problem, []).append(info.get("engine_id", -1))
    messages = [m.replace("engine {ids}", "engine(s) " + ", ".join(map(str, ids)))
                for m, ids in by_message.items()]
    for message in messages:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return messages


# What each of the controller's other FURLs is, for the error when one is used
# where a client's is needed.
_NOT_CLIENT_FURLS = {
    "RIEngineRegistration.v1.ipython1": ("the controller's engine FURL "
                                         "(ipcontroller-engine.furl, for ipengine)"),
    "RIControllerAdmin.v1.ipython1": ("the controller's admin FURL "
                                      "(ipcontroller-admin.furl, for ipcluster adduser/deluser)"),
}


def _check_client_furl(root: Any, furl: str) -> None:
    """Refuse a FURL that is not a client's (multi-engine or task farm) with a clear error."""
    name = getattr(getattr(root, "tracker", None), "interfaceName", None)
    if name in _NOT_CLIENT_FURLS:
        raise KernelError(
            f"{wire.furl_location(furl)}: this is {_NOT_CLIENT_FURLS[name]}, not a client's; "
            "use security/ipcontroller-mec.furl, ipcontroller-task.furl or a user's "
            "security/users/NAME.furl")


@defer.inlineCallbacks
def _open_session(furl: str, timeout: float, source: str = "", **extra: Any) -> Any:
    """Connect to a FURL and open a session; fire with (tub, root, session).

    source (wire.furl_source) says, if no controller answers, where the FURL came from.
    """
    tub = wire.client_tub()
    try:
        root = yield wire.get_reference(tub, furl, timeout, source)
        _check_client_furl(root, furl)
        session = yield foolscap_transport.call(
            root, "connect", dict(client_info(), **extra)).addErrback(refusal)
    except Exception:
        tub.stopService()
        raise
    return tub, root, session


@defer.inlineCallbacks
def get_multiengine_client(furl_or_file: Any = None, profile: str = "default",
                           timeout: float = 10.0) -> Any:
    """Connect to a controller; fire with an AsyncMultiEngineClient."""
    furl = wire.resolve_furl(furl_or_file, profile, MEC_FURL)
    debugger = DebuggerObserver()
    token = secrets.token_hex(16)  # the client's name across reconnections (issue 15)
    tub, _, session = yield _open_session(
        furl, timeout, wire.furl_source(furl_or_file, profile, MEC_FURL), debugger=debugger,
        client_token=token)
    channel = yield _open_command_channel(session)
    client = AsyncMultiEngineClient(session, tub, furl, channel, token)
    debugger.client = client
    client.reconnector = Reconnector(
        lambda seconds: _reopen(furl_or_file, profile, MEC_FURL, seconds, client),
        client._reconnected, "the multi-engine client")
    try:
        infos = yield client.engine_info()
    except Exception:  # no engines yet, or an observer: nothing to compare with
        infos = []
    warn_about_engine_versions(infos)
    return client


@defer.inlineCallbacks
def _reopen(furl_or_file: Any, profile: str, default_name: str, timeout: float,
            client: Any = None) -> Any:
    """Open a session again (the FURL file may name a new port); fire with
    (tub, session, channel). A multi-engine client's pdb prompts follow it."""
    furl = wire.resolve_furl(furl_or_file, profile, default_name)
    extra: dict[str, Any] = {}
    if isinstance(client, AsyncMultiEngineClient):
        extra["debugger"] = DebuggerObserver()
        extra["debugger"].client = client
        extra["client_token"] = client.token  # its calls' results follow it (issue 15)
    tub, _, session = yield _open_session(furl, timeout, **extra)
    channel = yield _open_command_channel(session)
    return tub, session, channel


@defer.inlineCallbacks
def get_task_client(furl_or_file: Any = None, profile: str = "default",
                    timeout: float = 10.0) -> Any:
    """Connect to a controller's task farm; fire with an AsyncTaskClient."""
    furl = wire.resolve_furl(furl_or_file, profile, TASK_FURL)
    tub, root, session = yield _open_session(
        furl, timeout, wire.furl_source(furl_or_file, profile, TASK_FURL))
    try:
        parent = None
        if getattr(root.tracker, "interfaceName", "") == RIMultiEngine.__remote_name__:
            # A user's own capability (security/users/NAME.furl): its session
            # opens the task farm as that user.
            parent = session
            session = yield _connect_tasks(parent)
    except Exception:
        tub.stopService()
        raise
    client = yield _task_client(session, tub, furl, parent)
    reopen = _reopen if parent is None else _reopen_as_user  # a user's FURL: its session
    client.reconnector = Reconnector(
        lambda seconds: reopen(furl_or_file, profile, TASK_FURL, seconds),
        client._reconnected, "the task client")
    return client


@defer.inlineCallbacks
def _reopen_as_user(furl_or_file: Any, profile: str, default_name: str,
                    timeout: float) -> Any:
    """Open a task farm session again through a user's FURL (security/users/NAME.furl);
    fire with (tub, session, channel, the user's multi-engine session)."""
    furl = wire.resolve_furl(furl_or_file, profile, default_name)
    tub, _, parent = yield _open_session(furl, timeout)
    try:
        session = yield _connect_tasks(parent)
    except Exception:
        tub.stopService()
        raise
    channel = yield _open_command_channel(session)
    return tub, session, channel, parent
