"""The engine's network side: what the controller calls, and the service that registers.

``EngineReferenceable`` is the engine as published to the controller; it
runs on the reactor thread and hands table ops to the `ShellRunner`.
``EngineService`` connects to the controller, registers (again after a loss),
and serves until it goes away.
"""

from __future__ import annotations

import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
from foolscap.api import Referenceable
from twisted.application import service
from twisted.internet import defer, reactor, threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger, globalLogPublisher
from zope.interface import implementer

from ipython1 import __version__
from ipython1.common import addresses, localhost, replies, wire
from ipython1.common.errors import KernelError, VersionMismatch
from ipython1.common.interfaces import RIEngine
from ipython1.common.logring import LogRing
from ipython1.common.versions import local_versions, refusal
from ipython1.engine import dataserver, localdata
from ipython1.engine.debugger import DebugSession
from ipython1.engine.kernel import BLOBS, EngineKernel, _CellFailed
from ipython1.engine.output import OutputBatcher
from ipython1.engine.rejoin import MAX_TAG, RECONNECT_TIMEOUT, LateReplies
from ipython1.engine.restart import exec_fresh
from ipython1.engine.runner import ShellRunner
from ipython1.transport import channel as command_channel
from ipython1.transport import foolscap as foolscap_transport
from ipython1.transport import tcpchannel
from ipython1.transport.data import local, refs, stream

log = Logger()


# This process's recent log lines, for logs() over the wire (engines on other hosts).
LOG_RING = LogRing()


