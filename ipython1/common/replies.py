"""Engine replies travel as msgpack bytes that the controller relays as they are.

Foolscap encodes a dict token by token, and every str is a container of its
own: the two-level reply of a no-op execute is ~40 tokens, which costs more
CPU, once on the engine, twice on the controller and once on the client, than
running the cell. So an engine encodes each reply once with msgpack (safe to
decode: plain data only, never code), Foolscap carries it as one bytes token,
and the controller answers a command on N engines with *one* bytes value: a
msgpack array header followed by the N replies exactly as the engines sent
them. The controller may decode a reply to look at it (events, the session
log) but it forwards the engine's bytes, never a re-encoding.

So an engine's reply is always bytes (``RIEngine.run`` returns
``EngineReply``): a reply msgpack cannot encode (a value of an unexpected
type) becomes an error reply that says so. Readers still accept a dict, the
form of errors the controller makes itself.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ipython1.common.errors import KernelError, error_to_wire

PACKED = b"IPR1"  # prefix of a packed list of replies


def dumps(value: Any) -> bytes:
    """Encode plain data as msgpack: str stays str, bytes stay bytes."""
    return msgpack.packb(value, use_bin_type=True)


def loads(data: Any) -> Any:
    """Decode what dumps made (maps may have int keys, e.g. engine ids)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode(reply: Any) -> bytes:
    """Return reply as msgpack bytes; if msgpack cannot hold it, an error reply saying so."""
    try:
        return dumps(reply)
    except (TypeError, ValueError, OverflowError) as e:
        engine_id = reply.get("engine_id") if isinstance(reply, dict) else None
        error = KernelError(f"the engine's reply cannot be sent ({e}): it holds a value "
                            "msgpack cannot encode")
        return dumps({"engine_id": engine_id, "status": "error",
                      "error": error_to_wire(error, engine_id)})


def decode(reply: Any) -> Any:
    """Return a reply as a dict, whichever form it came in."""
    return loads(reply) if isinstance(reply, bytes) else reply


def pack(replies: Any) -> Any:
    """Return a list of replies as one bytes value (see the module docstring).

    Anything but a list of encoded or encodable replies is returned unchanged.
    """
    if not isinstance(replies, list):
        return replies
    parts = [_array_header(len(replies))]
    for reply in replies:
        if not isinstance(reply, bytes):
            reply = encode(reply)
            if not isinstance(reply, bytes):
                return replies
        parts.append(reply)
    return PACKED + b"".join(parts)


def unpack(answer: Any) -> Any:
    """Undo pack(); anything else is returned unchanged."""
    if isinstance(answer, bytes) and answer.startswith(PACKED):
        return loads(memoryview(answer)[len(PACKED):])
    return answer


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 2**16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")
