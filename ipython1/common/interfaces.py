"""Interfaces: zope for local adapters, RemoteInterface schemas for the wire.

Values travel as *frames* (`serialize.serialize`): lists of opaque bytes that
the controller relays without unpickling. A reply from an engine is a plain
dict, ``{"engine_id": int, "status": "ok", "value": ...}`` or
``{"engine_id": int, "status": "error", "error": {...}}`` (see
`errors.error_to_wire`), so that errors cross the wire as data.
"""

from __future__ import annotations

from typing import Any

from foolscap.api import RemoteInterface
from foolscap.constraint import Any as AnyValue
from foolscap.constraint import ByteStringConstraint
from foolscap.schema import ChoiceOf, DictOf, ListOf, Optional
from zope.interface import Attribute, Interface

from ipython1.common import ops
from ipython1.common.constraints import (  # noqa: F401 - re-exported: the shared names
    MAX_ENGINES,
    MAX_REPLY,
    ClientInfo,
    CommandTag,
    EngineInfo,
    EngineProperties,
    EngineReply,
    ErrorReply,
    ExitReport,
    Flag,
    Frame,
    Frames,
    FramesByEngine,
    Keys,
    LateDelivery,
    ListOrNone,
    MaybeText,
    Name,
    Namespace,
    NamespaceByEngine,
    OneOf,
    OpArgs,
    OpName,
    Record,
    SessionReply,
    Sizes,
    Targets,
    TaskIDs,
    Text,
    Ticket,
    Token,
    UserRow,
    WhoAmI,
    WireError,
    answer,
)

TargetSpec = Any  # "all" | int | list[int]
# get_properties(): the named ones, or all (a ChoiceOf of a list drops the connection)
PropertyNames = ListOrNone(Name, maxLength=100_000)
PropertyValues = AnyValue()  # checked as plain data by properties.update on arrival
# A remote pdb's answer: its output up to the next prompt, and whether it waits for a line.
DebugReply = Record(output=Text, waiting=Flag)


# -- local interfaces --------------------------------------------------------


class IEngineKernel(Interface):
    """What an engine does with its IPython shell; runs on the shell thread."""

    def execute(code: str) -> dict[str, Any]:
        """Run a cell; return its execution record."""

    def push(namespace: dict[str, list[bytes]]) -> None:
        """Bind serialized values to names in the user namespace."""

    def pull(keys: list[str]) -> list[list[bytes]]:
        """Return serialized values of names."""

    def apply(func: list[bytes], args: list[bytes]) -> list[bytes]:
        """Call a serialized function with serialized (args, kwargs)."""


class IMultiEngine(Interface):
    """Commands for a set of engines; every method returns a Deferred.

    Each Deferred fires with a list of replies, one per target, in target
    order (see the module docstring), or fails with InvalidEngineID or
    NoEnginesRegistered before anything is queued.
    """

    def get_ids() -> Any:
        """Fire with the sorted ids of the registered engines."""

    def run(op: str, args: tuple[Any, ...], targets: TargetSpec = "all") -> Any:
        """Run a command of the op table (ipython1.common.ops) on each target."""

    def execute(code: str, targets: TargetSpec = "all") -> Any:
        """Run code on each target; results come back in target order."""

    def push(namespace: dict[str, list[bytes]], targets: TargetSpec = "all") -> Any:
        """Bind the same serialized values on each target."""

    def push_each(namespaces: dict[int, dict[str, list[bytes]]]) -> Any:
        """Bind different serialized values on each engine (scatter)."""

    def apply_each(func: list[bytes], args: dict[int, list[bytes]]) -> Any:
        """Call a function on each engine with that engine's arguments."""

    def kill(controller: bool = False, targets: TargetSpec = "all") -> Any:
        """End engines at once, bypassing their queues; optionally the controller."""

    def restart(targets: TargetSpec = "all") -> Any:
        """Start engines afresh (new namespace, same id); fire once they are back."""

    def interrupt(targets: TargetSpec = "all") -> Any:
        """Raise KeyboardInterrupt in the code running on each target, at once."""

    def logs(lines: int = 100, targets: TargetSpec = "all") -> Any:
        """Fire with the last lines of each target's own log, at once (never queued)."""

    def queue_status(targets: TargetSpec = "all") -> Any:
        """Describe each target's queue: the running command and those waiting."""

    def clear_queue(targets: TargetSpec = "all") -> Any:
        """Drop each target's waiting commands; they fail with QueueCleared."""

    def session_log() -> Any:
        """Fire with every command this controller ran: targets, client, time, status."""

    def engine_info(targets: TargetSpec = "all") -> Any:
        """Describe each target as it registered: pid, host, mpi_rank, mpi_size..."""


