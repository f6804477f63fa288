"""The engine's end of a transfer over TCP: through the controller's relay."""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Sequence

from ipython1.engine.blobs import BlobStore
from ipython1.transport.data.refs import TransferError
from ipython1.transport.data.stream import PAIR_TIMEOUT, connect, recv_exact, recv_frame


def engine_transfer(context: ssl.SSLContext, relay: str, pairing_id: bytes, secret: bytes,
                    direction: str, blob_id: bytes, sizes: Sequence[int],
                    store: BlobStore) -> None:
    """Serve one transfer on the engine (blocking; run on a worker thread)."""
    with connect(relay, PAIR_TIMEOUT) as raw:
        raw.sendall(pairing_id)
        with context.wrap_socket(raw, server_side=True) as tls:
            if not secrets.compare_digest(bytes(recv_exact(tls, len(secret))), secret):
                raise TransferError("wrong transfer secret")
            if direction == "upload":
                frames = [recv_frame(tls, size) for size in sizes]
                store.put(blob_id, frames)
                tls.sendall(b"K")
            elif direction == "download":
                with store.lend(blob_id) as frames:
                    for frame in frames:
                        tls.sendall(frame)
                recv_exact(tls, 1)
            else:
                raise TransferError(f"unknown direction {direction!r}")

