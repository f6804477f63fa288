"""The task farm adapter (``ITaskFarm``): the scheduler's decisions sent to engines.

It sends the `Scheduler`'s batches to engines through the controller's
per-engine queues (so they interleave fairly with multi-engine commands),
arms the timeout backstop, keeps the journal, and wakes clients waiting for
results. ``TaskFarmReferenceable`` (tasksession.py) publishes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from foolscap.api import DeadReferenceError
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ipython1.common import properties, replies
from ipython1.common.errors import (
    EngineError,
    KernelError,
    PermissionDenied,
    error_to_wire,
)
from ipython1.common.interfaces import ITaskFarm
from ipython1.common.serialize import deserialize
from ipython1.controller.journal import JournalWriter
from ipython1.controller.queue import Command
from ipython1.controller.task import (
    FAILED,
    MAX_RESULT_BYTES,
    MAX_RESULTS,
    REJOIN_GRACE,
    TIMEOUT_GRACE,
    Batch,
    Scheduler,
    _at_most_once,
    _has_property_depend,
    id_ranges,
    validate_spec,
)

log = Logger()


@implementer(ITaskFarm)
class TaskFarm:
    """Run tasks on the controller's engines as the Scheduler decides."""

    def __init__(self, controller: Any, clock: Any = None,
                 max_result_bytes: int = MAX_RESULT_BYTES,
                 max_results: int = MAX_RESULTS, journal: Any = None,
                 rejoin_grace: float = REJOIN_GRACE) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.controller = controller
        self.clock = clock
        self.journal = journal  # controller.journal.TaskJournal, or None
        self._commit_call: Any = None
        self._writer: Any = None
        if journal is not None:
            self._writer = JournalWriter()
        self.scheduler = Scheduler(clock.seconds, self._finished, max_result_bytes,
                                   max_results, self._check_depend, journal)
        if journal is not None:
            self.scheduler.restore(journal.load(), journal.next_tid())
            journal.commit()  # what restore() decided (dependents of failed tasks)
            if self.scheduler.held:
                clock.callLater(rejoin_grace, self._expire_held, rejoin_grace)
        self._waiters: dict[int, list[Callable[[], None]]] = {}
        self._commands: dict[int, Command] = {}  # batch id -> its command, while out
        self._pumping = False
        # The shared event stream (issue 8); finished tasks are announced in
        # groups, once per reactor turn, so a 20,000-task map costs few events.
        self.events = getattr(controller, "events", None)
        self._done: dict[tuple[str, str, int | None, str], tuple[list[int], dict[str, int]]] = {}
        self._done_scheduled = False
        for engine_id in controller.ids():
            self.scheduler.add_engine(engine_id)
        controller.add_observer(self._engine_event)

    # -- events from the controller --

    def _engine_event(self, kind: str, data: dict[str, Any]) -> None:
        engine_id = data.get("engine_id")
        if not isinstance(engine_id, int):
            return
        if kind == "engine_registered":
            # A rejoining engine brings what finished while the controller was away.
            sched = self.scheduler
            sched.deliver_late(engine_id, data.get("late_tasks") or [])
            # Held tasks it is still running stay held: their results follow
            # (late_replies); the others never reached it and run again.
            running = set((data.get("info") or {}).get("running_tasks") or [])
            held = sched.held.pop(engine_id, [])
            sched.held[engine_id] = [t for t in held if t not in running]
            sched.add_engine(engine_id, data.get("done_tasks") or ())
            still = [t for t in held if t in running]
            if still:
                sched.held[engine_id] = still
        elif kind == "late_replies":
            self.scheduler.deliver_late(engine_id, data.get("late_tasks") or [])
            self.scheduler.held.pop(engine_id, None)
        elif kind == "engine_died":
            self.scheduler.release_held(engine_id, f"engine {engine_id} died while "
                                                   "running the task")
            self.scheduler.remove_engine(engine_id, f"engine {engine_id} died while "
                                                    "running the task")
        elif kind == "engine_properties":
            self.scheduler.properties_changed(engine_id)
        else:
            return
        self.pump()

    def _expire_held(self, grace: float) -> None:
        """Run again what engines that never rejoined were running at the restart."""
        if self.scheduler.held:
            self.scheduler.release_held(None, f"its engine did not rejoin within {grace:g} s "
                                              "of the controller's restart")
            self.pump()
    def _check_depend(self, spec: dict[str, Any], engine_id: int) -> str:
        """Evaluate a task's depend(properties) here, against engine_id's properties."""
        if "_depend" not in spec:  # unpickled once per task (owner-only: see submit)
            try:
                spec["_depend"] = deserialize(spec["depend"])
            except Exception as e:
                spec["_depend"] = e
        depend = spec["_depend"]
        if isinstance(depend, Exception):
            return f"its depend function could not be loaded here: {depend}"
        record = getattr(self.controller, "engines", {}).get(engine_id)
        return properties.unmet_reason(depend, getattr(record, "properties", {}))

    def _finished(self, tid: int) -> None:
        for wake in self._waiters.pop(tid, []):
            wake()
        task = self.scheduler.tasks.get(tid)
        if self.events is None or task is None:
            return
        tids, errors = self._done.setdefault(
            (task.user, task.client, task.engine_id, task.state), ([], {}))
        tids.append(tid)
        if task.state == FAILED:
            ename = str(((task.result or {}).get("error") or {}).get("ename", "?"))
            errors[ename] = errors.get(ename, 0) + 1
        if not self._done_scheduled:
            self._done_scheduled = True
            self.clock.callLater(0, self._announce_finished)

    def _announce_finished(self) -> None:
        self._done_scheduled = False
        done, self._done = self._done, {}
        for (user, client, engine_id, state), (tids, errors) in done.items():
            data: dict[str, Any] = {"status": state, "n": len(tids), "tids": id_ranges(tids)}
            if errors:
                data["errors"] = errors  # exception names and counts, never values
            self.events.publish("task_finished", user, engine_id, data, client)

    def _owner(self) -> str:
        return str(getattr(self.controller, "owner", ""))

    def _check_rights(self, tids: Iterable[int], user: str | None, op: str) -> None:
        """Refuse op on other users' tasks unless user is the owner (or None: in-process)."""
        if user is None or user == self._owner():
            return
        others = [(t, self.scheduler.tasks[t].user) for t in tids
                  if t in self.scheduler.tasks and self.scheduler.tasks[t].user != user]
        if others:
            tid, whose = others[0]
            more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
            raise PermissionDenied(
                f"user {user!r} may not {op} task {tid}{more}: it belongs to {whose!r}; "
                "only the owner may touch other users' tasks")

    # -- sending batches --

    def pump(self) -> None:
        """Send whatever the scheduler assigns now."""
        if self._pumping:
            return
        self._pumping = True
        try:
            for batch in self.scheduler.assign():
                self._send(batch)
        finally:
            self._pumping = False
        self._commit_soon()

    def _commit_soon(self) -> None:
        """Commit the journal at the end of this reactor turn (no fsync: see journal)."""
        if self.journal is not None and self._commit_call is None and self.journal.pending():
            self._commit_call = self.clock.callLater(0, self._commit_turn)

    def _commit_turn(self) -> None:
        self._commit_call = None
        self.commit(durable=False).addErrback(
            lambda f: log.failure("the task journal could not be written", f))

    def commit(self, durable: bool = True) -> Deferred[None]:
        """Write the journal (on its own thread); fire once it is written.

        durable: fsynced, before a client is told its tasks are accepted or
        given ids."""
        if self._commit_call is not None:
            if self._commit_call.active():
                self._commit_call.cancel()
            self._commit_call = None
        write = self.journal.prepare(durable) if self.journal is not None else None
        if write is None:
            return defer.succeed(None)
        return self._writer.run(write)  # type: ignore[no-any-return]

    def close(self) -> None:
        """Write what is left and close the journal (the controller stops)."""
        if self._writer is not None:
            self._writer.stop()
        if self.journal is not None:
            self.journal.close()

    def _send(self, batch: Batch) -> None:
        if self.journal is not None and any(
                _at_most_once(self.scheduler.tasks[tid]) for tid, _ in batch.tasks
                if tid in self.scheduler.tasks):
            # Journal it as running first: a restarted controller must never take it
            # for a task that was still waiting, and run it a second time.
            self.commit(durable=False).addBoth(lambda _: self._send_now(batch))
            return
        self._send_now(batch)

    def _send_now(self, batch: Batch) -> None:
        slot = self.scheduler.engines.get(batch.engine_id)
        if slot is None or batch.id not in slot.batches:
            return  # its engine went while the journal was written: requeued already
        command = Command("run_tasks", (batch.specs,), client="task farm",
                          description=f"{len(batch.specs)} task(s)")
        self._commands[batch.id] = command
        d = self.controller.submit(batch.engine_id, command)
        if batch.timeout is not None:
            tid, token = batch.tasks[0]
            self.clock.callLater(batch.timeout + TIMEOUT_GRACE, self._backstop, batch,
                                 command, tid, token)
        d.addCallbacks(self._replied, self._lost, callbackArgs=(batch, command),
                       errbackArgs=(batch, command))
        d.addErrback(lambda f: log.failure("task farm bookkeeping failed", f))

    def _replied(self, reply: Any, batch: Batch, command: Command) -> None:
        self._commands.pop(batch.id, None)
        reply = replies.decode(reply)  # msgpack: plain data; each result stays frames
        if isinstance(reply, dict) and reply.get("status") == "ok" and isinstance(
                reply.get("value"), list):
            self.scheduler.batch_done(batch.engine_id, batch.id, reply["value"])
        else:
            error = reply.get("error", {}) if isinstance(reply, dict) else {}
            self.scheduler.batch_lost(batch.engine_id, batch.id, True,
                                      f"engine {batch.engine_id} could not run the batch: "
                                      f"{error.get('ename')}: {error.get('evalue')}")
        self.pump()

    def _lost(self, failure: Failure, batch: Batch, command: Command) -> None:
        self._commands.pop(batch.id, None)
        reason = failure.getErrorMessage()
        if not isinstance(failure.value, EngineError):
            reason = f"engine {batch.engine_id} died or vanished ({reason})"
        if failure.check(EngineError, DeadReferenceError, ConnectionLost, ConnectionDone):
            # The engine is gone: stop sending it work now, before the
            # controller notices, and charge only what had reached it.
            slot = self.scheduler.engines.get(batch.engine_id)
            started = {batch.id} if command.started is not None else set()
            for other in list(slot.batches.values()) if slot else []:
                cmd = self._commands.get(other.id)
                if cmd is not None and cmd.started is not None:
                    started.add(other.id)
            self.scheduler.remove_engine(batch.engine_id, reason, started)
        else:
            self.scheduler.batch_lost(batch.engine_id, batch.id, command.started is not None,
                                      reason)
        self.pump()

    def _backstop(self, batch: Batch, command: Command, tid: int, token: int) -> None:
        """Fail a timed-out task if the engine's own timer could not stop it."""
        if command.deferred.called:
            return
        if command.started is None:  # still queued behind other commands
            self.clock.callLater(batch.timeout or 1.0, self._backstop, batch, command,
                                 tid, token)
            return
        left = command.started + (batch.timeout or 0) + TIMEOUT_GRACE - time.time()
        if left > 0:
            self.clock.callLater(left, self._backstop, batch, command, tid, token)
            return
        if self.scheduler.timed_out(tid, token):
            d = self.controller.call_now(batch.engine_id, "interrupt")
            d.addErrback(lambda f: None)
            self.pump()

    # -- ITaskFarm --

    def reserve(self, n: int) -> Deferred[int]:
        first = self.scheduler.reserve(n)
        # Never hand out an id twice, even across a crash.
        return self.commit().addCallback(lambda _: first)

    def submit(self, tasks: list[Any], client: str = "", user: str = "") -> Deferred[list[Any]]:
        """Accept ``[tid, meta, payload]`` tasks with reserved ids; None or an error each."""
        answers: list[Any] = []
        sched = self.scheduler
        user = user or self._owner()
        accepted: list[int] = []
        for item in tasks:
            if not (isinstance(item, (list, tuple)) and len(item) == 3 and
                    isinstance(item[0], int)):
                answers.append(error_to_wire(KernelError("a task must be [tid, meta, payload]")))
                continue
            tid, meta, payload = item
            known = sched.tasks.get(tid)
            if known is not None and known.user == user:
                # Sent again by a client whose answer was lost with the
                # controller (issue 15): it has it already, once.
                answers.append(None)
                continue
            try:
                if user != self._owner() and _has_property_depend(meta):
                    raise PermissionDenied(
                        f"user {user!r} may not submit a task whose depend runs on the "
                        "controller (a function of engine properties): only the owner may")
                sched.submit(validate_spec(meta, payload), client, tid, user)
                answers.append(None)
                accepted.append(tid)
            except KernelError as e:
                if tid not in sched.tasks and 0 <= tid < sched.next_tid:
                    # Record the bad task as failed so that waiting on it ends.
                    sched.submit({"payload": [b""]}, client, tid, user)
                    sched._fail(sched.tasks[tid], error_to_wire(e))
                answers.append(error_to_wire(e))
        if accepted and self.events is not None:
            # Before pump(), so the stream shows submissions before their results.
            self.events.publish("task_submitted", user, None,
                                {"n": len(accepted), "tids": id_ranges(accepted)}, client)
        self.pump()
        return self.commit().addCallback(lambda _: answers)  # accepted means journaled

    def revoke(self, user: str) -> int:
        """Abort the tasks of a removed user that have not started; return how many."""
        n = self.scheduler.abort_waiting(user)
        self.pump()
        return n

    def run(self, meta: dict[str, Any], payload: list[bytes], client: str = "") -> int:
        """Submit one task; return its id."""
        tid = self.scheduler.reserve(1)
        self.submit([[tid, meta, payload]], client)
        return tid

    def get_results(self, tids: list[int], block: bool = False) -> Deferred[list[Any]]:
        """Fire with each task's result record, or None if unfinished (unless block)."""
        for tid in tids:
            self.scheduler._get(tid)  # unknown ids fail at once
        if block:
            d = self.wait(tids, all_=True, timeout=None)
        else:
            d = defer.succeed(None)
        return d.addCallback(lambda _: [self._result_or_error(t) for t in tids])

    def _result_or_error(self, tid: int) -> Any:
        try:
            return self.scheduler.result(tid)
        except KernelError as e:
            return {"tid": tid, "status": FAILED, "error": error_to_wire(e)}

    def wait(self, tids: list[int], all_: bool = False,
             timeout: float | None = None) -> Deferred[list[int]]:
        """Fire with the finished ones of tids once any (or all) finished, or at timeout."""
        sched = self.scheduler
        for tid in tids:
            sched._get(tid)
        unfinished = [t for t in tids if not sched.finished(t)]
        done = len(unfinished) < len(tids)
        if not unfinished or (done and not all_):
            return defer.succeed([t for t in tids if sched.finished(t)])
        d: Deferred[list[int]] = Deferred()
        remaining = set(unfinished)
        call: list[Any] = []

        def fire() -> None:
            if d.called:
                return
            if call and call[0].active():
                call[0].cancel()
            d.callback([t for t in tids if sched.finished(t)])

        def wake_for(tid: int) -> Callable[[], None]:
            def wake() -> None:
                remaining.discard(tid)
                if not all_ or not remaining:
                    fire()
            return wake

        for tid in unfinished:
            self._waiters.setdefault(tid, []).append(wake_for(tid))
        if timeout is not None:
            call.append(self.clock.callLater(max(0.0, timeout), fire))
        return d

    def abort(self, tid: int, user: str | None = None) -> None:
        self.scheduler._get(tid)
        self._check_rights([tid], user, "abort")
        self.scheduler.abort(tid)
        self._commit_soon()

    def queue_status(self, verbose: bool = False) -> dict[str, Any]:
        return self.scheduler.status(verbose)

    def clear(self, tids: list[int] | None = None, client: str | None = None,
              user: str | None = None) -> int:
        if tids is not None:
            self._check_rights(tids, user, "clear")
        n = self.scheduler.clear(tids, client)
        self._commit_soon()
        return n

    def spin(self) -> None:
        self.pump()
