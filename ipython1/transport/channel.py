"""The command channel: the lean transport for engines and clients on the controller's host.

Foolscap parses and builds every message token by token in pure Python:
for a no-op on 256 engines it is most of the controller's and the engines'
CPU (docs/performance.md). Engines on the controller's own host (a laptop,
`ipcluster`, one node of a cluster) therefore take their queued commands
over a lean channel beside Foolscap:

1. The engine registers over Foolscap as always (the engine FURL is the
   capability). If it advertises the controller's host key (`localhost`:
   boot id, hostname, uid, namespaces), the controller calls its ``open_command_channel`` with,
   over that authenticated connection, the name of the controller's
   abstract Unix socket, a one-time secret and the controller's pid.
2. The engine connects, checks with ``SO_PEERCRED`` that the controller's pid
   serves the socket, and sends its id and the secret. The controller checks
   the secret and that the peer runs as its own uid; only then does the
   engine's queue use the channel.
3. Commands go as length-prefixed msgpack frames (`framing`) ``[seq, op, args]`` and
   come back as ``[seq, ok, reply]``; replies are the engine's msgpack bytes
   (see `replies`), relayed as before. One command runs at a time per
   engine, so switching from Foolscap to the channel never reorders.

4. A client on the same host reaches its session the same way (the offer
   comes from ``open_command_channel`` on the session, and the controller
   says ok before the first call); its calls are checked against the
   session's own Foolscap schemas (``RIMultiEngineSession``,
   ``RITaskFarmSession``) and reach the same session methods.

The engine reads and answers its frames on its shell thread (see
`EngineChannel`), so an ``interrupt`` cannot take the channel: it goes over
Foolscap naming the channel call it is meant for, and the engine stops that
call whether it is running or not read yet (never a later one).
Everything else (registration, kill, live output, transfers, engine death,
calls that pass Foolscap references) stays on Foolscap. If the channel cannot
be set up, or a command's arguments do not fit msgpack, commands go over
Foolscap as before (a client's calls in their order: `ChannelSessionConnection`).
`ChannelEngineConnection` and `ChannelSessionConnection` are this transport's
IEngineConnection and ISessionConnection.
``IPYTHON1_COMMAND_CHANNEL=0`` in the controller's environment turns it
off; in a client's or an engine's, for that process only.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
from typing import Any

from foolscap.api import DeadReferenceError
from twisted.internet import defer, protocol, reactor
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ipython1.common.errors import KernelError, error_from_wire, error_to_wire
from ipython1.common.listenguard import ListenerGuard
from ipython1.common.localhost import env_enabled, host_key, peer_credentials
from ipython1.common.localhost import socket_address as _address
from ipython1.common.replies import dumps, loads
from ipython1.transport.foolscap import FoolscapSessionConnection
from ipython1.transport.framing import HEADER, MAX_FRAME, FrameReader, FrameReceiver
from ipython1.transport.interfaces import IEngineConnection, ISessionConnection

log = Logger()

ENV = "IPYTHON1_COMMAND_CHANNEL"
# Session methods that take or give Foolscap references stay on Foolscap.
SESSION_FOOLSCAP_ONLY = frozenset({"connect", "connect_tasks", "subscribe_output",
                                   "subscribe_events", "open_command_channel"})
# A client's no-op: answered as soon as read, so every call before it has arrived.
SYNC = "_sync"
# An offer not taken within this many seconds is forgotten (with the session it
# names): engines retry with the same offer for about a minute (tcpchannel).
OFFER_TTL = 120.0


def enabled() -> bool:
    return env_enabled(ENV)


# -- both ends: calls one way, answers the other ---------------------------------------


def answer_frame(seq: int, ok: bool, payload: Any) -> bytes:
    """Encode [seq, ok, payload]; an answer msgpack cannot hold becomes an error."""
    try:
        return dumps([seq, ok, payload])
    except (TypeError, ValueError, OverflowError) as e:
        return dumps([seq, False, error_to_wire(KernelError(f"the answer cannot be sent: {e}"))])



class _CallBodies:
    """Encode a call's [op, args(, tag)] once for the engines of a fan-out.

    A command sent to N engines is N calls with the same op, the same args
    object and the same tag, each with its own seq: the body after the seq is
    encoded for the first and reused (one copy of a pushed value, not N).
    Only a tuple (the fan-out's own) is reused, by identity; the last one and
    its body are held until the next call.
    """

    def __init__(self) -> None:
        self._last: tuple[str, Any, str | None, bytes] | None = None  # keeps args alive

    def frame(self, seq: int, op: str, args: Any, tag: str | None) -> bytes:
        """Return the msgpack of [seq, op, list(args)] or [seq, op, list(args), tag]."""
        last = self._last
        if last is not None and last[1] is args and last[0] == op and last[2] == tag \
                and type(args) is tuple:
            body = last[3]
        else:
            body = dumps(op) + dumps(list(args)) + (dumps(tag) if tag is not None else b"")
            self._last = (op, args, tag, body)
        return (b"\x93" if tag is None else b"\x94") + dumps(seq) + body


call_frame = _CallBodies().frame


class _Channel(FrameReceiver):
    """Length-prefixed msgpack frames: calls [seq, op, args], answers [seq, ok, payload]."""

    lost_message = "the command channel closed"

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[int, Deferred[Any]] = {}
        self._seqs = itertools.count(1)
        self.closed = False

    # the calling side

    def call(self, op: str, args: Any, tag: str | None = None) -> Deferred[Any]:
        """Send one call (an engine's command may carry a tag: its reply is kept);
        fire with its answer. Raises if args do not fit msgpack."""
        seq = next(self._seqs)
        frame = call_frame(seq, op, args, tag)  # TypeError etc.: the caller uses Foolscap
        d: Deferred[Any] = Deferred()
        self._pending[seq] = d
        self.sendFrame(frame)
        return d

    def call_in_flight(self) -> int | None:
        """Return the seq of the call awaiting its answer (the last, if several)."""
        return max(self._pending, default=None)

    def _answered(self, seq: int, ok: bool, payload: Any) -> None:
        d = self._pending.pop(seq, None)
        if d is None:
            return
        if ok:
            d.callback(payload)
        else:
            d.errback(Failure(error_from_wire(payload)))

    # the serving side

    def _serve(self, seq: int, method: Any, *args: Any) -> None:
        """Answer a call with method(*args) (a Deferred, a value or an exception)."""
        d = defer.maybeDeferred(method, *args)
        d.addCallbacks(lambda answer: self._answer(seq, True, answer),
                       lambda f: self._answer(seq, False, error_to_wire(f.value)))

    def _answer(self, seq: int, ok: bool, payload: Any) -> None:
        if self.connected:
            self.sendFrame(answer_frame(seq, ok, payload))

    def _bad_frame(self, why: str) -> None:
        log.warn("command channel: {why}; closing", why=why)
        self.transport.loseConnection()

    def frameTooLong(self, why: str) -> None:
        self._bad_frame(why)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(Failure(DeadReferenceError(self.lost_message)))


# -- the controller's end ----------------------------------------------------------


class ControllerEnd(_Channel):
    """An engine's channel (the controller calls) or a client's (the client calls)."""

    transport_name = "channel"  # what engine_info and ipcluster status call it
    engines_hear_ok = False  # whether an engine is told it is attached, as a client is

    def __init__(self, server: CommandChannelServer, guard: Any = None) -> None:
        super().__init__()
        self.server = server
        self._guard = guard  # the listener's (the Unix socket's: the server's)
        self.kind: str | None = None  # "engine" or "session", once attached
        self.engine_id: int | None = None
        self.session: Any = None

    @property
    def guard(self) -> Any:
        return self._guard if self._guard is not None else self.server.guard

    @property
    def lost_message(self) -> str:  # type: ignore[override]
        return f"engine {self.engine_id}'s command channel closed"

    def connectionMade(self) -> None:
        if not self._peer_allowed():
            self.transport.abortConnection()
            return
        # Unauthenticated until it presents an offer's secret: capped and quick
        # (see listenguard).
        self._guard_slot = self.guard.admit()
        if not self._guard_slot:
            self.transport.abortConnection()
            return
        self._deadline = reactor.callLater(self.guard.deadline, self._too_slow)

    def _peer_allowed(self) -> bool:
        """Tell whether the peer may try a secret: on the Unix socket, our own uid only."""
        _pid, uid = peer_credentials(self.transport.getHandle())
        if uid != os.getuid():
            log.warn("command channel: refused a process of uid {uid}", uid=uid)
            return False
        return True

    def _too_slow(self) -> None:
        self.guard.timed_out_one()
        self.transport.abortConnection()

    def _leave_guard(self) -> None:
        """No longer unauthenticated (attached, or gone): free the guard's slot."""
        if getattr(self, "_guard_slot", False):
            self._guard_slot = False
            self.guard.release()
        deadline = getattr(self, "_deadline", None)
        if deadline is not None and deadline.active():
            deadline.cancel()

    def frameReceived(self, data: bytes | bytearray) -> None:
        try:
            message = loads(data)
            first, second, third = message
        except (ValueError, TypeError) as e:
            return self._bad_frame(f"bad frame ({e})")
        if self.kind is None:
            if not self.server.attach(first, second, third, self):
                self.transport.loseConnection()
                return
            self.kind = first
            self.authenticated()
            self._leave_guard()
            if self.kind == "session" or self.engines_hear_ok:
                self.sendFrame(dumps(["ok", None, None]))  # the client may now call
            return
        if self.kind == "engine":
            self._answered(first, second, third)
            return
        self._call_session(first, second, third)

    def _call_session(self, seq: Any, method: Any, args: Any) -> None:
        if method == SYNC:  # every earlier call has been handed to the session
            self._answer(seq, True, None)
            return
        try:
            if method in SESSION_FOOLSCAP_ONLY or not isinstance(args, list):
                raise KeyError(method)
            # The session's own RemoteInterface (RIMultiEngineSession, RITaskFarmSession...).
            schema = self.session.getInterface()[method]
        except (KeyError, TypeError):
            self._answer(seq, False, error_to_wire(KernelError(
                f"{method!r} cannot be called over the command channel")))
            return
        try:
            schema.checkAllArgs(tuple(args), {}, True)  # what Foolscap checks on arrival
        except Exception as e:
            self._answer(seq, False, error_to_wire(KernelError(
                f"bad arguments to {method}: {e}")))
            return
        self._serve(seq, self.session.doRemoteCall, method, args, {})

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._leave_guard()
        super().connectionLost(reason)
        self.server.detach(self)


class CommandChannelServer:
    """The controller's abstract Unix socket that engines and clients on its host use,
    and, given listen_tcp (which makes a `tcpchannel.TCPListener` for this server),
    its TLS port for other hosts."""

    def __init__(self, controller: Any, listen_tcp: Any = None) -> None:
        self.controller = controller
        self.name = f"@ipython1-controller-{os.getpid()}-{secrets.token_hex(8)}"
        self.host = host_key()
        self._offers: dict[tuple[str, int], tuple[bytes, Any, float]] = {}
        self._session_ids = itertools.count(1)

        self.guard = ListenerGuard(f"command channel {self.name}")
        self._port = None
        if self.host:
            factory = protocol.Factory.forProtocol(lambda: ControllerEnd(self))
            self._port = reactor.listenUNIX(_address(self.name), factory)
        self.tcp: Any = listen_tcp(self) if listen_tcp is not None else None

    @property
    def tcp_port(self) -> int | None:
        """Return the TLS port engines and clients on other hosts use, if any."""
        return self.tcp.port if self.tcp is not None else None

    def _offer(self, kind: str, ident: int, target: Any, tcp: bool) -> dict[str, Any]:
        secret = secrets.token_bytes(16)
        now = reactor.seconds()
        # Offers never taken (a client whose TLS port is blocked or turned off, an
        # engine that died) must not keep their sessions: drop the stale ones.
        for key in [k for k, (_, _, at) in self._offers.items() if now - at > OFFER_TTL]:
            del self._offers[key]
        self._offers[kind, ident] = (secret, target, now)
        if tcp:
            return {"tcp_port": self.tcp.port, "kind": kind, "id": ident, "secret": secret}
        return {"socket": self.name, "kind": kind, "id": ident, "secret": secret,
                "pid": os.getpid()}

    def offer(self, engine_id: int, tcp: bool = False) -> dict[str, Any]:
        """Return what an engine needs to connect (sent to it over Foolscap)."""
        return self._offer("engine", engine_id, None, tcp)

    def offer_session(self, session: Any, tcp: bool = False) -> dict[str, Any]:
        """Return what a client needs to reach its session (sent over Foolscap)."""
        return self._offer("session", next(self._session_ids), session, tcp)

    def offer_for(self, host: Any) -> bool | None:
        """Say which listener suits a peer whose host key is host: False for the
        Unix socket (the same host), True for TLS, None for neither."""
        if self._port is not None and host and host == self.host:
            return False
        return True if self.tcp is not None else None

    def attach(self, kind: Any, ident: Any, secret: Any, end: ControllerEnd) -> bool:
        key = (kind, ident)
        offered = self._offers.pop(key, None) if kind in ("engine", "session") and \
            isinstance(ident, int) else None
        if (offered is None or not isinstance(secret, bytes)
                or reactor.seconds() - offered[2] > OFFER_TTL
                or not secrets.compare_digest(offered[0], secret)):
            log.warn("command channel: refused a connection for {kind} {id!r}",
                     kind=kind, id=ident)
            return False
        if kind == "session":
            end.session = offered[1]
            end.session.channel_end = end  # its replies count as unread there too
            return True
        record = self.controller.engines.get(ident)
        if record is None:
            return False
        end.engine_id = ident
        record.connection = ChannelEngineConnection(end, record.connection)
        return True

    def detach(self, end: ControllerEnd) -> None:
        record = self.controller.engines.get(end.engine_id)
        connection = record.connection if record is not None else None
        if isinstance(connection, ChannelEngineConnection) and connection.end is end:
            record.connection = connection.fallback

    def close(self) -> Deferred[Any]:
        closing = [defer.maybeDeferred(p.stopListening) for p in (self._port,) if p]
        if self.tcp is not None:
            closing.append(self.tcp.close())
        return defer.gatherResults(closing)


# -- the engine's and the client's ends -------------------------------------------------------


class EngineChannel:
    """The engine's end, read and written on the engine's shell thread.

    Commands run on the shell thread; reading and answering them there too
    spares each command two hand-offs between the reactor and the shell
    thread (about 40% of an engine's CPU per no-op with 256 engines on two
    cores, where every hand-off wakes a process with cold caches). Plain
    blocking socket calls: one thread owns the socket, nothing else writes.
    """

    READ_SIZE = 1 << 16

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()  # kept: a closed socket forgets it
        self._reader = FrameReader(MAX_FRAME)  # the controller was checked (SO_PEERCRED)
        self.closed = False
        self.early: list[Any] = []  # frames read before the shell thread took over

    @classmethod
    def connect(cls, offer: dict[str, Any], timeout: float = 10.0) -> EngineChannel | None:
        """Connect and say who we are; None if the controller does not serve the socket."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(_address(offer["socket"]))
            if not _served_by_controller(sock, offer):
                sock.close()
                return None
            sock.settimeout(None)
            channel = cls(sock)
            channel.send(dumps([offer["kind"], offer["id"], offer["secret"]]))
            return channel
        except OSError as e:
            log.warn("command channel: cannot connect ({e}); commands take Foolscap", e=e)
            sock.close()
            return None

    def pending(self) -> int:
        """Return how much is read but not yet returned (frames kept, TLS bytes held)."""
        if self.early:
            return len(self.early)
        pending = getattr(self.sock, "pending", None)
        return pending() if pending is not None else 0

    def receive(self) -> list[Any] | None:
        """Read what has come (blocks until something has); return the whole frames.

        None once the controller closed the channel. The rest of a large frame
        is read straight into it.
        """
        if self.early:
            frames, self.early = self.early, []
            return frames
        rest = self._reader.unfilled()
        try:
            if rest is not None and len(rest) > self.READ_SIZE:
                n = self.sock.recv_into(rest)
                return self._reader.filled(n) if n else self._closed()
            data = self.sock.recv(self.READ_SIZE)
        except OSError:
            return self._closed()
        return self._reader.feed(data) if data else self._closed()

    def _closed(self) -> None:
        self.closed = True
        return None

    def send(self, frame: bytes) -> None:
        header = HEADER.pack(len(frame))
        if len(frame) > self.READ_SIZE:
            self.sock.sendall(header)
            self.sock.sendall(frame)
        else:
            self.sock.sendall(header + frame)

    def answer(self, seq: int, ok: bool, payload: Any) -> None:
        """Send [seq, ok, payload]."""
        try:
            self.send(answer_frame(seq, ok, payload))
        except OSError:
            self.closed = True  # the controller went away: its owner closes it

    def close(self) -> None:
        """Close the socket (its owner, once it stopped polling it)."""
        self.closed = True
        self.sock.close()


class ClientEnd(_Channel):
    """A client's end: its session's calls go out here once the controller said ok."""

    lost_message = "the controller's command channel closed"

    def __init__(self, offer: dict[str, Any]) -> None:
        super().__init__()
        self.offer = offer
        self.ready: Deferred[ClientEnd] = Deferred()

    def connectionMade(self) -> None:
        """Check that the controller serves the socket, then say who we are."""
        if not _served_by_controller(self.transport.getHandle(), self.offer):
            self.transport.loseConnection()
            return
        self.sendFrame(dumps([self.offer["kind"], self.offer["id"], self.offer["secret"]]))

    def frameReceived(self, data: bytes | bytearray) -> None:
        try:
            first, second, third = loads(data)
        except (ValueError, TypeError) as e:
            return self._bad_frame(f"bad frame ({e})")
        if first == "ok" and not self.ready.called:
            self.authenticated()
            self.ready.callback(self)
            return
        self._answered(first, second, third)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        if not self.ready.called:
            self.ready.errback(reason)


@implementer(IEngineConnection)
class ChannelEngineConnection:
    """An engine whose queued commands take its command channel.

    Interrupts, kills and the other calls outside the queue still go over
    Foolscap (the engine reads the channel only between commands), as do
    commands whose arguments msgpack cannot hold.
    """

    local = True

    def __init__(self, end: ControllerEnd, fallback: IEngineConnection) -> None:
        self.end = end
        self.fallback = fallback  # the engine's Foolscap connection, back when the channel closes

    @property
    def tubid(self) -> str:
        return self.fallback.tubid  # type: ignore[no-any-return]

    @property
    def name(self) -> str:
        return self.end.transport_name

    def call(self, op: str, args: Any, tag: str | None = None) -> Deferred[Any]:
        if not self.end.closed:
            try:
                return self.end.call(op, args, tag)
            except (TypeError, ValueError, OverflowError):
                pass  # arguments msgpack cannot hold: Foolscap carries them
        return self.fallback.call(op, args, tag)  # type: ignore[no-any-return]

    def interrupt(self) -> Deferred[bool]:
        # A command on the channel may not have reached the engine yet: name
        # it, so the engine stops it as it starts (and never a later one).
        return self.fallback.control(  # type: ignore[no-any-return]
            "interrupt", self.end.call_in_flight())

    def kill(self) -> Deferred[None]:
        return self.fallback.kill()  # type: ignore[no-any-return]

    def control(self, method: str, *args: Any) -> Deferred[Any]:
        return self.fallback.control(method, *args)  # type: ignore[no-any-return]

    def notifyOnDisconnect(self, callback: Any, *args: Any) -> Any:
        return self.fallback.notifyOnDisconnect(callback, *args)

    def close(self) -> None:
        if self.end.transport is not None:
            self.end.transport.loseConnection()


@implementer(ISessionConnection)
class ChannelSessionConnection:
    """Send a session's calls over the channel when they fit, else Foolscap; keep their order.

    The controller reads the channel and the Foolscap connection separately,
    so a call that must take Foolscap (its arguments do not fit msgpack)
    could overtake channel calls sent before it, and channel calls sent after
    it could overtake it (a ``submit`` behind the ``wait`` on its tasks).
    So the path only changes once the other one is drained: before a call
    leaves the channel for Foolscap while channel calls are unanswered, a
    ``SYNC`` goes over the channel and this call and later ones are held until
    it is answered (the controller has then handed every earlier call to the
    session); while a Foolscap call is unanswered, later calls take Foolscap too.
    """

    def __init__(self, channel: _Channel | None, reference: Any) -> None:
        self.channel = channel
        self.reference = reference
        self._foolscap = FoolscapSessionConnection(reference)
        self._foolscap_busy = 0  # Foolscap calls sent, not answered
        self._unsynced = False  # channel calls sent since the last SYNC answer
        self._held: list[tuple[str, Any, bool, Deferred[Any]]] | None = None

    @property
    def local(self) -> bool:
        """Tell whether calls that fit msgpack take the channel."""
        return self.channel is not None and not self.channel.closed

    def notifyOnDisconnect(self, callback: Any, *args: Any) -> Any:
        return self._foolscap.notifyOnDisconnect(callback, *args)

    def call(self, op: str, args: Any, may_use_channel: bool | None = None) -> Deferred[Any]:
        """Call op with args on the session; fire with its answer."""
        if may_use_channel is None:
            may_use_channel = op not in SESSION_FOOLSCAP_ONLY
        if self._held is not None:
            d: Deferred[Any] = Deferred()
            self._held.append((op, args, may_use_channel, d))
            return d
        return self._send(op, args, may_use_channel)

    def _send(self, op: str, args: Any, may_use_channel: bool) -> Deferred[Any]:
        channel = self.channel
        usable = channel is not None and not channel.closed
        if usable and may_use_channel and not self._foolscap_busy:
            try:
                d = channel.call(op, args)  # type: ignore[union-attr]
                self._unsynced = True
                return d
            except (TypeError, ValueError, OverflowError):
                pass  # arguments msgpack cannot hold: Foolscap carries them
        if usable and self._unsynced and channel._pending:  # type: ignore[union-attr]
            held: Deferred[Any] = Deferred()
            self._held = [(op, args, may_use_channel, held)]
            channel.call(SYNC, ()).addBoth(self._release)  # type: ignore[union-attr]
            return held
        self._foolscap_busy += 1
        return self._foolscap.call(op, args).addBoth(self._foolscap_answered)

    def _release(self, _: Any) -> None:
        held, self._held = self._held or [], None
        self._unsynced = False  # the controller has every channel call sent so far
        for op, args, may_use_channel, d in held:
            if self._held is not None:  # a call just sent had to wait again
                self._held.append((op, args, may_use_channel, d))
            else:
                self._send(op, args, may_use_channel).chainDeferred(d)

    def _foolscap_answered(self, answer: Any) -> Any:
        self._foolscap_busy -= 1
        return answer


SessionCalls = ChannelSessionConnection  # its name before the transport package


def session_connection(reference: Any, channel: _Channel | None) -> ISessionConnection:
    """Return a client's connection to its session: the channel's if one is open."""
    if channel is None:
        return FoolscapSessionConnection(reference)
    return ChannelSessionConnection(channel, reference)


def offer_to_client(channels: CommandChannelServer | None, session: Any,
                    host: str) -> dict[str, Any] | None:
    """Offer session to a client whose host key is host: the Unix socket if it is
    ours, else the TLS port; None if neither."""
    tcp = channels.offer_for(host) if channels is not None else None
    if tcp is None:
        return None
    return channels.offer_session(session, tcp=tcp)  # type: ignore[union-attr]


def connect_client(offer: Any, timeout: float = 5.0) -> Deferred[ClientEnd | None]:
    """Open a client's end; fire with it once the controller accepted it, else None
    (an offer of the TLS port: see tcpchannel.connect_session)."""
    if not _valid(offer):
        return defer.succeed(None)
    end = ClientEnd(offer)
    factory = protocol.ClientFactory.forProtocol(lambda: end)
    reactor.connectUNIX(_address(offer["socket"]), factory, timeout=timeout)
    return await_ready(end, timeout)


def await_ready(end: ClientEnd, timeout: float) -> Deferred[ClientEnd | None]:
    """Fire with end once the controller accepted it; None if not within timeout."""
    d = end.ready
    d.addTimeout(timeout, reactor)

    def failed(_f: Failure) -> None:
        if end.transport is not None:
            end.transport.loseConnection()
        return None

    return d.addErrback(failed)


def _served_by_controller(sock: socket.socket, offer: dict[str, Any]) -> bool:
    """Tell whether the offering controller (its pid, our uid) is at the other end."""
    pid, uid = peer_credentials(sock)
    if pid != offer["pid"] or uid != os.getuid():
        log.warn("command channel: the socket is not served by the controller")
        return False
    return True


def valid_engine_offer(offer: Any) -> bool:
    return _valid(offer) and offer["kind"] == "engine"


def _valid(offer: Any) -> bool:
    return (isinstance(offer, dict) and isinstance(offer.get("socket"), str)
            and isinstance(offer.get("secret"), bytes) and isinstance(offer.get("pid"), int)
            and isinstance(offer.get("id"), int) and offer.get("kind") in ("engine", "session"))
