"""The command channel's old name: it lives in ipython1.transport.channel now."""

from ipython1.transport.channel import (  # noqa: F401 - re-exported for older imports
    ENV,
    SESSION_FOOLSCAP_ONLY,
    SYNC,
    ChannelEngineConnection,
    ChannelSessionConnection,
    ClientEnd,
    CommandChannelServer,
    ControllerEnd,
    EngineChannel,
    SessionCalls,
    answer_frame,
    connect_client,
    enabled,
    host_key,
    offer_to_client,
    session_connection,
    valid_engine_offer,
)
from ipython1.transport.framing import MAX_FRAME  # noqa: F401
