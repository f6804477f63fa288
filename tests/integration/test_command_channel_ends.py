"""The command channel's ends over real Unix sockets: who may attach to an engine's queue,
and the engine's end."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from foolscap.api import Referenceable
from zope.interface import implementer

from ipython1.client.reactor import ReactorThread
from ipython1.common.interfaces import RIMultiEngineSession
from ipython1.common.replies import decode as decode_reply
from ipython1.controller.queue import EngineQueue
from ipython1.controller.registry import Controller, EngineRecord
from ipython1.transport import channel as commandchannel
from ipython1.transport.foolscap import FoolscapEngineConnection

pytestmark = pytest.mark.skipif(not commandchannel.host_key(), reason="needs Linux SO_PEERCRED")


@pytest.fixture
def server() -> Any:
    loop = ReactorThread.get()

    def setup() -> Any:
        controller = Controller()
        controller.engines[5] = EngineRecord(5, FoolscapEngineConnection(None),
                                             EngineQueue(5, lambda c: None))
        return commandchannel.CommandChannelServer(controller)

    server = loop.submit(setup).result(timeout=10)
    yield server
    loop.submit(server.close).result(timeout=10)


def _send(sock: socket.socket, message: Any) -> None:
    frame = msgpack.packb(message, use_bin_type=True)
    sock.sendall(struct.pack("!I", len(frame)) + frame)


def _receive(sock: socket.socket) -> Any:
    (size,) = struct.unpack("!I", sock.recv(4, socket.MSG_WAITALL))
    return msgpack.unpackb(sock.recv(size, socket.MSG_WAITALL), raw=False, strict_map_key=False)


def _hello(server: Any, engine_id: Any, secret: Any, kind: str = "engine") -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect("\0" + server.name[1:])
    _send(sock, [kind, engine_id, secret])
    return sock


def _refused(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""  # the controller closed it
    finally:
        sock.close()


def _attached(server: Any, deadline: float = 10.0) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        connection = server.controller.engines[5].connection
        if connection.local:
            return connection.end
        time.sleep(0.01)
    return None


def test_a_wrong_secret_or_engine_id_is_refused(server: Any) -> None:
    offer = ReactorThread.get().submit(server.offer, 5).result(timeout=10)
    assert _refused(_hello(server, 5, b"not the secret!!"))
    # The offer is spent by a failed attempt too: no guessing twice.
    assert _refused(_hello(server, 5, offer["secret"]))
    offer = ReactorThread.get().submit(server.offer, 5).result(timeout=10)
    assert _refused(_hello(server, 6, offer["secret"]))  # no such engine
    assert not server.controller.engines[5].connection.local


def test_the_secret_handed_over_foolscap_attaches_the_engine_once(server: Any) -> None:
    offer = ReactorThread.get().submit(server.offer, 5).result(timeout=10)
    assert offer["pid"] > 0 and offer["socket"].startswith("@")
    sock = _hello(server, 5, offer["secret"])
    try:
        assert _attached(server) is not None
        assert _refused(_hello(server, 5, offer["secret"]))  # one use only
    finally:
        sock.close()
    end = time.monotonic() + 10
    while server.controller.engines[5].connection.local and time.monotonic() < end:
        time.sleep(0.01)
    assert not server.controller.engines[5].connection.local  # closed: detached


@implementer(RIMultiEngineSession)
class FakeSession(Referenceable):  # type: ignore[misc]
    def remote_get_ids(self) -> list[int]:
        return [0, 1]

    def remote_execute(self, code: str, targets: Any, block: bool) -> Any:
        return {"ran": code}


def test_a_session_offer_lets_its_client_call_the_session_only(server: Any) -> None:
    offer = ReactorThread.get().submit(server.offer_session, FakeSession()).result(timeout=10)
    assert _refused(_hello(server, offer["id"], b"wrong secret!!!!", kind="session"))
    offer = ReactorThread.get().submit(server.offer_session, FakeSession()).result(timeout=10)
    sock = _hello(server, offer["id"], offer["secret"], kind="session")
    try:
        assert _receive(sock) == ["ok", None, None]
        _send(sock, [1, "get_ids", []])
        assert _receive(sock) == [1, True, [0, 1]]
        _send(sock, [2, "execute", ["x = 1", "all", True]])
        assert _receive(sock) == [2, True, {"ran": "x = 1"}]
        # Foolscap's own argument checks still apply...
        _send(sock, [3, "execute", [42, "all", True]])
        seq, ok, error = _receive(sock)
        assert (seq, ok) == (3, False) and "bad arguments to execute" in error["evalue"]
        # ...and what needs Foolscap references is refused.
        _send(sock, [4, "subscribe_events", [None, 0]])
        seq, ok, error = _receive(sock)
        assert (seq, ok) == (4, False) and "command channel" in error["evalue"]
    finally:
        sock.close()


def test_a_task_farm_session_is_checked_against_its_own_schema(server: Any) -> None:
    from ipython1.controller.taskfarm import TaskFarm
    from ipython1.controller.tasksession import TaskFarmSession

    def make() -> Any:
        session = TaskFarmSession(TaskFarm(server.controller), "alice/client-1", "alice")
        return server.offer_session(session)

    offer = ReactorThread.get().submit(make).result(timeout=10)
    sock = _hello(server, offer["id"], offer["secret"], kind="session")
    try:
        assert _receive(sock) == ["ok", None, None]
        _send(sock, [1, "reserve", [3]])
        assert _receive(sock) == [1, True, {"status": "ok", "value": 0}]
        # RITaskFarmSession's argument checks, as Foolscap would apply them...
        _send(sock, [2, "wait", [["not an id"], False, None]])
        seq, ok, error = _receive(sock)
        assert (seq, ok) == (2, False) and error["ename"] == "KernelError"
        assert "bad arguments to wait" in error["evalue"]
        _send(sock, [3, "reserve", []])
        seq, ok, error = _receive(sock)
        assert (seq, ok) == (3, False) and "bad arguments to reserve" in error["evalue"]
        # ...the multi-engine session's methods are not this session's...
        _send(sock, [4, "execute", ["x = 1", "all", True]])
        seq, ok, error = _receive(sock)
        assert (seq, ok) == (4, False) and "cannot be called over the command channel" in \
            error["evalue"]
        # ...and a call that hands out Foolscap references stays on Foolscap.
        _send(sock, [5, "open_command_channel", ["host"]])
        seq, ok, error = _receive(sock)
        assert (seq, ok) == (5, False) and "'open_command_channel' cannot be called" in \
            error["evalue"]
        _send(sock, [6, commandchannel.SYNC, []])
        assert _receive(sock) == [6, True, None]
        _send(sock, [7, "queue_status", [False]])
        seq, ok, status = _receive(sock)
        assert (seq, ok) == (7, True) and status["value"]["pending"] == 0
    finally:
        sock.close()


# -- the engine's end: read and answered on the shell thread --------------------------


def test_the_engine_end_reads_whole_frames_however_they_arrive() -> None:
    ours, theirs = socket.socketpair()
    try:
        channel = commandchannel.EngineChannel(ours)
        small = [msgpack.packb([i, "keys", []]) for i in (1, 2)]
        big = msgpack.packb([3, "push", [b"x" * 300_000]])
        wire = b"".join(struct.pack("!I", len(f)) + f for f in [*small, big])
        theirs.sendall(wire[:2])  # half a header
        assert channel.receive() == []
        # The rest in two writes (the big frame split), from another thread:
        # the socket buffer cannot hold it all.
        sender = threading.Thread(target=lambda: (theirs.sendall(wire[2:-100_000]),
                                                  theirs.sendall(wire[-100_000:])))
        sender.start()
        frames: list[Any] = []
        while len(frames) < 3:
            frames += channel.receive()
        sender.join(10)
        assert [msgpack.unpackb(f) for f in frames[:2]] == [[1, "keys", []], [2, "keys", []]]
        assert bytes(frames[2]) == big
        channel.answer(7, True, b"reply")
        (size,) = struct.unpack("!I", theirs.recv(4, socket.MSG_WAITALL))
        assert msgpack.unpackb(theirs.recv(size, socket.MSG_WAITALL)) == [7, True, b"reply"]
        channel.answer(8, True, {1, 2})  # msgpack cannot hold a set: an error, not silence
        (size,) = struct.unpack("!I", theirs.recv(4, socket.MSG_WAITALL))
        seq, ok, error = msgpack.unpackb(theirs.recv(size, socket.MSG_WAITALL))
        assert (seq, ok) == (8, False) and "cannot be sent" in error["evalue"]
        theirs.close()
        assert channel.receive() is None and channel.closed
    finally:
        ours.close()
        theirs.close()


class EchoEngine:
    """Stands in for EngineReferenceable: what the runner asks of its channel's host."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def job(self, op: str, args: list[Any]) -> Any:
        if op != "echo":
            return None

        def job() -> Any:
            self.threads.append(threading.get_ident())
            return args[0]

        return job

    def output_idle(self) -> bool:
        return True