@implementer(RIEngine)
class EngineReferenceable(Referenceable):  # type: ignore[misc]
    """The engine as published to the controller; runs on the reactor thread."""

    def __init__(self, kernel_factory: Callable[[], EngineKernel], runner: ShellRunner,
                 info: dict[str, Any]) -> None:
        self._runner = runner
        self._info = info
        self.certificate: bytes | None = None  # set once connected: the data channel's
        self._tls_context: Any = None  # TLS identity, whose context is made on first use
        self.controller_host: str | None = None
        self.controller_tubid: str | None = None  # the FURL's: checked by the TLS channel
        self._tcp_offer: dict[str, Any] | None = None  # until the controller is known
        self.local_data: localdata.LocalServer | None = None  # same-host transfers
        self.direct_data: dataserver.DirectServer | None = None  # clients on other hosts
        self._kernel: EngineKernel | None = None
        self._kernel_factory = kernel_factory
        self._output_observer: Any = None
        self.stream = OutputBatcher(self._send_output)
        # Task replies that outlive a lost controller (issue 15); on_late sends them.
        self.late = LateReplies()
        self.on_late: Callable[[], None] = lambda: None
        self._process: psutil.Process | None = None  # for stats(), made on first use
        self._debug: DebugSession | None = None  # the debugger a client drives, if any
        self._debug_reply: Deferred[dict[str, Any]] | None = None  # its next prompt

    @property
    def tls_context(self) -> Any:
        """The data channel's TLS server context (None before registration); made
        at the first transfer, not at registration (3-6 ms of CPU per engine)."""
        if self._tls_context is None and self.certificate is not None:
            self._tls_context = stream.server_context(self.certificate)
        return self._tls_context

    def _send_output(self, chunks: list[list[str]]) -> Deferred[None] | None:
        if self._output_observer is None:
            return None
        d = foolscap_transport.call(self._output_observer, "output", chunks)
        return d.addErrback(lambda f: None)  # the controller may be gone: nothing to tell

    def _flushed(self, reply: Any) -> Any:
        """Send a command's last output, and let it be delivered, before its reply.

        Foolscap runs inbound calls a turn later but completes answers at once,
        so a reply sent right behind the output could overtake it.
        """
        d = self.stream.flush()
        if d is None:
            return reply
        return d.addBoth(lambda _: reply)

    def _kernel_now(self) -> EngineKernel:
        """Return the kernel, creating it on first use (on the shell thread)."""
        if self._kernel is None:
            self._kernel = self._kernel_factory()
            self._kernel.debug_session_factory = self._debug_session
        self._kernel.engine_id = self._runner.engine_id
        return self._kernel

    def job(self, name: Any, args: Any, tag: str | None = None) -> Callable[[], Any] | None:
        """Return the job of a command (its reply is msgpack-encoded, replies.encode);
        None if args is not a list. It runs on the shell thread: EngineKernel.dispatch.
        A tagged command's reply is kept for a restarted controller (engine/rejoin.py):
        whoever encodes the reply hands the bytes to the job's ``sent``."""
        if not isinstance(args, list):
            return None
        if not (isinstance(tag, str) and len(tag) <= MAX_TAG):
            tag = None
        # Both jobs call dispatch themselves: no extra frame per command (test_hops).
        if name == "run_tasks" and args and isinstance(args[0], list):
            return self._kept_if_lost(args)
        return _NotedCommand(self, name, args, tag)

    def _kept_if_lost(self, args: list[Any]) -> Callable[[], Any]:
        """Run a task batch; keep its replies if the controller goes away meanwhile
        (issue 15)."""
        batch = args[0]

        def job() -> Any:
            generation = self.late.started(
                [item[0] for item in batch if isinstance(item, list) and item])
            value = None
            try:
                value = self._kernel_now().dispatch("run_tasks", args)
                return value
            finally:
                if self.late.finished(generation, value):
                    reactor.callFromThread(self.on_late)

        return job

    def output_idle(self) -> bool:
        return self.stream.idle()

    def drain_output(self) -> Deferred[None]:
        return self.stream.drain()

    def remote_run(self, name: str, args: list[Any], tag: str | None = None) -> Deferred[Any]:
        """Queue one command of the op table for the shell thread."""
        job = self.job(name, list(args), tag)
        d = self._runner.submit(job)  # type: ignore[arg-type]
        d.addBoth(self._flushed).addCallback(replies.encode)
        return d.addCallback(job.sent) if isinstance(job, _NotedCommand) else d

    def remote_kept_result(self, tag: str) -> bytes | None:
        """Hand a kept reply to a restarted controller (None: dropped, or too large)."""
        _, reply = self.late.kept_reply(tag)
        encoded = reply if reply is None or isinstance(reply, bytes) else replies.encode(reply)
        return encoded if isinstance(encoded, bytes) else None

    def remote_subscribe_output(self, observer: Any) -> None:
        """Send live stdout/stderr to observer.output(chunks) from now on."""
        self._output_observer = observer

    def remote_kill(self) -> None:
        log.info("killed by the controller")
        # Let Foolscap send the answer before the process goes.
        reactor.callLater(0.05, os._exit, 0)

    def remote_restart(self) -> None:
        """Start afresh in this process: same pid and id, a new namespace (mec.restart)."""
        if "mpi_rank" in self._info:
            raise KernelError("an MPI rank cannot be restarted alone: restart the whole job "
                              "(ipcluster start --mpi --restart-engines does on a death)")
        log.info("restarting on the controller's request")
        reactor.callLater(0.05, exec_fresh, self._runner.engine_id)

    def remote_interrupt(self, channel_seq: int | None = None) -> bool:
        return self._runner.interrupt(channel_seq)

    def remote_open_command_channel(self, engine_id: int, offer: dict[str, Any]) -> bool:
        """Take queued commands over the controller's local socket (transport.channel),
        or over TLS from another host (transport.tcpchannel)."""
        if tcpchannel.valid_offer(offer) and offer["kind"] == "engine":
            if not tcpchannel.enabled():
                return False
            self._tcp_offer = offer  # this comes before register_engine's answer
            self._connect_tcp_channel()
            return True
        if not command_channel.enabled() or not command_channel.valid_engine_offer(offer):
            return False  # IPYTHON1_COMMAND_CHANNEL=0 here too: Foolscap only
        self._runner.open_channel(offer, self)
        return True

    def controller_known(self, host: str, tubid: str) -> None:
        """Registered: where the controller is and who; a channel offered meanwhile opens."""
        self.controller_host, self.controller_tubid = host, tubid
        self._connect_tcp_channel()

    def _connect_tcp_channel(self) -> None:
        offer, host, tubid = self._tcp_offer, self.controller_host, self.controller_tubid
        if offer is None or host is None or tubid is None:
            return
        self._tcp_offer = None
        # Off the shell thread: a firewall that drops packets costs the timeout,
        # and commands keep taking Foolscap meanwhile.
        d = threads.deferToThread(tcpchannel.connect_engine, offer, host, tubid)
        d.addCallback(lambda end: end is not None and self._runner.open_channel(end, self))
        d.addErrback(lambda f: log.warn("command channel: {e}", e=f.getErrorMessage()))

    def remote_open_transfer(self, pairing_id: bytes, secret: bytes, relay_port: int,
                             direction: str, blob_id: bytes, sizes: list[int]) -> bool:
        """Serve one data-channel transfer on a worker thread (never the shell thread)."""
        if relay_port == 0:  # same host: the client comes to our local socket
            if self.local_data is None:
                raise refs.TransferError("this engine has no local data channel")
            self.local_data.expect(pairing_id, secret)  # a book of tickets
            return True
        if self.tls_context is None or self.controller_host is None:
            raise refs.TransferError("this engine has no data channel")
        d = threads.deferToThread(
            dataserver.engine_transfer, self.tls_context,
            addresses.join_host_port(self.controller_host, relay_port),
            pairing_id, secret, direction, blob_id, sizes, BLOBS)
        d.addErrback(lambda f: log.warn("data transfer failed: {e}", e=f.getErrorMessage()))
        return True

    def remote_expect_transfers(self, pairing_id: bytes, secret: bytes, uses: int,
                                plain: bool) -> bool:
        """Let a client make uses transfers on this engine's data port (see dataserver)."""
        if self.direct_data is None:
            raise refs.TransferError("this engine has no data port")
        self.direct_data.expect(pairing_id, secret, max(1, min(uses, 1024)), plain)
        return True

    def remote_properties(self) -> dict[str, Any]:
        return dict(self._info, busy=self._runner.busy)

    # -- remote pdb: prompts go to the controller, lines come back (see engine.debugger) --

    def _debug_session(self, at_breakpoint: bool) -> DebugSession:
        """Make a debugger whose prompts reach the client (called on the shell thread)."""
        def prompt(text: str) -> None:
            reactor.callFromThread(self._debugger_prompt, session, text, at_breakpoint)

        def end(text: str) -> None:
            reactor.callFromThread(self._debugger_ended, session, text)

        session = DebugSession(self._runner.engine_id, prompt, end)
        self._debug = session
        return session

    def _debugger_prompt(self, session: DebugSession, text: str, at_breakpoint: bool) -> None:
        reply, self._debug_reply = self._debug_reply, None
        if reply is not None:
            reply.callback({"output": text, "waiting": True})
            return

        def answered(taken: Any) -> None:
            if taken is not True:  # no client will drive it: go on, or give up
                log.info("no client to drive the debugger; {what}",
                         what="continuing" if at_breakpoint else "quitting")
                session.feed("continue" if at_breakpoint else None)

        observer = self._output_observer
        d = (foolscap_transport.call(observer, "debugger", text) if observer
             else defer.succeed(False))
        d.addCallbacks(answered, lambda f: answered(False))

    def _debugger_ended(self, session: DebugSession, text: str) -> None:
        if self._debug is session:
            self._debug = None
        reply, self._debug_reply = self._debug_reply, None
        if reply is not None:
            reply.callback({"output": text, "waiting": False})

    def remote_debug_input(self, line: str) -> Any:
        """Give the waiting debugger a line; fire with its output up to the next prompt."""
        session = self._debug
        if session is None or not session.waiting or self._debug_reply is not None:
            return {"output": "", "waiting": False}
        self._debug_reply = Deferred()
        session.feed(line)
        return self._debug_reply

    def remote_stats(self) -> dict[str, Any]:
        """Answer on the reactor thread, so a busy engine still reports."""
        if self._process is None:
            self._process = psutil.Process()
            self._process.cpu_percent(None)  # the first reading is always 0
        with self._process.oneshot():
            return {"cpu": self._process.cpu_percent(None),
                    "rss": self._process.memory_info().rss, "busy": int(self._runner.busy)}

    def remote_logs(self, lines: int) -> list[str]:
        return LOG_RING.tail(lines)



