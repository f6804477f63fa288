"""The command channel: an engine's queued commands, for engines on the controller's host.

Foolscap parses and builds every message token by token in pure Python:
for a no-op on 256 engines it is most of the controller's and the engines'
CPU (docs/performance.md). Engines on the controller's own host (a laptop,
`ipcluster`, one node of a cluster) therefore take their queued commands
over a lean channel beside Foolscap:

1. The engine registers over Foolscap as always (the engine FURL is the
   capability). If it advertises the controller's host key (boot id,
   hostname, uid), the controller calls its ``open_command_channel`` with,
   over that authenticated connection, the name of the controller's
   abstract Unix socket, a one-time secret and the controller's pid.
2. The engine connects, checks with ``SO_PEERCRED`` that the controller's pid
   serves the socket, and sends its id and the secret. The controller checks
   the secret and that the peer runs as its own uid; only then does the
   engine's queue use the channel.
3. Commands go as length-prefixed msgpack frames ``[seq, op, args]`` and
   come back as ``[seq, ok, reply]``; replies are the engine's msgpack bytes
   (see `replies`), relayed as before. One command runs at a time per
   engine, so switching from Foolscap to the channel never reorders.

Everything else (registration, kill, interrupt, live output, transfers,
engine death) stays on Foolscap. If the channel cannot be set up, or a
command's arguments do not fit msgpack, commands go over Foolscap as before.
``IPYTHON1_COMMAND_CHANNEL=0`` in the controller's environment turns it off.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import struct
from typing import Any

import msgpack
from foolscap.api import DeadReferenceError
from twisted.internet import defer, protocol, reactor
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from ipython1.kernel.errors import KernelError, error_from_wire, error_to_wire

log = Logger()

ENV = "IPYTHON1_COMMAND_CHANNEL"
# The queued commands of RIEngine: what the channel may carry, nothing else.
OPS = frozenset({"execute", "push", "pull", "apply", "get_result", "keys", "reset",
                 "history", "inspect", "who", "whos", "complete", "run_tasks"})
MAX_FRAME = 2**31 - 1


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "no", "false", "off")


def host_key() -> str:
    """Name this host and user: engines with the controller's key may use the channel."""
    if not hasattr(socket, "SO_PEERCRED"):
        return ""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = f.read().strip()
    except OSError:
        return ""
    return f"{boot_id}:{socket.gethostname()}:{os.getuid()}"


