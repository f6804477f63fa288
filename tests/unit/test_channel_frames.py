"""The command channel's call frames: a fan-out's body encoded once (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from ipython1.common.replies import dumps, loads
from ipython1.transport import channel


@pytest.mark.parametrize("seq", [1, 127, 128, 70_000, 2**40])
@pytest.mark.parametrize("tag", [None, "token/3/256"])
def test_a_call_frame_is_the_msgpack_of_the_call(seq: int, tag: str | None) -> None:
    args = ("x = 1", [1, 2], {"k": b"v"})
    expected = [seq, "execute", list(args)] + ([tag] if tag is not None else [])
    assert channel._CallBodies().frame(seq, "execute", args, tag) == dumps(expected)


def test_a_fan_out_encodes_its_body_once(monkeypatch: pytest.MonkeyPatch) -> None:
    bodies = channel._CallBodies()
    encoded: list[Any] = []
    monkeypatch.setattr(channel, "dumps", lambda v: encoded.append(v) or dumps(v))
    value = {"a": [b"\0" * 1000]}
    args = (value,)
    frames = [bodies.frame(seq, "push", args, "t/1/64") for seq in range(1, 65)]
    assert [loads(f) for f in frames] == [[s, "push", [value], "t/1/64"] for s in range(1, 65)]
    assert sum(1 for v in encoded if v == [value]) == 1  # the pushed value: once
    # Another command (other args, even equal ones), another tag, or a list: encoded anew.
    assert loads(bodies.frame(65, "push", ({"a": [b"1"]},), "t/1/64"))[2] == [{"a": [b"1"]}]
    assert loads(bodies.frame(66, "push", args, "t/2/64"))[3] == "t/2/64"
    mutable = [value]
    bodies.frame(67, "push", mutable, None)
    mutable[0] = {"b": []}
    assert loads(bodies.frame(68, "push", mutable, None))[2] == [{"b": []}]
