"""IEngineConnection and ISessionConnection: what every transport implements."""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface


class IEngineConnection(Interface):
    """The controller's link to one engine."""

    local = Attribute("bool: whether queued commands take the command channel")
    name = Attribute('str: what carries queued commands: "foolscap", "channel" (the Unix '
                     'socket) or "tcp-channel" (TLS from another host)')
    tubid = Attribute("str: the engine's Foolscap tub id (checked by the data channel)")

    def call(op: str, args: Any, tag: str | None = None) -> Any:
        """Run a command of the op table on the engine; Deferred with its reply.

        A tag (controller/recovered.py) has the engine keep the reply for a
        restarted controller."""

    def interrupt() -> Any:
        """Stop the engine's running command at once (never queued); Deferred[bool]."""

    def kill() -> Any:
        """End the engine process at once; Deferred."""

    def control(method: str, *args: Any) -> Any:
        """Call the engine outside its queue (open_transfer, subscribe_output...)."""

    def notifyOnDisconnect(callback: Any, *args: Any) -> Any:
        """Call callback(*args) once the engine is gone."""

    def close() -> None:
        """Drop what this connection holds besides Foolscap (a channel)."""


class ISessionConnection(Interface):
    """A client's link to its session with the controller (multi-engine or task farm)."""

    local = Attribute("bool: whether calls that fit msgpack take the command channel")

    def call(method: str, args: Any) -> Any:
        """Call a session method; Deferred with its answer. Calls keep their order."""

    def notifyOnDisconnect(callback: Any, *args: Any) -> Any:
        """Call callback(*args) once the controller is gone."""


class IRegistrationConnection(Interface):
    """An engine's link to the controller's registration capability."""

    def register(engine: Any, info: Any) -> Any:
        """Register engine (its RIEngine) with info; Deferred with its engine id."""

    def deliver_late(engine_id: int, late: Any) -> Any:
        """Hand over what finished while the controller was away (issue 15); Deferred."""

    def report_exit(report: Any) -> Any:
        """Tell how an engine ended (a watcher's or a supervisor's report); Deferred."""

    def notifyOnDisconnect(callback: Any, *args: Any) -> Any:
        """Call callback(*args) once the controller is gone."""
