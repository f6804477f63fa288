"""Engine replies as msgpack bytes, relayed by the controller as they are."""

from __future__ import annotations

import pickle

import pytest

from ipython1.common import replies


def _reply(engine_id: int, **value: object) -> dict:
    return {"engine_id": engine_id, "status": "ok", "value": value}


@pytest.mark.parametrize("count", [0, 1, 15, 16, 70_000])
def test_packed_list_of_engine_bytes_unpacks_to_the_replies(count: int) -> None:
    # Array headers differ below 16, below 2**16 and above: all must hold.
    sent = [_reply(i, execution_count=i, frames=[b"\x00\xff" * 3]) for i in range(count)]
    from_engines = [replies.encode(r) for r in sent]
    assert all(isinstance(b, bytes) for b in from_engines)
    packed = replies.pack(from_engines)
    assert isinstance(packed, bytes)
    assert replies.unpack(packed) == sent


def test_the_controller_forwards_engine_bytes_without_re_encoding_them() -> None:
    raw = replies.encode(_reply(3, stdout="hi\n"))
    packed = replies.pack([raw, raw])
    assert packed.endswith(raw + raw)  # the engines' bytes, as they came


def test_controller_made_dicts_and_engine_bytes_mix() -> None:
    died = {"engine_id": 2, "status": "error", "error": {"ename": "EngineError"}}
    got = replies.unpack(replies.pack([replies.encode(_reply(1)), died]))
    assert got == [_reply(1), died]


def test_what_msgpack_cannot_hold_becomes_an_error_reply_in_bytes() -> None:
    odd = {"engine_id": 1, "status": "ok", "value": {1, 2}}  # a set
    encoded = replies.encode(odd)
    assert isinstance(encoded, bytes)  # RIEngine.run answers EngineReply: bytes only
    error = replies.decode(encoded)
    assert error["status"] == "error" and error["engine_id"] == 1
    assert "cannot be sent" in error["error"]["evalue"]
    assert replies.unpack(replies.pack([odd])) == [error]
    assert replies.decode(odd) is odd  # a dict the controller made itself


def test_str_and_bytes_and_int_keys_keep_their_types() -> None:
    reply = {"engine_id": 0, "status": "ok", "value": {"text": "é", "frame": b"\x00",
                                                        "by_engine": {3: "x"}}}
    assert replies.decode(replies.encode(reply)) == reply


def test_only_packed_lists_are_unpacked() -> None:
    assert replies.unpack(b"not a packed list") == b"not a packed list"
    assert replies.unpack({"pending_id": 3}) == {"pending_id": 3}
    assert replies.unpack(7) == 7


def test_decoding_a_reply_leaves_pickled_values_as_bytes() -> None:
    # The controller decodes replies for its events: values stay opaque frames.
    frames = [pickle.dumps(object(), protocol=5)]
    got = replies.decode(replies.encode({"engine_id": 0, "status": "ok", "value": frames}))
    assert got["value"] == frames and isinstance(got["value"][0], bytes)
