"""Every op of the table over every transport pairing, in-process and without sockets.

client --(Foolscap | channel)--> controller --(Foolscap | channel)--> engine, with
the real client, sessions, controller, queues, channel ends and EngineKernel.
Only the wires are fakes: a Foolscap reference that checks the schema and
delivers on a later turn (like Tahoe-LAFS's no-network grid), and a channel
that carries the real frames on a later turn. Turns run when the test says.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from typing import Any

import pytest
from foolscap.api import Referenceable
from foolscap.remoteinterface import getRemoteInterface
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ipython1.client.multiengine import AsyncMultiEngineClient
from ipython1.client.taskspec import StringTask
from ipython1.client.taskspec import TaskResult as TaskClientResult
from ipython1.common import ops, replies
from ipython1.common.errors import CompositeError, RemoteError
from ipython1.common.serialize import deserialize
from ipython1.controller.multiengine import MultiEngine
from ipython1.controller.multienginesession import MultiEngineSession
from ipython1.controller.registry import Controller
from ipython1.controller.taskfarm import TaskFarm
from ipython1.controller.tasksession import TaskFarmSession
from ipython1.engine.kernel import EngineKernel
from ipython1.engine.runner import ShellRunner
from ipython1.engine.service import EngineReferenceable
from ipython1.transport import channel as command_channel
from ipython1.transport.channel import ChannelEngineConnection, ClientEnd, ControllerEnd
from ipython1.transport.foolscap import FoolscapSessionConnection
from ipython1.transport.framing import FrameReader, frame


class Turns:
    """An eventual-send queue: what is sent runs on a later turn, in order."""

    def __init__(self) -> None:
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())

    def later(self, f: Callable[..., Any], *args: Any) -> None:
        self._calls.append((f, args))

    def flush(self) -> None:
        while self._calls:
            f, args = self._calls.popleft()
            f(*args)


class LocalReference:
    """A RemoteReference stand-in: checks the schema, delivers and answers on later turns."""

    def __init__(self, turns: Turns, target: Any) -> None:
        self.turns = turns
        self.target = target
        self.calls: list[str] = []

    def callRemote(self, name: str, *args: Any) -> Deferred[Any]:
        interface = getRemoteInterface(self.target)
        if interface is not None:
            try:
                interface[name].checkAllArgs(args, {}, False)
            except Exception:
                return defer.fail()
        self.calls.append(name)
        args = tuple(LocalReference(self.turns, a) if isinstance(a, Referenceable) else a
                     for a in args)
        answer: Deferred[Any] = Deferred()

        def deliver() -> None:
            d = defer.maybeDeferred(self.target.doRemoteCall, name, args, {})
            if interface is not None:  # as Foolscap's broker checks an answer before sending
                d.addCallback(lambda result: (
                    interface[name].checkResults(result, False), result)[1])
            d.addBoth(lambda result: self.turns.later(answer.callback, result))

        self.turns.later(deliver)
        return answer

    def notifyOnDisconnect(self, callback: Any, *args: Any) -> None:
        pass

    def getRemoteTubID(self) -> str:
        return "fake-tubid"


class Pipe:
    """One direction of an in-memory channel: bytes written arrive on a later turn."""

    disconnecting = False

    def __init__(self, turns: Turns, receive: Callable[[bytes], None]) -> None:
        self.turns = turns
        self.receive = receive
        self.frames = 0

    def write(self, data: bytes) -> None:
        self.frames += 1
        self.turns.later(self.receive, bytes(data))

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True


class InlineRunner(ShellRunner):
    """The shell thread's job runner, running each job on a later turn (no thread)."""

    def __init__(self, turns: Turns) -> None:
        super().__init__()
        self.turns = turns

    def submit(self, job: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        with self._lock:
            self._not_started += 1
        self.turns.later(lambda: d.callback(self._run(job)))
        return d


class EngineChannelEnd:
    """The engine's end of the channel: frames go to the runner, as EngineChannel's do."""

    closed = False

    def __init__(self, runner: ShellRunner, to_controller: Pipe) -> None:
        self.runner = runner
        self.to_controller = to_controller
        self.reader = FrameReader()

    def feed(self, data: bytes) -> None:
        for payload in self.reader.feed(data):
            self.runner._serve_channel_call(payload)

    def answer(self, seq: int, ok: bool, payload: Any) -> None:
        self.to_controller.write(frame(command_channel.answer_frame(seq, ok, payload)))


def _connect(turns: Turns, a: Any, b: Any) -> tuple[Pipe, Pipe]:
    """Join two channel protocols by pipes; both authenticated."""
    a.transport, b.transport = Pipe(turns, b.dataReceived), Pipe(turns, a.dataReceived)
    a.connected = b.connected = 1
    a.authenticated()
    b.authenticated()
    return a.transport, b.transport


class Cluster:
    """One engine, a controller and a client, joined by the chosen transports."""

    def __init__(self, client_link: str, engine_link: str) -> None:
        turns = self.turns = Turns()
        self.killed: list[bool] = []
        runner = InlineRunner(turns)
        kernel: list[EngineKernel] = []

        def make_kernel() -> EngineKernel:
            if not kernel:
                # An engine's shell is its process's IPython singleton; a test run may
                # hold another one (made for magics), configured differently.
                from IPython.core.interactiveshell import InteractiveShell

                InteractiveShell.clear_instance()
                kernel.append(EngineKernel(runner=None))
            return kernel[0]

        engine = EngineReferenceable(make_kernel, runner, {"pid": 1})
        engine.output_idle = lambda: True  # type: ignore[method-assign]
        engine.remote_kill = lambda: self.killed.append(True)  # type: ignore[method-assign]
        self.controller = Controller()
        self.engine_ref = LocalReference(turns, engine)
        engine_id = self.controller.register_engine(self.engine_ref, {"pid": 1})
        runner.engine_id = engine_id
        self.engine_pipes: tuple[Pipe, ...] = ()
        if engine_link == "channel":
            end = ControllerEnd(server=None)  # type: ignore[arg-type]
            end.kind, end.engine_id = "engine", engine_id
            engine_end = EngineChannelEnd(runner, Pipe(turns, end.dataReceived))
            end.transport = Pipe(turns, engine_end.feed)
            end.connected = 1
            end.authenticated()
            runner._channel, runner._channel_host = engine_end, engine  # type: ignore[assignment]
            record = self.controller.engines[engine_id]
            record.connection = ChannelEngineConnection(end, record.connection)
            self.engine_pipes = (end.transport, engine_end.to_controller)
        self.mec = MultiEngine(self.controller)
        self.farm = TaskFarm(self.controller, clock=task.Clock())
        session = MultiEngineSession(self.mec, "owner/client-1", "owner")
        tasks = TaskFarmSession(self.farm, "owner/client-2", "owner")
        self.session_ref = LocalReference(turns, session)
        self.tasks_ref = LocalReference(turns, tasks)
        self.session_pipes: tuple[Pipe, ...] = ()
        if client_link == "channel":
            ends = []
            for target in (session, tasks):
                client_end = ClientEnd({})
                server_end = ControllerEnd(server=None)  # type: ignore[arg-type]
                server_end.kind, server_end.session = "session", target
                self.session_pipes += _connect(turns, client_end, server_end)
                ends.append(client_end)
            self.client = AsyncMultiEngineClient(self.session_ref, channel=ends[0])
            self.tasks = command_channel.session_connection(self.tasks_ref, ends[1])
        else:
            self.client = AsyncMultiEngineClient(self.session_ref)
            self.tasks = FoolscapSessionConnection(self.tasks_ref)

    def result(self, d: Deferred[Any]) -> Any:
        """Run turns until d fired; return its result or raise its error."""
        self.turns.flush()
        assert d.called, "no answer once every turn ran"
        out: list[Any] = []
        d.addBoth(out.append)
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]