def test_channel_calls_run_on_the_shell_thread_and_interrupts_name_their_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ipython1.engine import runner as runner_module
    from ipython1.engine.runner import ShellRunner

    name = f"@ipython1-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name[1:])
    listener.listen(1)
    listener.settimeout(10)
    runner, host = ShellRunner(), EchoEngine()
    shell = threading.Thread(target=runner.run_forever, daemon=True)
    shell.start()
    conn = None
    try:
        offer = {"socket": name, "kind": "engine", "id": 5, "secret": b"s" * 16,
                 "pid": os.getpid()}
        runner.open_channel(offer, host)
        conn, _ = listener.accept()
        conn.settimeout(10)
        assert _receive(conn) == ["engine", 5, b"s" * 16]

        def call(seq: int, op: str, *args: Any) -> Any:
            _send(conn, [seq, op, list(args)])
            answer = _receive(conn)
            assert answer[0] == seq
            return answer[1], decode_reply(answer[2])  # every reply is msgpack bytes

        ok, reply = call(1, "echo", "hi")
        assert ok and reply["status"] == "ok" and reply["value"] == "hi"
        assert host.threads == [runner.thread_ident]  # the shell thread ran it
        assert not runner.interrupt(channel_seq=1)  # over: nothing to stop
        assert runner.interrupt(channel_seq=2)  # not read yet: stopped as it starts
        ok, reply = call(2, "echo", "never")
        assert reply["status"] == "error" and reply["error"]["ename"] == "KeyboardInterrupt"
        ok, reply = call(3, "echo", "after")  # the interrupt was for 2 only
        assert reply["status"] == "ok" and reply["value"] == "after"
        assert len(host.threads) == 2
        ok, error = call(4, "nope")
        assert not ok and "unknown command" in error["evalue"]
        # Jobs from the reactor still run while the shell waits on the channel.
        delivered = threading.Event()
        monkeypatch.setattr(runner_module, "reactor", SimpleNamespace(
            callFromThread=lambda f, *a: (f(*a), delivered.set())))
        replies: list[Any] = []
        runner.submit(lambda: "from the reactor").addCallback(replies.append)
        assert delivered.wait(10) and replies[0]["value"] == "from the reactor"
        # The controller closes the channel: the queue alone goes on.
        conn.close()
        delivered.clear()
        end = time.monotonic() + 10
        while runner._channel is not None and time.monotonic() < end:
            time.sleep(0.01)
        runner.submit(lambda: "still").addCallback(replies.append)
        assert delivered.wait(10) and replies[1]["value"] == "still"
    finally:
        runner.stop()
        shell.join(10)
        listener.close()
        if conn is not None:
            conn.close()
    assert not shell.is_alive()
