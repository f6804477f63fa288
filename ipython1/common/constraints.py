"""Foolscap wire constraints shared by every RemoteInterface, named once with bounds.

Foolscap checks an argument token by token as it arrives (the kind of each
token, the size of bytes, the length of lists and dicts: before anything is
built), then whole (``checkObject``) before delivering it, as the command
channel does (``ControllerEnd``) and as the sender does before sending. Three
gaps in the first are closed here, so that a malformed argument is a
Violation for that call and never a dropped connection:

- Foolscap's text, bool and None constraints are *strict*: a token of another
  kind (an int where text belongs) is a protocol error and the connection
  drops. `TextConstraint` and `Flag` refuse it as a Violation instead.
- ``ChoiceOf`` cannot hold an opener (text, a list, a dict): each unslicer
  asserts its own constraint class and the connection drops. `TargetsConstraint`
  and `BytesOrRecord` are the classes their unslicers expect.
- A dict's values share one constraint: a `Record` names its keys, bounds their
  number, and checks each value whole.
"""

from __future__ import annotations

from typing import Any

from foolscap.constraint import Any as AnyValue
from foolscap.constraint import ByteStringConstraint, IConstraint, IntegerConstraint
from foolscap.schema import ChoiceOf, DictOf, ListOf
from foolscap.slicers.bool import BooleanConstraint
from foolscap.slicers.dict import DictConstraint
from foolscap.slicers.list import ListConstraint
from foolscap.slicers.unicode import UnicodeConstraint
from foolscap.tokens import INT, NEG, OPEN, STRING, VOCAB, Violation

MAX_ENGINES = 65536
MAX_REPLY = 1 << 32  # bytes of one encoded reply; larger values take the data channel


class TextConstraint(UnicodeConstraint):  # type: ignore[misc]
    """Text (Foolscap's `str` means bytes); another kind of token is a Violation."""

    strictTaster = False
    name = "Text"


class MaybeTextConstraint(TextConstraint):
    """Text or None (a ChoiceOf cannot hold text; None's unslicer takes any constraint)."""

    opentypes = [("unicode",), ("none",)]
    name = "MaybeText"

    def checkObject(self, obj: Any, inbound: bool) -> None:
        if obj is not None:
            super().checkObject(obj, inbound)


class FlagConstraint(BooleanConstraint):  # type: ignore[misc]
    """True or False; another kind of token is a Violation."""

    strictTaster = False
    name = "Flag"


class TargetsConstraint(ListConstraint, UnicodeConstraint):  # type: ignore[misc]
    """Which engines: "all", an engine id, or a list of at most max_engines ids.

    Both a list and a text constraint, so that either unslicer takes it.
    """

    name = "Targets"
    opentypes = [("unicode",), ("list",)]
    taster = {OPEN: None, INT: None, NEG: None}
    strictTaster = False

    def __init__(self, max_engines: int) -> None:
        ListConstraint.__init__(self, IntegerConstraint(), maxLength=max_engines)

    def checkObject(self, obj: Any, inbound: bool) -> None:
        if obj == "all" and isinstance(obj, str):
            return
        if isinstance(obj, int) and not isinstance(obj, bool):
            self.constraint.checkObject(obj, inbound)
            return
        if isinstance(obj, list):
            if any(isinstance(t, bool) for t in obj):
                raise Violation("an engine id is an int, not a bool")
            ListConstraint.checkObject(self, obj, inbound)
            return
        raise Violation(f"targets must be 'all', an engine id or a list of ids, "
                        f"not {type(obj).__name__}")


class ListOrNone(ListConstraint):  # type: ignore[misc]
    """A list, or None (None's unslicer takes any constraint)."""

    opentypes = [("list",), ("none",)]
    name = "ListOrNone"

    def checkObject(self, obj: Any, inbound: bool) -> None:
        if obj is not None:
            super().checkObject(obj, inbound)


def as_targets(targets: Any) -> Any:
    """Return targets as Targets carries them: a tuple or range becomes a list."""
    if isinstance(targets, (tuple, range)):
        return list(targets)
    return targets