PAIRINGS = [("foolscap", "foolscap"), ("channel", "channel"),
            ("foolscap", "channel"), ("channel", "foolscap")]


@pytest.fixture(params=PAIRINGS, ids=["-".join(p) for p in PAIRINGS])
def cluster(request: Any) -> Cluster:
    return Cluster(*request.param)


def _took(cluster: Cluster, client_link: str, engine_link: str) -> None:
    """Assert that each hop took the transport it was given."""
    engine_calls = cluster.engine_ref.calls.count("run")
    if engine_link == "channel":
        assert engine_calls == 0 and all(p.frames for p in cluster.engine_pipes)
    else:
        assert engine_calls > 0
    session_calls = [c for c in cluster.session_ref.calls if c in ops.OPS]
    if client_link == "channel":
        assert session_calls == [] and all(p.frames for p in cluster.session_pipes[:2])
    else:
        assert session_calls


def test_every_multiengine_op_on_every_pairing(cluster: Cluster, request: Any) -> None:
    c, mec = cluster, cluster.client
    result = c.result(mec.execute("a = 6 * 7\nprint('hi')", targets=0))
    assert result.stdout == "hi\n"
    c.result(mec.push({"b": [1, 2, 3]}))
    assert c.result(mec.pull(["a", "b"], targets=0)) == [42, [1, 2, 3]]
    c.result(mec.scatter("part", list(range(10))))
    assert c.result(mec.gather("part")) == list(range(10))
    assert c.result(mec.map(lambda x: x * x, range(5))) == [0, 1, 4, 9, 16]
    assert c.result(mec.apply(lambda x: x + 1, 1)) == [2]
    assert c.result(mec.get_result(targets=0)).stdout == "hi\n"
    assert {"a", "b", "part"} <= set(c.result(mec.keys(targets=0)))
    assert [n for n, _ in c.result(mec.history(targets=0))][-1] >= 1
    assert "int" in c.result(mec.inspect("a", targets=0))["text"]
    assert "abs" in c.result(mec.complete("ab", targets=0))["matches"]
    assert "a" in c.result(mec.who(targets=0))
    assert "a" in c.result(mec.whos(targets=0))["text"]
    assert c.result(mec.ping(targets=0))["pid"] == os.getpid()
    # The session's calls beside the op table answer within their schemas too.
    assert c.result(mec.get_ids()) == [0]
    assert c.result(mec.queue_status())[0]["engine_id"] == 0
    assert c.result(mec.engine_info(targets=[0]))[0]["pid"] == 1
    c.result(mec.set_properties({"color": "red"}))
    assert c.result(mec.get_properties(["color"], targets=0)) == {"color": "red"}
    assert c.result(mec.whoami())["user"] == "owner"
    assert c.result(mec.session_log())
    assert c.result(mec.users())[0]["kind"] == "owner"
    assert c.result(mec.say("hello")) is None
    assert c.result(mec.transcript()) == []
    with pytest.raises((RemoteError, CompositeError)):
        c.result(mec.execute("1 / 0"))
    assert c.result(mec.interrupt()) == [False]  # idle: nothing to stop
    c.result(mec.reset())
    assert c.result(mec.keys(targets=0)) == []
    _took(c, *request.node.callspec.params["cluster"])
    c.result(mec.kill())
    assert c.killed == [True] and c.controller.ids() == []


