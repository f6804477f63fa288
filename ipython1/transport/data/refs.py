"""A large value's stand-in on the command path (a blob reference), and transfer errors.

A value of at least `THRESHOLD` bytes travels beside the command that uses
it; the command carries a *blob reference* (frames ``[BLOB_MAGIC, id,
sizes]``) instead, so the per-engine queue keeps its order.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Sequence

from ipython1.common.errors import KernelError

THRESHOLD = 256 * 2**10  # values at least this large take the data channel
BLOB_MAGIC = b"IPB1"
MAX_FRAMES = 1_000_000


class TransferError(KernelError):
    """A bulk transfer failed (peer vanished, wrong certificate, bad secret)."""


class LocalUnavailable(TransferError):
    """The engine's local socket cannot be reached from here: use the relay."""


class DirectUnavailable(TransferError):
    """The engine's data port cannot be reached from here: use the relay."""


def blob_ref(blob_id: bytes, sizes: Sequence[int]) -> list[bytes]:
    """Return the frames that stand for a blob held by an engine."""
    return [BLOB_MAGIC, blob_id, struct.pack(f"<{len(sizes)}Q", *sizes)]


def parse_blob_ref(frames: Sequence[bytes]) -> tuple[bytes, list[int]] | None:
    """Return (blob id, frame sizes) if frames are a blob reference, else None."""
    if len(frames) != 3 or frames[0] != BLOB_MAGIC:
        return None
    sizes = frames[2]
    return bytes(frames[1]), list(struct.unpack(f"<{len(sizes) // 8}Q", sizes))


def is_large(frames: Sequence[bytes]) -> bool:
    return sum(len(f) for f in frames) >= THRESHOLD


def new_blob_id() -> bytes:
    return secrets.token_bytes(16)

