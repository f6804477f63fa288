"""The wire schemas (common.constraints): real bounds, Violations and never a dropped
connection, checked without sockets (issue 13).

Per token: what Foolscap's unslicers call as tokens arrive (checkToken,
checkOpentype, setConstraint). Whole: checkObject, as before sending and on
arrival (Foolscap's broker, and the command channel's ControllerEnd).
"""

from __future__ import annotations

from typing import Any

import pytest
from foolscap.slicers.dict import DictUnslicer
from foolscap.slicers.list import ListUnslicer
from foolscap.slicers.none import NoneUnslicer
from foolscap.slicers.unicode import UnicodeConstraint, UnicodeUnslicer
from foolscap.tokens import INT, STRING, BananaError, Violation

from ipython1.client.multiengine import client_info
from ipython1.common import constraints as c
from ipython1.common import replies
from ipython1.common.interfaces import RIEngineRegistration, RIMultiEngineSession
from ipython1.engine.rejoin import LateReplies
from ipython1.engine.service import engine_info


def whole(constraint: Any, value: Any) -> None:
    constraint.checkObject(value, True)


@pytest.mark.parametrize("targets", ["all", 0, 3, [], [0, 2, 5]])
def test_targets_takes_all_an_id_or_a_list_of_ids(targets: Any) -> None:
    whole(c.Targets, targets)


@pytest.mark.parametrize("targets", ["some", "", True, [True], 1.5, {"a": 1}, (0, 1), [0, "1"],
                                     2**40, list(range(c.MAX_ENGINES + 1))])
def test_targets_refuses_anything_else(targets: Any) -> None:
    with pytest.raises(Violation):
        whole(c.Targets, targets)


def test_targets_per_token_is_safe_for_every_unslicer() -> None:
    targets = c.Targets
    targets.checkToken(INT, 4)  # an id
    for opentype in [("unicode",), ("list",)]:
        targets.checkOpentype(opentype)
    for opentype in [("dict",), ("boolean",), ("tuple",), ("instance",)]:
        with pytest.raises(Violation):
            targets.checkOpentype(opentype)
    with pytest.raises(Violation):  # bytes: a Violation, not a protocol error
        targets.checkToken(STRING, 3)
    # The unslicers assert their own constraint class: a ChoiceOf here drops the
    # connection. This one is a list and a text constraint at once.
    UnicodeUnslicer().setConstraint(targets)
    ListUnslicer().setConstraint(targets)


def test_text_and_flags_refuse_other_tokens_as_a_violation() -> None:
    with pytest.raises(BananaError):  # Foolscap's own: the connection would drop
        UnicodeConstraint(10).checkToken(INT, 4)
    for constraint in (c.Text, c.Name, c.Flag, c.MaybeText):
        with pytest.raises(Violation):
            constraint.checkToken(INT, 4)


def test_maybe_text_is_text_or_none() -> None:
    whole(c.MaybeText, None)
    whole(c.MaybeText, "abc")
    with pytest.raises(Violation):
        whole(c.MaybeText, 3)
    c.MaybeText.checkOpentype(("none",))
    NoneUnslicer().setConstraint(c.MaybeText)
    UnicodeUnslicer().setConstraint(c.MaybeText)


def test_a_record_knows_its_keys_and_checks_each_value() -> None:
    record = c.Record(name=c.Name, pid=int)
    whole(record, {"name": "x", "pid": 3})
    whole(record, {"name": "x"})  # a missing key is allowed
    with pytest.raises(Violation, match="unknown key 'evil'.*another version"):
        whole(record, {"name": "x", "evil": 1})
    with pytest.raises(Violation, match=r"\['pid'\]"):
        whole(record, {"pid": "3"})
    with pytest.raises(Violation):
        whole(record, [("name", "x")])
    # Per token: at most one entry per field, text keys, through the dict unslicer.
    assert record.maxKeys == 2
    DictUnslicer().setConstraint(record)
    with pytest.raises(Violation):
        record.keyConstraint.checkToken(INT, 4)


def test_real_engines_and_clients_fit_their_info() -> None:
    late = LateReplies()
    late.note("execute", {"status": "error", "value": {"execution_count": 3},
                          "error": {"ename": "ZeroDivisionError"}})
    info = dict(engine_info(), requested_id=4, rejoin=True, supervised=True,
                restarted="killed by signal 9", mpi_rank=0, mpi_size=2, mpi_job="job-1",
                mpi_library="MPICH Version: 4.1.2",
                local_data={"host": "h", "socket": "\0ipython1-x", "pid": 1, "uid": 1000},
                **late.registration_info())
    info["late_tasks"] = [[7, "ok", 0.1, [b"frames"]]]
    whole(c.EngineInfo, info)
    whole(c.EngineProperties, dict(info, busy=False))
    whole(c.ClientInfo, dict(client_info(), debugger=object()))
    whole(c.LateDelivery, late.take())


def test_a_session_reply_is_encoded_bytes_a_pending_id_or_an_error() -> None:
    reply = c.SessionReply
    whole(reply, replies.pack([replies.encode({"engine_id": 0, "status": "ok", "value": 1})]))
    whole(reply, {"pending_id": 3})
    whole(reply, {"engine_id": None, "status": "error", "error": {"ename": "X"}})
    for bad in ([{"engine_id": 0}], {"pending_id": "3"}, {"other": 1}, "text"):
        with pytest.raises(Violation):
            whole(reply, bad)
    small = c.OneOf(c.Record(pending_id=int), max_bytes=4)
    with pytest.raises(Violation, match="too large"):
        whole(small, b"12345")
    with pytest.raises(Violation):  # per token, before the bytes are read
        small.checkToken(STRING, 5)
    DictUnslicer().setConstraint(reply)


def test_one_of_takes_none_only_when_told() -> None:
    said = c.OneOf(c.ErrorReply, none=True)
    whole(said, None)
    said.checkOpentype(("none",))
    with pytest.raises(Violation):
        whole(c.OneOf(c.ErrorReply), None)
    with pytest.raises(Violation):
        c.OneOf(c.ErrorReply).checkOpentype(("none",))
    with pytest.raises(Violation):  # no bytes unless max_bytes
        c.OneOf(c.ErrorReply).checkToken(STRING, 1)


def test_an_answer_holds_its_own_value() -> None:
    ids = c.answer(c.TaskIDs)
    whole(ids, {"status": "ok", "value": [1, 2]})
    whole(ids, {"status": "error", "error": {"ename": "InvalidTaskID"}})
    with pytest.raises(Violation):
        whole(ids, {"status": "ok", "value": ["1"]})


def test_calls_are_checked_whole_as_foolscap_and_the_channel_do_on_arrival() -> None:
    def check(interface: Any, method: str, *args: Any) -> None:
        interface[method].checkAllArgs(args, {}, True)

    check(RIMultiEngineSession, "execute", "a = 1", [0], True)
    with pytest.raises(Violation, match="targets"):
        check(RIMultiEngineSession, "execute", "a = 1", "some", True)
    with pytest.raises(Violation):
        check(RIMultiEngineSession, "execute", 42, "all", True)
    with pytest.raises(Violation, match="unknown key"):
        check(RIEngineRegistration, "deliver_late", 0, {"tasks": [], "evil": 1})