def test_every_task_farm_op_on_every_pairing(cluster: Cluster) -> None:
    c, tasks = cluster, cluster.tasks

    def call(method: str, *args: Any) -> Any:
        answer = c.result(tasks.call(method, args))
        assert answer["status"] == "ok", answer
        return answer["value"]

    engine_replies: list[Any] = []
    replied = c.farm._replied
    c.farm._replied = lambda reply, *rest: (  # type: ignore[method-assign]
        engine_replies.append(reply), replied(reply, *rest))[1]
    first = call("reserve", 3)
    meta, payload = StringTask("b = a * 2", push={"a": 21}, pull="b").to_wire()
    assert call("submit", [[first, meta, payload]]) == [None]
    call("spin")
    assert call("wait", [first], True, None) == [first]
    packed = call("get_results_packed", [first], False)
    # What crosses the wire: the engine's batch reply and the records are msgpack
    # bytes (plain data); the value inside is the engine's frames, opaque until here.
    assert [type(r) for r in engine_replies] == [bytes]
    assert isinstance(packed, bytes)
    record = replies.loads(packed)[0]
    kind, value, _out, _err = deserialize(record["value"])
    assert value == {"b": 42}
    assert TaskClientResult(record).ns.b == 42
    # A failing task: its error is data in the same msgpack records.
    meta, payload = StringTask("1 / 0").to_wire()
    second = first + 1
    assert call("submit", [[second, meta, payload]]) == [None]
    call("spin")
    assert call("wait", [second], True, None) == [second]
    failed = TaskClientResult(replies.loads(call("get_results_packed", [second], True))[0])
    assert failed.failure is not None and failed.failure.ename == "ZeroDivisionError"
    assert call("queue_status", False)["succeeded"] >= 1
    refused = c.result(tasks.call("abort", (first + 2,)))  # reserved, never submitted
    assert refused["error"]["ename"] == "InvalidTaskID"
    assert call("clear", [first]) >= 1


def test_a_command_the_engine_does_not_know_is_refused_there() -> None:
    c = Cluster("foolscap", "foolscap")
    d = c.controller.engines[0].connection.call("no_such_op", [])
    reply = c.result(d)
    assert b"unknown command" in reply
    d = c.controller.engines[0].connection.call("execute", [42])  # not text
    assert b"Violation" in c.result(d)


def test_a_session_takes_an_ops_arguments_by_name_too() -> None:
    c = Cluster("foolscap", "foolscap")
    session = c.session_ref.target
    c.result(session.doRemoteCall("execute", ("named = 1",), {"targets": 0, "block": True}))
    answer = c.result(session.doRemoteCall("keys", (), {"block": True, "targets": [0]}))
    assert b"named" in answer
