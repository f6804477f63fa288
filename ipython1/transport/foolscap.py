"""The Foolscap implementations of IEngineConnection and ISessionConnection."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from ipython1.transport.interfaces import IEngineConnection, ISessionConnection


def call(reference: Any, method: str, *args: Any) -> Deferred[Any]:
    """Call method on a Foolscap reference; a failure to send fails the Deferred."""
    return defer.maybeDeferred(reference.callRemote, method, *args)


@implementer(IEngineConnection)
class FoolscapEngineConnection:
    """An engine over its Foolscap reference (RIEngine)."""

    local = False

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