def peer_credentials(transport: Any) -> tuple[int, int]:
    """Return the pid and uid of the process at the other end of a Unix socket."""
    pid, uid, _gid = struct.unpack("3i", transport.getHandle().getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


def _pack(message: Any) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _address(name: str) -> str:
    return "\0" + name[1:] if name.startswith("@") else name


# -- the controller's end ----------------------------------------------------------


class ControllerEnd(Int32StringReceiver):
    """One engine's channel, as the controller sees it."""

    MAX_LENGTH = MAX_FRAME

    def __init__(self, server: CommandChannelServer) -> None:
        self.server = server
        self.engine_id: int | None = None
        self._pending: dict[int, Deferred[Any]] = {}
        self._seqs = itertools.count(1)
        self.closed = False

    def connectionMade(self) -> None:
        _pid, uid = peer_credentials(self.transport)
        if uid != os.getuid():
            log.warn("command channel: refused a process of uid {uid}", uid=uid)
            self.transport.loseConnection()

    def stringReceived(self, data: bytes) -> None:
        try:
            message = _unpack(data)
            if self.engine_id is None:
                engine_id, secret = message
                if not self.server.attach(engine_id, secret, self):
                    self.transport.loseConnection()
                    return
                self.engine_id = engine_id
                return
            seq, ok, payload = message
        except (ValueError, TypeError) as e:
            log.warn("command channel: bad frame ({e}); closing", e=e)
            self.transport.loseConnection()
            return
        d = self._pending.pop(seq, None)
        if d is None:
            return
        if ok:
            d.callback(payload)
        else:
            d.errback(Failure(error_from_wire(payload)))

    def call(self, op: str, args: tuple[Any, ...]) -> Deferred[Any]:
        """Send one command; fire with the engine's reply. Raises if args do not fit."""
        seq = next(self._seqs)
        frame = _pack([seq, op, list(args)])  # TypeError etc.: the caller uses Foolscap
        d: Deferred[Any] = Deferred()
        self._pending[seq] = d
        self.sendString(frame)
        return d

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(Failure(DeadReferenceError(
                f"engine {self.engine_id}'s command channel closed")))
        self.server.detach(self)


class CommandChannelServer:
    """The controller's abstract Unix socket that engines on its host connect to."""

    def __init__(self, controller: Any) -> None:
        self.controller = controller
        self.name = f"@ipython1-controller-{os.getpid()}-{secrets.token_hex(8)}"
        self.host = host_key()
        self._offers: dict[int, bytes] = {}  # engine id -> its one-time secret
        factory = protocol.Factory.forProtocol(lambda: ControllerEnd(self))
        self._port = reactor.listenUNIX(_address(self.name), factory)

    def offer(self, engine_id: int) -> dict[str, Any]:
        """Return what an engine needs to connect (sent to it over Foolscap)."""
        secret = secrets.token_bytes(16)
        self._offers[engine_id] = secret
        return {"socket": self.name, "secret": secret, "pid": os.getpid()}

    def attach(self, engine_id: Any, secret: Any, end: ControllerEnd) -> bool:
        expected = self._offers.pop(engine_id, None) if isinstance(engine_id, int) else None
        record = self.controller.engines.get(engine_id)
        if (expected is None or not isinstance(secret, bytes) or record is None
                or not secrets.compare_digest(expected, secret)):
            log.warn("command channel: refused a connection for engine {id!r}", id=engine_id)
            return False
        record.channel = end
        return True

    def detach(self, end: ControllerEnd) -> None:
        record = self.controller.engines.get(end.engine_id)
        if record is not None and record.channel is end:
            record.channel = None

    def close(self) -> Deferred[Any]:
        return defer.maybeDeferred(self._port.stopListening)


# -- the engine's end -----------------------------------------------------------------------


class EngineEnd(Int32StringReceiver):
    """The engine's end: runs each command through its Foolscap-facing methods."""

    MAX_LENGTH = MAX_FRAME

    def __init__(self, engine: Any, engine_id: int, offer: dict[str, Any]) -> None:
        self.engine = engine  # the EngineReferenceable
        self.engine_id = engine_id
        self.offer = offer
        self.open = False

    def connectionMade(self) -> None:
        pid, uid = peer_credentials(self.transport)
        if pid != self.offer["pid"] or uid != os.getuid():
            log.warn("command channel: the socket is not served by the controller")
            self.transport.loseConnection()
            return
        self.open = True
        self.sendString(_pack([self.engine_id, self.offer["secret"]]))

    def stringReceived(self, data: bytes) -> None:
        try:
            seq, op, args = _unpack(data)
        except (ValueError, TypeError):
            self.transport.loseConnection()
            return
        if op not in OPS:
            self._answer(seq, False, error_to_wire(KernelError(f"unknown command {op!r}"),
                                                   self.engine_id))
            return
        d = defer.maybeDeferred(getattr(self.engine, "remote_" + op), *args)
        d.addCallbacks(lambda reply: self._answer(seq, True, reply),
                       lambda f: self._answer(seq, False, error_to_wire(f.value, self.engine_id)))

    def _answer(self, seq: int, ok: bool, payload: Any) -> None:
        try:
            frame = _pack([seq, ok, payload])
        except (TypeError, ValueError, OverflowError) as e:
            frame = _pack([seq, False, error_to_wire(
                KernelError(f"the reply cannot be sent: {e}"), self.engine_id)])
        if self.transport is not None and self.connected:
            self.sendString(frame)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.open:
            log.info("command channel closed: {r}", r=reason.getErrorMessage())


def connect(engine: Any, engine_id: int, offer: dict[str, Any]) -> bool:
    """Open the engine's end of the channel (called over Foolscap by the controller)."""
    name = offer.get("socket")
    if not isinstance(name, str) or not isinstance(offer.get("secret"), bytes):
        return False
    factory = protocol.ClientFactory.forProtocol(lambda: EngineEnd(engine, engine_id, offer))
    reactor.connectUNIX(_address(name), factory, timeout=10)
    return True