class Record(DictConstraint):  # type: ignore[misc]
    """A dict with known keys, each value checked by its own constraint.

    Per token: text keys, at most one per field. Whole: no other key, and each
    value fits its field (fields named in optional may be missing).
    """

    name = "Record"

    def __init__(self, **fields: Any) -> None:
        super().__init__(TextConstraint(max(map(len, fields))), AnyValue(), len(fields))
        self.fields = {key: IConstraint(c) for key, c in fields.items()}

    def extended(self, **fields: Any) -> Record:
        """Return a record with these fields too."""
        return Record(**self.fields, **fields)

    def checkObject(self, obj: Any, inbound: bool) -> None:
        if not isinstance(obj, dict):
            raise Violation(f"expected a dict, not {type(obj).__name__}")
        for key, value in obj.items():
            field = self.fields.get(key) if isinstance(key, str) else None
            if field is None:
                raise Violation(f"unknown key {key!r} (known: {', '.join(sorted(self.fields))}; "
                                "does the other side run another version of ipython1?)")
            try:
                field.checkObject(value, inbound)
            except Violation as v:
                v.setLocation(f"[{key!r}]")
                raise


class OneOf(DictConstraint):  # type: ignore[misc]
    """A dict that fits one of records; or, if allowed, bytes of at most max_bytes
    (an encoded reply) or None. The dict unslicer takes it; None's takes anything."""

    name = "OneOf"

    def __init__(self, *records: Record, max_bytes: int = 0, none: bool = False) -> None:
        longest = max(max(map(len, r.fields)) for r in records)
        super().__init__(TextConstraint(longest), AnyValue(),
                         max(len(r.fields) for r in records))
        self.records = records
        self.max_bytes = max_bytes
        self.none = none
        self.opentypes = [("dict",), ("none",)] if none else [("dict",)]
        self.taster = {STRING: max_bytes, VOCAB: None, OPEN: None} if max_bytes else {
            OPEN: None}

    def checkObject(self, obj: Any, inbound: bool) -> None:
        if obj is None and self.none:
            return
        if isinstance(obj, bytes) and self.max_bytes:
            if len(obj) > self.max_bytes:
                raise Violation(f"reply too large ({len(obj)} > {self.max_bytes} bytes)")
            return
        errors = []
        for record in self.records:
            try:
                record.checkObject(obj, inbound)
                return
            except Violation as v:
                errors.append(str(v))
        raise Violation(f"not one of the known answers: {'; '.join(errors)}")


Text = TextConstraint(None)
Name = TextConstraint(1000)
Flag = FlagConstraint()
Frame = ByteStringConstraint(None)  # values may be GiBs; see serialize.MAX_FRAME
Frames = ListOf(Frame, maxLength=1_000_000)
Namespace = DictOf(Name, Frames, maxKeys=100_000)
Targets = TargetsConstraint(MAX_ENGINES)
Keys = ListOf(Name, maxLength=100_000)
FramesByEngine = DictOf(int, Frames, maxKeys=MAX_ENGINES)
NamespaceByEngine = DictOf(int, Namespace, maxKeys=MAX_ENGINES)
Token = ByteStringConstraint(64)
Sizes = ListOf(int, maxLength=1_000_000)
MaybeInt = ChoiceOf(int, None)
MaybeText = MaybeTextConstraint(None)
TaskBatch = ListOf(AnyValue(), maxLength=100_000)
OpName = TextConstraint(64)
OpArgs = ListOf(AnyValue(), maxLength=16)  # checked against the op's own schema
CommandTag = TextConstraint(200)  # controller/recovered.py: client token / call / engines
MAX_KEPT = 1024  # command replies a rejoining engine names (engine.rejoin.MAX_KEPT, 256)
TaskIDs = ListOf(int, maxLength=1_000_000)

# -- what peers say about themselves ---------------------------------------------

# Values are checked whole only (per token a record's values are anything), so
# a ChoiceOf may hold text here.
ShortText = TextConstraint(4096)
# The other side's versions (common.versions): compared by keys it may not know yet.
Versions = DictOf(Name, ChoiceOf(Name, int, None), maxKeys=32)
# A task's reply: [tid, status, duration, data] (EngineKernel.run_task).
TaskReply = ListOf(AnyValue(), maxLength=4)
MAX_LATE = 100_000  # task replies an engine hands over when it rejoins, at most
# A command that ended while the controller was away (engine.rejoin.LateReplies.note).
FinishedNote = Record(op=OpName, execution_count=int, error=Name)

