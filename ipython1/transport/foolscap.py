"""The Foolscap implementations of the transport interfaces (see `interfaces`)."""

from __future__ import annotations

from typing import Any

from foolscap.referenceable import RemoteReference
from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from ipython1.transport.interfaces import (
    IEngineConnection,
    IRegistrationConnection,
    ISessionConnection,
)


def call(reference: Any, method: str, *args: Any) -> Deferred[Any]:
    """Call method on a Foolscap reference; a failure to send fails the Deferred."""
    return defer.maybeDeferred(reference.callRemote, method, *args)


def is_reference(value: Any) -> bool:
    """Tell whether value is a peer's object we can call (a capability it sent)."""
    return isinstance(value, RemoteReference) or callable(getattr(value, "callRemote", None))


@implementer(IEngineConnection)
class FoolscapEngineConnection:
    """An engine over its Foolscap reference (RIEngine)."""

    local = False
    name = "foolscap"

    def __init__(self, reference: Any) -> None:
        self.reference = reference

    @property
    def tubid(self) -> str:
        return self.reference.getRemoteTubID()  # type: ignore[no-any-return]

    def call(self, op: str, args: Any, tag: str | None = None) -> Deferred[Any]:
        if tag is None:
            return self.reference.callRemote("run", op, list(args))  # type: ignore[no-any-return]
        return self.reference.callRemote("run", op, list(args), tag)  # type: ignore[no-any-return]

    def interrupt(self) -> Deferred[bool]:
        return call(self.reference, "interrupt", None)

    def kill(self) -> Deferred[None]:
        return call(self.reference, "kill")

    def control(self, method: str, *args: Any) -> Deferred[Any]:
        return call(self.reference, method, *args)

    def notifyOnDisconnect(self, callback: Any, *args: Any) -> Any:
        return self.reference.notifyOnDisconnect(callback, *args)

    def close(self) -> None:
        pass


@implementer(ISessionConnection)
class FoolscapSessionConnection:
    """A client's session over its Foolscap reference."""

    local = False

    def __init__(self, reference: Any) -> None:
        self.reference = reference

    def call(self, method: str, args: Any) -> Deferred[Any]:
        return call(self.reference, method, *args)

    def notifyOnDisconnect(self, callback: Any, *args: Any) -> Any:
        return self.reference.notifyOnDisconnect(callback, *args)


@implementer(IRegistrationConnection)
class FoolscapRegistrationConnection:
    """The controller's registration capability (RIEngineRegistration), as an engine holds it."""

    def __init__(self, reference: Any) -> None:
        self.reference = reference

    def register(self, engine: Any, info: Any) -> Deferred[int]:
        return call(self.reference, "register_engine", engine, info)

    def deliver_late(self, engine_id: int, late: Any) -> Deferred[None]:
        return call(self.reference, "deliver_late", engine_id, late)

    def report_exit(self, report: Any) -> Deferred[None]:
        return call(self.reference, "report_exit", report)

    def notifyOnDisconnect(self, callback: Any, *args: Any) -> Any:
        return self.reference.notifyOnDisconnect(callback, *args)