class ITaskFarm(Interface):
    """Load-balanced, fault-tolerant running of independent tasks.

    Tasks are ``[meta, payload]``: scheduling fields and opaque frames (see
    ``task.validate_spec``);
    ids are reserved first so that a client can submit without waiting.
    """

    def reserve(n: int) -> Any:
        """Reserve n consecutive task ids; fire with the first once journaled."""

    def submit(tasks: list[Any], client: str = "") -> Any:
        """Queue ``[tid, meta, payload]`` tasks under reserved ids; fire, once they
        are journaled, with None or an error each."""

    def get_results(tids: list[int], block: bool = False) -> Any:
        """Fire with each task's result record (None if unfinished and not block)."""

    def wait(tids: list[int], all_: bool = False, timeout: float | None = None) -> Any:
        """Fire with the finished ids once any (or all) of tids finished, or at timeout."""

    def abort(tid: int) -> None:
        """Cancel a task that has not started; it fails with TaskAborted."""

    def queue_status(verbose: bool = False) -> dict[str, Any]:
        """Count pending, running (per engine), succeeded and failed tasks."""

    def clear(tids: list[int] | None = None, client: str | None = None) -> int:
        """Drop finished results; return how many."""

    def spin() -> None:
        """Hand ready tasks to idle engines now."""


class IEngineRegistry(Interface):
    """The controller's registry of engines."""

    engines = Attribute("dict[int, EngineRecord] of registered engines")

    def register_engine(engine: Any, info: dict[str, Any]) -> int:
        """Add an engine; return its id."""


# -- wire interfaces ---------------------------------------------------------


class RIEngine(RemoteInterface):
    """An engine as the controller sees it."""

    __remote_name__ = "RIEngine.v1.ipython1"

    def run(op=OpName, args=OpArgs, tag=Optional(MaybeText, None)):
        """Queue a command of the op table (ipython1.common.ops); args fit its schema.
        The reply is msgpack bytes (common.replies), relayed to the client as it is.
        A tagged command's reply is kept for a restarted controller (kept_result)."""
        return EngineReply

    def kept_result(tag=CommandTag):
        """The kept reply of a tagged command (controller.recovered); None if it was
        dropped or too large to keep."""
        return ChoiceOf(EngineReply, None)

    def kill():
        return None

    def restart():
        """Replace this process with a fresh engine of the same id (mec.restart)."""
        return None

    def interrupt(channel_seq=ChoiceOf(int, None)):
        """Stop the running command, or the command channel call channel_seq."""
        return Flag

    def open_transfer(pairing_id=Token, secret=Token, relay_port=int, direction=Name,
                      blob_id=Token, sizes=Sizes):
        return Flag

    def expect_transfers(pairing_id=Token, secret=Token, uses=int, plain=Flag):
        """Let the holder of pairing_id and secret make uses transfers on the data port."""
        return Flag

    def open_command_channel(engine_id=int, offer=AnyValue()):
        return Flag

    def properties():
        return EngineProperties

    def stats():
        """This engine's CPU % since the last call and resident memory (not queued)."""
        return DictOf(Name, ChoiceOf(float, int), maxKeys=16)

    def logs(lines=int):
        """The last lines of this engine's own log (not queued)."""
        return ListOf(Text, maxLength=100_000)

    def debug_input(line=Text):
        """A line for the engine's waiting debugger; its output up to the next prompt."""
        return DebugReply

    def subscribe_output(observer=AnyValue()):
        """Send live stdout/stderr as observer.output([[name, text], ...])."""
        return None


class RIEngineRegistration(RemoteInterface):
    """The engine-facing capability of the controller."""

    __remote_name__ = "RIEngineRegistration.v1.ipython1"

    def register_engine(engine=RIEngine, info=EngineInfo):
        return int

    def deliver_late(engine_id=int, late=LateDelivery):
        """What ended while the controller was away (issue 15): {"tasks": task
        replies, "finished": notes of other commands, "results": tags of kept replies}."""
        return None

    def report_exit(report=ExitReport):
        """How an engine ended, from its watcher (ipengine --watch) or supervisor:
        {"pid", "host", "exit": its code or signal, "stderr": its last lines}."""
        return None


class RIEventObserver(RemoteInterface):
    """A client's subscriber to the controller's event stream."""

    __remote_name__ = "RIEventObserver.v1.ipython1"

    def events(batch=ByteStringConstraint(None)):
        """Take a JSON list of events (see ipython1.controller.events)."""
        return None


class RIControllerAdmin(RemoteInterface):
    """The owner's administrative capability: manage users."""

    __remote_name__ = "RIControllerAdmin.v1.ipython1"

    def add_user(name=Name, observer=Flag):
        """Add a user; the answer's value is the FURL file's path."""
        return answer(Text)

    def remove_user(name=Name):
        return answer(UserRow)

    def users():
        return answer(ListOf(UserRow, maxLength=100_000))

    def status():
        """The cluster's status: engines (host, pid, CPU, memory, queue), tasks, users."""
        return answer(DictOf(Name, AnyValue(), maxKeys=64))


