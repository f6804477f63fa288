"""The data channel's old name: re-exports its modules' names (see ipython1.transport.data).

New code imports from the modules themselves: `ipython1.transport.data.refs`,
`.stream`, `.local`, `.buffers`; `ipython1.controller.relay`,
`ipython1.engine.blobs`, `ipython1.engine.dataserver`,
`ipython1.engine.localdata`, `ipython1.client.transfer`.
"""

from ipython1.client.transfer import TRANSFERS, TicketBook, client_transfer
from ipython1.controller.relay import Relay
from ipython1.engine.blobs import BLOB_TTL, BlobStore
from ipython1.engine.dataserver import engine_transfer
from ipython1.engine.localdata import LocalServer
from ipython1.transport.data.buffers import (
    HUGE_MIN,
    POOL,
    POOL_DEFAULT_MB,
    POOL_ENV,
    POOL_IDLE,
    BufferPool,
    buffer_for,
    join_buffer,
    pool_limit_from_env,
    private_copy,
)
from ipython1.transport.data.local import (
    BOOK_TTL,
    BOOK_USES,
    LOCAL_ENV,
    host_key,
    local_enabled,
)
from ipython1.transport.data.refs import (
    BLOB_MAGIC,
    THRESHOLD,
    DirectUnavailable,
    LocalUnavailable,
    TransferError,
    blob_ref,
    is_large,
    new_blob_id,
    parse_blob_ref,
)
from ipython1.transport.data.stream import (
    PAIR_TIMEOUT,
    client_context,
    server_context,
    tubid_of,
)

__all__ = [
    "BLOB_MAGIC", "BLOB_TTL", "BOOK_TTL", "BOOK_USES", "HUGE_MIN", "LOCAL_ENV", "PAIR_TIMEOUT",
    "POOL", "POOL_DEFAULT_MB", "POOL_ENV", "POOL_IDLE", "THRESHOLD", "TRANSFERS", "BlobStore",
    "BufferPool", "DirectUnavailable", "LocalServer", "LocalUnavailable", "Relay", "TicketBook",
    "TransferError",
    "blob_ref", "buffer_for", "client_context", "client_transfer", "engine_transfer",
    "host_key", "is_large", "join_buffer", "local_enabled", "new_blob_id", "parse_blob_ref",
    "pool_limit_from_env", "private_copy", "server_context", "tubid_of",
]