EngineInfo = Record(
    pid=int, hostname=Name, python=Name, ipython1=Name, cwd=ShortText, host_key=Name,
    versions=Versions,
    local_data=Record(host=Name, socket=ShortText, pid=int, uid=int),  # engine.localdata
    direct_data=Record(port=int, host=Name),  # engine.dataserver.DirectServer
    supervised=Flag, restarted=Name,  # cluster.supervisor
    mpi_rank=int, mpi_size=int, mpi_job=Name, mpi_library=ShortText,  # engine.mpi.initialize
    requested_id=int, rejoin=Flag,  # the id it asks for (MPI rank, restart, rejoin)
    late_tasks=ListOf(TaskReply, maxLength=MAX_LATE),  # a rejoining engine's (issue 15)
    running_tasks=ListOf(int, maxLength=MAX_LATE),
    finished_while_away=ListOf(FinishedNote, maxLength=1000),
    # engine.rejoin: replies delivered just before the loss, the tasks it finished
    # lately, its kept command replies (controller.recovered) and the one running
    recent_tasks=ListOf(TaskReply, maxLength=MAX_LATE),
    done_tasks=ListOf(int, maxLength=MAX_LATE),
    kept_results=ListOf(CommandTag, maxLength=MAX_KEPT),
    running_command=MaybeText,
    watched=Flag,  # engine.watcher: its watcher reports how it ends
)
EngineProperties = EngineInfo.extended(busy=Flag)  # RIEngine.properties()
LateDelivery = Record(tasks=ListOf(TaskReply, maxLength=MAX_LATE),
                      finished=ListOf(FinishedNote, maxLength=1000),
                      results=ListOf(CommandTag, maxLength=MAX_KEPT))  # tags kept meanwhile
# How an engine ended, from its watcher or supervisor (RIEngineRegistration.report_exit).
ExitReport = Record(pid=int, host=Name, exit=ShortText, stderr=TextConstraint(20_000),
                    engine_id=MaybeInt)
# A client's connect(info) (asyncclient.client_info); debugger: its remote-pdb observer.
# client_token: the client object's name across reconnections (controller.recovered).
ClientInfo = Record(name=Name, host=Name, pid=int, versions=Versions, debugger=AnyValue(),
                    client_token=Name)
WhoAmI = Record(user=Name, kind=Name, client=Name)

# -- replies ------------------------------------------------------------------------

# An error as data (errors.error_to_wire); its fields vary by error: bounded, text keys.
WireError = DictOf(Name, AnyValue(), maxKeys=32)
ErrorReply = Record(engine_id=MaybeInt, status=Name, error=WireError)
# An engine's reply to a queued command: msgpack bytes (common.replies).
EngineReply = ByteStringConstraint(MAX_REPLY)
# A session's answer to a command: every target's reply packed in one bytes value
# (replies.pack), {"pending_id": n} when block is False, or an error before anything ran.
# Lists (queue_status, users, the transcript...) are packed the same way.
SessionReply = OneOf(Record(pending_id=int), ErrorReply, max_bytes=MAX_REPLY)
# A data channel ticket (MultiEngine.open_transfer): local, direct, through the relay, or an
# error.
Ticket = OneOf(
    Record(pairing_id=Token, secret=Token, uses=int, ttl=ChoiceOf(int, float),
           local=Record(socket=ShortText, pid=int, uid=int)),
    Record(pairing_id=Token, secret=Token, relay_port=int, tubid=Name),
    Record(pairing_id=Token, secret=Token, uses=int, ttl=ChoiceOf(int, float), direct=Name,
           plain=Flag, seal=Flag, tubid=Name),
    ErrorReply)
# A row per user (users.UserDirectory.listing, remove).
UserRow = DictOf(Name, AnyValue(), maxKeys=16)


def answer(value: Any) -> Record:
    """An answer {"status": "ok", "value": value} or {"status": "error", "error": ...}
    (the task farm's, the admin's)."""
    return Record(status=Name, value=value, error=WireError)