class RIMultiEngineSession(RemoteInterface):
    """One client's session with the multi-engine adapter.

    Every command takes ``block``: when False it returns ``{"pending_id": n}``
    at once and the replies are fetched later with ``get_pending_result``. And
    ``call``, the client's id for it (the pending id; 0: the session picks one):
    with the client's token (``connect``), a restarted controller finds its
    result on the engines (controller/recovered.py).
    """

    __remote_name__ = "RIMultiEngineSession.v1.ipython1"

    # One method per op of the table: op(*its args, targets, block, call).
    locals().update(ops.session_schemas())

    def get_ids():
        return ListOf(int, maxLength=MAX_ENGINES)

    def push_each(namespaces=NamespaceByEngine, block=Flag, call=Optional(int, 0)):
        return SessionReply

    def apply_each(func=Frames, args=FramesByEngine, block=Flag, call=Optional(int, 0)):
        return SessionReply

    def kill(controller=Flag, targets=Targets, block=Flag, call=Optional(int, 0)):
        return SessionReply

    def restart(targets=Targets, block=Flag, call=Optional(int, 0)):
        return SessionReply

    def interrupt(targets=Targets):
        return SessionReply

    def logs(lines=int, targets=Targets):
        return SessionReply

    def debug_input(engine_id=int, line=Text):
        """A line for the debugger this client's command opened on engine_id."""
        return OneOf(DebugReply, ErrorReply)

    def queue_status(targets=Targets):
        return SessionReply

    def clear_queue(targets=Targets):
        return SessionReply

    def open_transfer(engine_id=int, direction=Name, blob_id=Token, sizes=Sizes,
                      host=Optional(Name, ""),  # transport.data.local.host_key() of the client
                      route=Optional(Name, "")):  # "direct": to the engine's data port if it can
        return Ticket

    def engine_info(targets=Targets):
        return SessionReply

    def get_pending_result(pending_id=int, block=Flag):
        return SessionReply

    def pending_ids():
        return ListOf(int, maxLength=1_000_000)

    def clear_pending_results():
        """Drop this session's unfetched results (flush()); return how many."""
        return int

    def get_properties(keys=PropertyNames, targets=Targets, block=Flag,
                       call=Optional(int, 0)):
        """Each target's engine properties (IPython 0.10): the named ones, or all."""
        return SessionReply

    def update_properties(action=Name, arg=PropertyValues, targets=Targets, block=Flag,
                          call=Optional(int, 0)):
        """Set (arg: a dict of plain data), del (arg: names) or clear properties."""
        return SessionReply

    def subscribe_output(observer=AnyValue(), own_only=Flag):
        """Send live output as observer.output({"engine_id", "chunks", ...})."""
        return None

    def unsubscribe_output():
        return None

    def session_log():
        return SessionReply

    # -- collaboration (issue 8) --

    def whoami():
        return WhoAmI

    def users():
        return SessionReply

    def say(text=Text):
        return OneOf(ErrorReply, none=True)

    def subscribe_events(observer=RIEventObserver, history=int):
        """Send events to observer: up to `history` recent ones first, then live."""
        return OneOf(Record(seq=int), ErrorReply)

    def unsubscribe_events():
        return None

    def transcript(user=MaybeText, last=int):  # a user's name, or None: everyone's
        return SessionReply

    def open_command_channel(host=Text):
        """Offer this session over the controller's local socket (transport.channel)."""
        return AnyValue()

    def connect_tasks(info=ClientInfo):
        """Open this user's session with the task farm: {"status": "ok", "value": it}."""
        return answer(AnyValue())  # an RITaskFarmSession (declared below)


class RIMultiEngine(RemoteInterface):
    """The client-facing capability: open a session."""

    __remote_name__ = "RIMultiEngine.v1.ipython1"

    def connect(info=ClientInfo):
        return RIMultiEngineSession


class RITaskFarmSession(RemoteInterface):
    """One client's session with the task farm; every answer is
    ``{"status": "ok", "value": ...}`` or ``{"status": "error", "error": {...}}``."""

    __remote_name__ = "RITaskFarmSession.v1.ipython1"

    def reserve(n=int):
        """Reserve n consecutive task ids; the value is the first."""
        return answer(int)

    def submit(tasks=ListOf(AnyValue(), maxLength=100_000)):
        """Queue [tid, meta, payload] tasks (task.validate_spec); None or an error each."""
        return answer(ListOf(ChoiceOf(None, WireError), maxLength=100_000))

    def get_results_packed(tids=TaskIDs, block=Flag):
        """Each task's result record (or None), all in one msgpack byte string
        (cheap to send); each value is the engine's frames of the result."""
        return answer(ByteStringConstraint(MAX_REPLY))

    def wait(tids=TaskIDs, all_=Flag, timeout=ChoiceOf(float, int, None)):
        return answer(TaskIDs)

    def abort(tid=int):
        return answer(None)

    def queue_status(verbose=Flag):
        return answer(DictOf(Name, AnyValue(), maxKeys=64))

    def clear(tids=ListOrNone(int, maxLength=1_000_000)):  # None: all of this client's
        return answer(int)

    def spin():
        return answer(None)

    def open_command_channel(host=Text):
        """Offer this session over the controller's local socket (transport.channel)."""
        return AnyValue()


class RITaskFarm(RemoteInterface):
    """The client-facing task farm capability: open a session."""

    __remote_name__ = "RITaskFarm.v1.ipython1"

    def connect(info=ClientInfo):
        return RITaskFarmSession
