"""The shell thread: run an engine's jobs one at a time, and interrupt them.

User code never runs on the reactor thread. ``ShellRunner`` runs jobs one at
a time on the *shell thread* (the main thread under ``ipengine``, so that
SIGINT can interrupt even a blocking C call), while the reactor thread keeps
answering the controller: pings, interrupts and kills are never queued behind
a running cell.
"""

from __future__ import annotations

import ctypes
import os
import queue
import select
import signal
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ipython1.common import replies
from ipython1.common.errors import KernelError, error_to_wire
from ipython1.engine.kernel import BLOBS, _error_reply
from ipython1.transport import channel as command_channel

log = Logger()


RESEND_INTERRUPT = 0.05  # seconds before re-sending a SIGINT that woke nothing


class ShellRunner:
    """Run jobs one at a time on one thread (the shell thread).

    Jobs come from the reactor (Foolscap calls; replies go back through the
    reactor) or, once it is open, straight from the command channel, which
    this thread reads and answers itself.
    """

    def __init__(self) -> None:
        # (job, Deferred), ("channel", offer, host) to open the channel, or None to stop.
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._busy = False
        self.thread_ident: int | None = None
        self.engine_id: int | None = None
        # IPython swallows a KeyboardInterrupt raised in its own machinery
        # (e.g. event callbacks) before a cell's code starts; so while in_cell
        # and not in user code, an interrupt is held and raised when it starts.
        self.in_cell = False
        self._in_user_code = 0  # depth: user code may run cells itself
        self._held_interrupt = False
        # A SIGINT that lands just before a blocking call starts (e.g. between
        # the last bytecode and the sleep syscall) wakes nothing; the reactor
        # re-sends it until the handler has run or the job is over.
        self._job_seq = 0
        self._sigints_sent = 0
        self._sigints_seen = 0
        # A job handed over but not started yet is, for the controller, the
        # running command: an interrupt for it stops it as it starts.
        self._not_started = 0
        self._interrupt_next = False
        # The command channel, once open, is read on this thread (see
        # transport.channel.EngineChannel); jobs from the reactor then wake it
        # through a pipe. Interrupts name the channel call they are meant for.
        self._channel: command_channel.EngineChannel | None = None
        self._channel_host: Any = None  # what runs the channel's calls (the engine)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)  # a full pipe already wakes the shell
        self._poll = select.poll()
        self._poll.register(self._wake_r, select.POLLIN)
        self._channel_seq = 0  # the last channel call started
        self._interrupt_channel_seq: int | None = None

    def submit(self, job: Callable[[], Any]) -> Deferred[Any]:
        """Queue job for the shell thread; the Deferred fires with its reply."""
        d: Deferred[Any] = Deferred()
        with self._lock:
            self._not_started += 1
        self._put((job, d))
        return d

    def open_channel(self, offer: dict[str, Any], host: Any) -> None:
        """Connect the command channel on the shell thread; host runs its calls.

        host.job(op, args) gives the job, or None for args that are not a list;
        host.output_idle() and host.drain_output() keep a command's live output
        ahead of its reply.
        """
        self._put(("channel", offer, host))

    def stop(self) -> None:
        self._put(None)

    def _put(self, item: Any) -> None:
        self._jobs.put(item)
        if self._channel is not None:  # the shell thread may be waiting on the channel
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass

    def run_forever(self) -> None:
        """Run jobs until stop(); call this on the shell thread."""
        self.thread_ident = threading.get_ident()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_sigint)
        while True:
            try:
                items = self._wait()
            except KeyboardInterrupt:
                continue  # a late interrupt that missed its cell
            for item in items:
                if item is None:
                    return
                if isinstance(item, bytes | bytearray):
                    self._serve_channel_call(item)
                elif item[0] == "channel":
                    self._attach_channel(item[1], item[2])
                else:
                    job, d = item
                    BLOBS.settle()  # values lent to downloads stay unchanged until sent
                    reply = self._run(job)
                    reactor.callFromThread(d.callback, reply)

    def _wait(self) -> list[Any]:
        """Return the next jobs from the reactor, or the next frames from the channel."""
        channel = self._channel
        if channel is None:
            return [self._jobs.get()]
        while True:
            if channel.closed:  # the controller closed it: Foolscap from now on
                self._detach_channel()
                return []
            items = []
            try:
                while True:
                    items.append(self._jobs.get_nowait())
            except queue.Empty:
                pass
            if items:
                return items
            if channel.pending():  # TLS: a frame already decrypted waits no poll
                frames = channel.receive()
                if frames:
                    return frames
                continue
            for fd, _event in self._poll.poll():
                if fd == self._wake_r:
                    os.read(fd, 4096)
                    continue
                frames = channel.receive()
                if frames:
                    return frames

    def _attach_channel(self, offer: Any, host: Any) -> None:
        # A TLS channel comes connected (tcpchannel.connect_engine, on a worker thread).
        channel = offer if isinstance(offer, command_channel.EngineChannel) else \
            command_channel.EngineChannel.connect(offer)
        if channel is None:
            return
        if self._channel is not None:
            self._detach_channel()
        with self._lock:
            self._channel_seq, self._interrupt_channel_seq = 0, None
        self._channel_host = host
        self._poll.register(channel.fd, select.POLLIN)
        self._channel = channel  # set last: from now on _put wakes the poll

    def _detach_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            self._poll.unregister(channel.fd)
            channel.close()

    def _serve_channel_call(self, frame: bytes) -> None:
        channel = self._channel
        if channel is None or channel.closed:
            return  # a frame behind a bad one, or the controller is gone
        try:
            seq, op, args, *tag = replies.loads(frame)  # [seq, op, args(, tag)]
            found = self._channel_host.job(op, args, *tag[:1])
        except (ValueError, TypeError) as e:
            log.warn("command channel: bad frame ({e}); closing", e=e)
            self._detach_channel()
            return
        if found is None:
            channel.answer(seq, False, error_to_wire(
                KernelError(f"unknown command {op!r}"), self.engine_id))
            return
        BLOBS.settle()
        reply = replies.encode(self._run(found, channel_seq=seq))
        sent = getattr(found, "sent", None)
        if sent is not None:
            sent(reply)  # a tagged command keeps these bytes (engine/rejoin.py)
        if not self._channel_host.output_idle():
            # The reply must not overtake the command's last output (on Foolscap).
            threads.blockingCallFromThread(reactor, self._channel_host.drain_output)
        channel.answer(seq, True, reply)

    def _run(self, job: Callable[[], Any], channel_seq: int | None = None) -> dict[str, Any]:
        try:
            try:
                with self._lock:
                    self._busy = True
                    self._held_interrupt = False
                    self._job_seq += 1
                    if channel_seq is None:
                        self._not_started -= 1
                        interrupted, self._interrupt_next = self._interrupt_next, False
                    else:
                        self._channel_seq = channel_seq
                        interrupted = self._interrupt_channel_seq == channel_seq
                if interrupted:
                    raise KeyboardInterrupt  # interrupted before it could start
                value = job()
                return {"engine_id": self.engine_id, "status": "ok", "value": value}
            finally:
                with self._lock:
                    self._busy = False
        except BaseException as e:  # noqa: B036 - user code may raise anything
            if isinstance(e, SystemExit):
                e = RuntimeError(f"user code called exit({e.code!r}); the engine keeps running")
            try:
                return _error_reply(self.engine_id, e)
            except KeyboardInterrupt:
                return _error_reply(self.engine_id, KeyboardInterrupt())

    def _resend(self, job_seq: int, tries: int) -> None:
        with self._lock:
            if (not self._busy or self._job_seq != job_seq or tries <= 0
                    or self._sigints_seen >= self._sigints_sent):
                return
            signal.pthread_kill(self.thread_ident, signal.SIGINT)
        reactor.callLater(RESEND_INTERRUPT, self._resend, job_seq, tries - 1)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """Raise KeyboardInterrupt, unless IPython would swallow it: then hold it."""
        self._sigints_seen = self._sigints_sent
        if not self._busy:
            return  # late, its job is over: never break a reply being sent
        if self.in_cell and not self._in_user_code:
            self._held_interrupt = True
            return
        raise KeyboardInterrupt

    def guard_cells(self, shell: Any) -> None:
        """Wrap shell.run_code so held interrupts are raised as user code starts."""
        run_code = shell.run_code
        runner = self

        async def guarded_run_code(code_obj: Any, result: Any = None, *,
                                   async_: bool = False) -> Any:
            try:
                with runner._lock:
                    # Count first: a signal from now on raises instead of being held.
                    runner._in_user_code += 1
                    held, runner._held_interrupt = runner._held_interrupt, False
                if held:
                    code_obj = compile("raise KeyboardInterrupt", "<interrupt>", "exec")
                return await run_code(code_obj, result, async_=async_)
            finally:
                runner._in_user_code -= 1

        shell.run_code = guarded_run_code

    @property
    def busy(self) -> bool:
        return self._busy

    def interrupt(self, channel_seq: int | None = None) -> bool:
        """Raise KeyboardInterrupt in the running job; False if idle.

        With channel_seq, only in that command channel call: at once if it
        runs, as it starts if it has not yet; False if it is over.
        """
        with self._lock:
            if channel_seq is not None:
                if channel_seq > self._channel_seq:
                    self._interrupt_channel_seq = channel_seq
                    return True
                if channel_seq < self._channel_seq:
                    return False
            elif not self._busy and self._not_started > 0:
                self._interrupt_next = True
                return True
            if not self._busy or self.thread_ident is None:
                return False
            if self.in_cell and not self._in_user_code:
                self._held_interrupt = True  # raised when the cell's code starts
            elif self.thread_ident == threading.main_thread().ident:
                # A real signal also breaks blocking calls such as time.sleep.
                self._sigints_sent += 1
                signal.pthread_kill(self.thread_ident, signal.SIGINT)
                reactor.callLater(RESEND_INTERRUPT, self._resend, self._job_seq, 40)
            else:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.thread_ident), ctypes.py_object(KeyboardInterrupt)
                )
            return True