class _NotedCommand:
    """A command for the shell thread, noted if it ends after the controller went
    away (issue 15): the engine reports it when it rejoins; its record stays in
    the history. A tagged command's reply is kept for a restarted controller:
    the very bytes that answered it, handed to `sent` (encoded once)."""

    def __init__(self, engine: EngineReferenceable, name: Any, args: list[Any],
                 tag: str | None) -> None:
        self.engine, self.name, self.args, self.tag = engine, name, args, tag
        self.generation: int | None = None  # set when it starts

    def __call__(self) -> Any:
        late = self.engine.late
        self.generation = generation = late.command_started(self.tag) if self.tag \
            else late.generation
        outcome: dict[str, Any] = {}
        try:
            value = self.engine._kernel_now().dispatch(self.name, self.args)
            outcome = {"status": "ok", "value": value}
            return value
        except _CellFailed as e:
            outcome = {"status": "error", "value": e.record, "error": e.record.get("error")}
            raise
        except BaseException as e:  # noqa: B036 - noted, then handled as before
            outcome = {"status": "error", "error": {"ename": type(e).__name__}}
            raise
        finally:
            if late.lost_since(generation) and late.note(str(self.name), outcome):
                reactor.callFromThread(self.engine.on_late)

    def sent(self, encoded: bytes) -> bytes:
        """Keep a tagged command's encoded reply, if it ran (any thread); pass it on."""
        if self.tag and self.generation is not None and \
                self.engine.late.command_finished(self.generation, self.tag, encoded):
            reactor.callFromThread(self.engine.on_late)
        return encoded


