"""One interface per link, two implementations each (Foolscap and the command channel).

Above this package nothing calls ``callRemote`` for an engine command or a
session call, and nothing knows which transport carries it: the controller's
engine record holds one `IEngineConnection` (swapped when the engine's command
channel attaches or closes), a client holds one `ISessionConnection`, an
engine one `IRegistrationConnection` to the controller that registered it.
"""

from ipython1.transport.interfaces import (
    IEngineConnection,
    IRegistrationConnection,
    ISessionConnection,
)

__all__ = ["IEngineConnection", "IRegistrationConnection", "ISessionConnection"]