def engine_info() -> dict[str, Any]:
    """Describe this engine process for the controller."""
    return {
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "ipython1": __version__,
        "cwd": os.getcwd(),
        "host_key": localhost.host_key(),
        "versions": local_versions(),
    }


# An engine that cannot register says so after this many seconds, then every
# UNREACHABLE_REPORT_EVERY seconds, until its --connect-timeout.
UNREACHABLE_REPORT_AFTER = 5.0


UNREACHABLE_REPORT_EVERY = 15.0


class EngineService(service.MultiService):
    """Connect to the controller, register, and serve until it goes away."""

    def __init__(self, furl_file: str, runner: ShellRunner, connect_timeout: float = 60.0,
                 furl: str | None = None, info: dict[str, Any] | None = None,
                 on_controller_lost: Callable[[], None] | None = None,
                 own_shell_thread: bool = True,
                 reconnect_timeout: float = RECONNECT_TIMEOUT,
                 start_gate: Any = None) -> None:
        super().__init__()
        self.start_gate = start_gate  # a StartGate shared with sibling engines, or None
        self.furl_file = furl_file
        self.furl = furl
        self.runner = runner
        self.connect_timeout = connect_timeout
        # How long to keep trying to rejoin a lost controller (0: exit at once).
        self.reconnect_timeout = reconnect_timeout
        self._registration: Any = None
        self.info = dict(engine_info(), **(info or {}))
        self.on_controller_lost = on_controller_lost or (lambda: os._exit(0))
        self.own_shell_thread = own_shell_thread
        self.engine_id: int | None = None
        self.registered: Deferred[int] = Deferred()
        self.tub = None
        self.referenceable = EngineReferenceable(self._make_kernel, runner, self.info)
        self.referenceable.on_late = self._deliver_late

    def _make_kernel(self) -> EngineKernel:
        return EngineKernel(on_output=self.referenceable.stream.write, runner=self.runner)

    def startService(self) -> None:
        super().startService()
        globalLogPublisher.addObserver(LOG_RING)
        if self.own_shell_thread:
            threading.Thread(target=self.runner.run_forever, name="shell", daemon=True).start()
        d = self._through_gate(self._start_and_register)
        d.addCallbacks(self.registered.callback, self._register_failed)

    def _start_and_register(self) -> Deferred[int]:
        # An MPI rank may sit in a GIL-holding collective, deaf to pings.
        self.tub = wire.client_tub(
            wire.MPI_DISCONNECT_TIMEOUT if "mpi_rank" in self.info else None)
        if local.local_enabled():
            try:
                self.referenceable.local_data = localdata.LocalServer(BLOBS)
                self.info["local_data"] = self.referenceable.local_data.info()
            except OSError as e:
                log.warn("no local data channel: {e}", e=e)
        # Build the IPython shell before registering: registered means ready.
        d = self.runner.submit(self.referenceable._kernel_now)
        return d.addCallback(lambda _: self._register())

    def stopService(self) -> Any:
        if self.referenceable.local_data is not None:
            self.referenceable.local_data.close()
        if self.referenceable.direct_data is not None:
            self.referenceable.direct_data.close()
        return super().stopService()

    @defer.inlineCallbacks
    def _through_gate(self, start: Callable[[], Deferred[int]]) -> Any:
        """Start and register holding a slot of the start gate, if there is one.

        Everything CPU-heavy of an engine's start (its certificate, its shell,
        the TLS handshakes) happens inside: the others sleep in the kernel, so
        a few hundred siblings do not share the cores (and fault in pages) all
        at once while the process forking them is starved.
        """
        gate = self.start_gate
        held = gate is not None and (yield threads.deferToThread(gate.acquire))
        try:
            return (yield start())
        finally:
            if held:
                gate.release()

    @defer.inlineCallbacks
    def _register(self, rejoin: bool = False) -> Any:
        timeout = self.reconnect_timeout if rejoin else self.connect_timeout
        started = time.monotonic()
        deadline = started + timeout
        waits = registration_waits()
        last_error: Exception | None = None
        next_report = started + UNREACHABLE_REPORT_AFTER
        while time.monotonic() < deadline:
            info = self.info
            if rejoin:  # the same id, and what finished while the controller was away
                info = dict(info, requested_id=self.engine_id, rejoin=True,
                            **self.referenceable.late.registration_info())
            if last_error is not None and time.monotonic() >= next_report and not rejoin:
                # Still retrying: tell whoever watches (a terminal, a job's output file).
                next_report = time.monotonic() + UNREACHABLE_REPORT_EVERY
                self._report_unreachable(last_error, time.monotonic() - started)
            try:
                furl = self.furl or wire.resolve_furl(self.furl_file)
                controller = yield wire.get_reference(
                    self.tub, furl, timeout=max(0.5, min(5.0, deadline - time.monotonic())))
                self._open_data_port(controller, info)
                registration = foolscap_transport.FoolscapRegistrationConnection(controller)
                engine_id = yield registration.register(
                    self.referenceable, info).addErrback(refusal)
            except VersionMismatch:
                raise  # retrying cannot help
            except Exception as e:  # the controller may not be up yet: retry
                last_error = e
                yield _sleep(next(waits))
                continue
            if rejoin:
                self.referenceable.late.rejoined(len(info["late_tasks"]), info["kept_results"])
            self._registration = registration
            self.engine_id = self.runner.engine_id = engine_id
            self.referenceable.controller_known(wire.peer_host(controller, furl),
                                                controller.getRemoteTubID())
            self.referenceable.certificate = self.tub.getCertData()
            registration.notifyOnDisconnect(self._controller_lost)
            if rejoin:  # what ended during the registration call goes now
                self._deliver_late()
            log.info("registered with the controller as engine {id}", id=engine_id)
            return engine_id
        source = "--furl" if self.furl else f"FURL file {self.furl_file}"
        raise KernelError(
            f"could not {'rejoin' if rejoin else 'register with'} the controller within "
            f"{timeout:g} s ({source}): {last_error}"
        )

    def _open_data_port(self, controller: Any, info: dict[str, Any]) -> None:
        """Listen for clients on other hosts, on the address the controller reached us at.

        Only the interface that carries the cluster's traffic listens (a
        laptop's cluster on 127.0.0.1 opens nothing to the network); info,
        sent at registration, says the port.
        """
        if self.referenceable.direct_data is None and stream.direct_enabled():
            try:
                ip = str(controller.tracker.broker.transport.getHost().host)
            except AttributeError:  # not over TCP (a stand-in): every interface
                ip = ""
            try:
                self.referenceable.direct_data = dataserver.DirectServer(
                    BLOBS, lambda: self.referenceable.tls_context, ip=ip)
            except OSError as e:
                log.warn("no data port (clients on other hosts use the relay): {e}", e=e)
                return
            self.info["direct_data"] = self.referenceable.direct_data.info()
        if "direct_data" in self.info:
            info["direct_data"] = self.info["direct_data"]

    def _report_unreachable(self, error: Exception, waited: float) -> None:
        # A connection error names the addresses tried and what to check (wire.get_reference).
        message = (f"ipengine: no controller yet after {waited:.0f} s, still trying until "
                   f"{self.connect_timeout:g} s: {error}")
        log.warn("{msg}", msg=message)
        sys.__stderr__.write(message + "\n")
        sys.__stderr__.flush()

    def _register_failed(self, failure: Any) -> None:
        log.error("{msg}", msg=failure.getErrorMessage())
        sys.__stderr__.write(f"ipengine: {failure.getErrorMessage()}\n")
        self.registered.errback(failure)
        os._exit(3)

    def _controller_lost(self, *args: Any) -> None:
        self.referenceable.late.lost()
        self.referenceable.controller_tubid = None  # a TLS offer waits for the next one
        self._registration = None
        if self.reconnect_timeout <= 0:
            log.info("lost the connection to the controller; exiting")
            self.on_controller_lost()
            return
        # Keep the namespace (and a running command) and rejoin with the same id.
        log.info("lost the connection to the controller; trying to rejoin for up to "
                 "{t:g} s as engine {id}", t=self.reconnect_timeout, id=self.engine_id)
        d = self._register(rejoin=True)

        def gave_up(failure: Any) -> None:
            log.error("{msg}; exiting", msg=failure.getErrorMessage())
            self.on_controller_lost()

        d.addErrback(gave_up)

    def _deliver_late(self) -> None:
        """Send task replies kept while the controller was away, if it is back."""
        registration = self._registration
        if registration is None or not self.referenceable.late.connected:
            return  # they go with the next registration
        late = self.referenceable.late.take()
        if not late["tasks"] and not late["finished"] and not late["results"]:
            return
        d = registration.deliver_late(self.engine_id, late)
        d.addErrback(lambda f: self.referenceable.late.put_back(late))


def registration_waits(first: float = 0.05, most: float = 2.0,
                       rng: Callable[[], float] = random.random) -> Iterator[float]:
    """Yield the waits between registration attempts: doubling up to most, each
    drawn from its upper half, so that hundreds of engines turned away together
    (a busy controller's handshake cap) come back spread out, not in step."""
    ceiling = first
    while True:
        yield ceiling * (0.5 + 0.5 * rng())
        ceiling = min(ceiling * 2, most)


def _sleep(seconds: float) -> Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
