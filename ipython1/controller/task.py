"""The task farm's scheduler: load-balanced, fault-tolerant running of independent tasks.

Three modules, as elsewhere in the controller:

* ``Scheduler`` is the pure policy. It knows tasks, engines and batches, and
  nothing of Twisted or Foolscap; it takes a clock. Given events (a task was
  submitted, an engine joined or died, a batch came back) it decides what
  each engine runs next. Priority first, FIFO otherwise; ``after=``
  dependencies; ``depend`` restrictions learnt from the engines; retries and
  recovery tasks; bounded in-flight work per engine with batching of tiny
  tasks; requeue on engine death; each task finishes exactly once.
* ``TaskFarm`` (ITaskFarm) is the I/O: it sends the scheduler's batches to
  engines through the controller's per-engine queues (so they interleave
  fairly with multi-engine commands), arms the timeout backstop, and wakes
  clients waiting for results (taskfarm.py). ``TaskFarmReferenceable`` and
  the clients' ``TaskFarmSession`` put it on the wire (tasksession.py).

Task values (pushed names, functions, arguments, results) are frames: the
controller stores and relays them and never unpickles them; ``depend``
functions run on the engines.
"""

from __future__ import annotations

import heapq
import importlib
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ipython1.common.errors import (
    EngineError,
    InvalidTaskID,
    KernelError,
    TaskAborted,
    TaskTimeout,
    UnmetDependency,
    error_to_wire,
)
from ipython1.controller.journal import current_spec

# -- policy constants (documented in docs/tasks.md) ---------------------------

TARGET_BATCH_SECONDS = 0.02  # tiny tasks are grouped into batches of about this much work
MAX_BATCH = 512  # tasks per batch, at most
PIPELINE_BELOW = 0.1  # tasks shorter than this get a second batch queued per engine
TIMEOUT_GRACE = 5.0  # the controller fails a task this long after its engine should have
MAX_RESULT_BYTES = 1 << 30  # result frames kept on the controller until clear()
MAX_RESULTS = 1_000_000  # finished tasks kept on the controller until clear()
MAX_BATCH_WIRE = 100_000  # task ids per reserve() call
# After a restart, tasks that were running wait this long for their engine to
# rejoin with their results before they run again.
REJOIN_GRACE = 60.0

_META_KEYS = {"retries": int, "priority": int, "after": list, "timeout": (int, float),
              "recovery": list, "depend": list,  # depend: frames of f(properties)
              "idempotent": bool}  # False: at most once (see _outcome_unknown)

PENDING, BLOCKED, RUNNING = "pending", "blocked", "running"
SUCCEEDED, FAILED = "succeeded", "failed"
FINISHED = (SUCCEEDED, FAILED)


def validate_spec(meta: Any, payload: Any, depth: int = 0) -> dict[str, Any]:
    """Check a task from the wire; return it as one dict, or raise KernelError.

    A task is ``[meta, payload]``: ``meta`` holds what the scheduler needs
    (retries, priority, after, timeout, recovery = another ``[meta, payload]``),
    ``payload`` the frames of what the engine runs; it is never unpickled here.
    """
    if not isinstance(meta, dict):
        raise KernelError(f"task metadata must be a dict, not {type(meta).__name__}")
    unknown = set(meta) - set(_META_KEYS)
    if unknown:
        raise KernelError(f"unknown task field(s): {', '.join(sorted(map(str, unknown)))}")
    for key, value in meta.items():
        if value is not None and (not isinstance(value, _META_KEYS[key])
                                  or isinstance(value, bool) != (key == "idempotent")):
            raise KernelError(f"task field {key!r} has the wrong type "
                              f"({type(value).__name__})")
    if not (isinstance(payload, list) and payload and
            all(isinstance(f, bytes) for f in payload)):
        raise KernelError("a task's payload must be a non-empty list of frames (bytes)")
    if (meta.get("retries") or 0) < 0:
        raise KernelError("retries must be >= 0")
    timeout = meta.get("timeout")
    if timeout is not None and not timeout > 0:
        raise KernelError("timeout must be a positive number of seconds")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in meta.get("after") or []):
        raise KernelError("after must be a list of task ids")
    depend = meta.get("depend")
    if depend is not None and not (depend and all(isinstance(f, bytes) for f in depend)):
        raise KernelError("a property depend must be a list of frames (bytes)")
    spec = dict(meta, payload=payload)
    recovery = meta.get("recovery")
    if recovery is not None:
        if depth > 10:
            raise KernelError("recovery tasks are nested too deeply")
        if len(recovery) != 2:
            raise KernelError("a recovery task must be [meta, payload]")
        spec["recovery"] = validate_spec(recovery[0], recovery[1], depth + 1)
    return spec


def _at_most_once(task: Any) -> bool:
    """Tell whether a task must never run twice (idempotent=False)."""
    return task.current.get("idempotent", task.spec.get("idempotent")) is False


def _outcome_unknown(task: Any, engine_id: int, why: str) -> dict[str, Any]:
    return error_to_wire(EngineError(engine_id, (
        f"task {task.tid} may or may not have run ({why}); it is not run again because "
        "it is not idempotent (idempotent=False: at most once)")), engine_id)


def frames_size(value: Any) -> int:
    """Count the bytes held in the frames inside a result value."""
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(frames_size(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(frames_size(v) for v in value)
    if isinstance(value, str):
        return len(value)
    return 0


@dataclass
class TaskRecord:
    """One task through its life on the controller."""

    tid: int
    spec: dict[str, Any]
    client: str = ""
    user: str = ""  # who submitted it (issue 8): events, abort and clear rights
    seq: int = 0
    state: str = PENDING
    submitted: float = 0.0
    current: dict[str, Any] = field(default_factory=dict)  # the spec now running
    retries_left: int = 0
    attempts: int = 0
    recovered: bool = False
    first_error: dict[str, Any] | None = None
    waiting_on: set[int] = field(default_factory=set)
    unmet_on: dict[int, str] = field(default_factory=dict)  # engine id -> why not
    solo: bool = False  # run alone: its last batch died, so attempts are counted exactly
    token: int = 0  # the current dispatch; replies for older ones are ignored
    engine_id: int | None = None
    started: float | None = None
    completed: float | None = None
    result: dict[str, Any] | None = None
    size: int = 0
    journaled: bool = False  # its spec is in the journal already

    @property
    def priority(self) -> int:
        return int(self.spec.get("priority") or 0)

    def key(self) -> tuple[int, int, int]:
        return (-self.priority, self.seq, self.tid)


@dataclass
class Batch:
    """Tasks sent to one engine in one command."""

    id: int
    engine_id: int
    tasks: list[tuple[int, int]]  # (tid, token)
    specs: list[dict[str, Any]]
    timeout: float | None = None


@dataclass
class EngineSlot:
    engine_id: int
    batches: dict[int, Batch] = field(default_factory=dict)


class Scheduler:
    """Decide which engine runs which task; pure, no I/O.

    The adapter calls ``submit``, ``add_engine``, ``remove_engine``,
    ``batch_done``, ``batch_lost`` and ``timed_out`` as things happen, then
    ``assign()`` to get the batches to send. ``on_finished(tid)`` is called
    once for every task that reaches a final state.
    """

    def __init__(self, clock: Callable[[], float] = time.time,
                 on_finished: Callable[[int], None] | None = None,
                 max_result_bytes: int = MAX_RESULT_BYTES,
                 max_results: int = MAX_RESULTS,
                 check_depend: Callable[[dict[str, Any], int], str] | None = None,
                 journal: Any = None) -> None:
        self.clock = clock
        # check_depend(spec, engine_id) -> why the engine does not qualify, or '':
        # a task's depend on engine properties, evaluated here (IPython 0.10).
        self.check_depend = check_depend
        # controller.journal.TaskJournal, or None (memory only): told of every change
        self.journal = journal
        # engine id -> tasks it was running when the controller stopped (restore())
        self.held: dict[int, list[int]] = {}
        self.on_finished = on_finished or (lambda tid: None)
        self.max_result_bytes = max_result_bytes
        self.max_results = max_results
        self.tasks: dict[int, TaskRecord] = {}
        self.engines: dict[int, EngineSlot] = {}
        self._ready: list[tuple[tuple[int, int, int], int]] = []
        self._dependents: dict[int, list[int]] = {}
        self._restricted: set[int] = set()
        self._seq = itertools.count()
        self._batch_ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self.next_tid = 0
        self.estimate: float | None = None  # EWMA of one task's run time on an engine
        # finished tasks, oldest first: fetched ones may be dropped over budget
        self._fetched: OrderedDict[int, None] = OrderedDict()
        self._unfetched: OrderedDict[int, None] = OrderedDict()
        self.result_bytes = 0
        self.dropped = 0
        self.counts = {SUCCEEDED: 0, FAILED: 0}

    # -- ids --

    def reserve(self, n: int) -> int:
        """Reserve n task ids for a client; return the first."""
        if not 0 < n <= MAX_BATCH_WIRE:
            raise KernelError(f"can reserve 1..{MAX_BATCH_WIRE} task ids, not {n}")
        first = self.next_tid
        self.next_tid += n
        if self.journal is not None:
            self.journal.reserved(self.next_tid)
        return first

    # -- events --

    def submit(self, spec: dict[str, Any], client: str = "", tid: int | None = None,
               user: str = "") -> int:
        """Accept a task (already validated); return its id."""
        if tid is None:
            tid = self.reserve(1)
        elif not 0 <= tid < self.next_tid or tid in self.tasks:
            raise InvalidTaskID(f"task id {tid} was not reserved, or is already in use")
        task = TaskRecord(tid, spec, client, user, next(self._seq), submitted=self.clock())
        task.current = spec
        task.retries_left = int(spec.get("retries") or 0)
        self.tasks[tid] = task
        self._touch(task)
        if self.full():
            self._fail(task, error_to_wire(KernelError(
                f"the task farm holds {len(self._unfetched)} unfetched results "
                f"({self.result_bytes} bytes; budget {self.max_results} results, "
                f"{self.max_result_bytes} bytes): fetch or clear() results first")))
            return tid
        for dep in spec.get("after") or []:
            other = self.tasks.get(dep)
            if other is None:
                self._fail(task, _unmet(f"task {tid} depends on task {dep}, which is "
                                        "unknown (never submitted, or cleared)"))
                return tid
            if other.state == FAILED:
                self._fail(task, _unmet(f"task {tid} depends on task {dep}, which failed"))
                return tid
            if other.state != SUCCEEDED:
                task.waiting_on.add(dep)
                self._dependents.setdefault(dep, []).append(tid)
        if task.waiting_on:
            task.state = BLOCKED
        else:
            self._make_ready(task)
        return tid

    def _touch(self, task: TaskRecord) -> None:
        if self.journal is not None:
            self.journal.touch(task)

    def add_engine(self, engine_id: int, done: Iterable[int] = ()) -> None:
        """Take an engine; run again its held tasks (done: those it ran, see release_held)."""
        self.engines.setdefault(engine_id, EngineSlot(engine_id))
        self.release_held(engine_id, done=done)

    def remove_engine(self, engine_id: int, reason: str = "",
                      started: set[int] | None = None) -> None:
        """Forget an engine; requeue or fail whatever it was running.

        ``started`` names the batches that reached the engine (None: all may have).
        """
        slot = self.engines.pop(engine_id, None)
        if slot is None:
            return
        for batch in list(slot.batches.values()):
            self._lose(batch, started is None or batch.id in started, reason)
        slot.batches.clear()
        for tid in list(self._restricted):
            task = self.tasks.get(tid)
            if task is not None and task.state == PENDING:
                self._check_satisfiable(task)

    def assign(self) -> list[Batch]:
        """Take ready tasks for engines with room; return the batches to send."""
        out: list[Batch] = []
        if not self.engines:
            return out
        depth = 2 if self.estimate is not None and self.estimate < PIPELINE_BELOW else 1
        while self._ready:
            slots = [s for s in self.engines.values() if len(s.batches) < depth]
            if not slots:
                break
            slots.sort(key=lambda s: len(s.batches))
            size = self._batch_size(depth)
            progress = False
            for slot in slots:
                batch = self._take(slot.engine_id, size)
                if batch is not None:
                    slot.batches[batch.id] = batch
                    out.append(batch)
                    progress = True
                if not self._ready:
                    break
            if not progress:
                break
        return out

    def batch_done(self, engine_id: int, batch_id: int, replies: list[Any]) -> None:
        """Take an engine's replies to a batch: ``[tid, status, duration, data]`` each."""
        batch = self._pop_batch(engine_id, batch_id)
        if batch is None:
            return
        by_tid = {r[0]: r for r in replies if isinstance(r, (list, tuple)) and len(r) == 4}
        for tid, token in batch.tasks:
            reply = by_tid.get(tid)
            if reply is None:
                reply = [tid, "error", None, {"error": error_to_wire(EngineError(
                    engine_id, f"engine {engine_id} returned no reply for task {tid}"))}]
            self._reply(tid, token, engine_id, reply)

    def batch_lost(self, engine_id: int, batch_id: int, started: bool, reason: str) -> None:
        """A batch failed as a whole (engine died, connection lost, protocol error)."""
        batch = self._pop_batch(engine_id, batch_id)
        if batch is not None:
            self._lose(batch, started, reason)

    def timed_out(self, tid: int, token: int) -> bool:
        """The backstop fired: fail this attempt with TaskTimeout unless it finished."""
        task = self.tasks.get(tid)
        if task is None or task.token != token or task.state != RUNNING:
            return False
        timeout = task.current.get("timeout")
        self._attempt_failed(task, error_to_wire(TaskTimeout(
            f"task {tid} ran longer than its timeout of {timeout:g} s on engine "
            f"{task.engine_id}"), task.engine_id))
        return True

    def abort(self, tid: int) -> None:
        """Cancel a task that has not started; raise if it cannot be."""
        task = self._get(tid)
        if task.state in (PENDING, BLOCKED):
            self._fail(task, error_to_wire(TaskAborted(f"task {tid} was aborted")))
            return
        if task.state == RUNNING:
            raise KernelError(f"task {tid} is already running on engine {task.engine_id} "
                              "and cannot be aborted")
        raise KernelError(f"task {tid} has already finished ({task.state})")

    def abort_waiting(self, user: str) -> int:
        """Abort every task of user's that has not started; return how many."""
        tids = [t.tid for t in self.tasks.values()
                if t.user == user and t.state in (PENDING, BLOCKED)]
        for tid in tids:
            task = self.tasks.get(tid)
            if task is not None and task.state in (PENDING, BLOCKED):
                self._fail(task, error_to_wire(TaskAborted(
                    f"task {tid} was aborted: user {user!r} was removed")))
        return len(tids)

    # -- restart (issue 15) --

    def restore(self, stored: Iterable[Any], next_tid: int) -> None:
        """Take back the journal's tasks (``StoredTask``s) after a restart.

        Finished tasks keep their results (read from the journal when
        fetched); pending and blocked ones wait to run again; those that were
        running are held for their engine (``held``): if it rejoins with
        their results they finish with them, else they run again.
        """
        self.next_tid = max(self.next_tid, next_tid)
        waiting: list[TaskRecord] = []
        for row in stored:
            task = TaskRecord(row.tid, row.spec or {}, row.client, row.user, next(self._seq),
                              row.state, row.submitted, attempts=row.attempts,
                              retries_left=row.retries_left, first_error=row.first_error,
                              journaled=True)
            task.current = current_spec(task.spec, row.recovery_depth)
            task.recovered = row.recovery_depth > 0
            self.tasks[task.tid] = task
            if task.state in FINISHED:
                task.size = 200  # the result stays on disk until fetched
                self._unfetched[task.tid] = None
                self.counts[task.state] += 1
            elif task.state == RUNNING and row.engine_id is not None:
                task.engine_id = row.engine_id
                task.token = next(self._tokens)
                self.held.setdefault(row.engine_id, []).append(task.tid)
            else:
                waiting.append(task)
        for task in waiting:
            failed = [d for d in task.spec.get("after") or []
                      if self.tasks.get(d) is not None and self.tasks[d].state == FAILED]
            if failed:
                self._fail(task, _unmet(f"task {task.tid} depends on task {failed[0]}, "
                                        "which failed"))
                continue
            for dep in task.spec.get("after") or []:
                other = self.tasks.get(dep)  # None: finished and cleared
                if other is not None and other.state not in FINISHED:
                    task.waiting_on.add(dep)
                    self._dependents.setdefault(dep, []).append(task.tid)
            if task.waiting_on:
                task.state = BLOCKED
            else:
                self._make_ready(task)

    def deliver_late(self, engine_id: int, replies: list[Any]) -> None:
        """Take replies an engine could not send before the controller went away.

        A task finishes with its reply unless it finished already (by another
        run): so it is reported once, whichever run ends first.
        """
        for reply in replies:
            if not (isinstance(reply, (list, tuple)) and len(reply) == 4):
                continue
            task = self.tasks.get(reply[0])
            if task is None or task.state in FINISHED:
                continue
            task.state = RUNNING
            task.engine_id = engine_id
            self._reply(task.tid, task.token, engine_id, list(reply))

    def release_held(self, engine_id: int | None = None, reason: str = "",
                     done: Iterable[int] = ()) -> None:
        """Run again the held tasks of an engine (every engine's if None).

        With a reason (the engine never came back), the lost run counts as an
        attempt, as when an engine dies; else (it rejoined without their
        results) it is free if they never reached it; those it names as done
        ran, and their results were lost with the controller. Either way a
        task that is not idempotent is not run again: it fails.
        """
        ids = list(self.held) if engine_id is None else [engine_id]
        ran = set(done)
        for eid in ids:
            for tid in self.held.pop(eid, []):
                task = self.tasks.get(tid)
                if task is None or task.state != RUNNING or task.engine_id != eid:
                    continue
                if _at_most_once(task) and (reason or tid in ran):
                    self._fail(task, _outcome_unknown(task, eid, reason or (
                        f"engine {eid} ran it, but its result was lost with the controller")))
                elif reason:
                    self._attempt_failed(task, error_to_wire(EngineError(eid, reason), eid))
                else:
                    self._make_ready(task)

    # -- results and status --

    def result(self, tid: int) -> dict[str, Any] | None:
        """Return a finished task's result record (and mark it fetched), or None."""
        task = self._get(tid)
        if task.state not in FINISHED:
            return None
        if tid in self._unfetched:
            del self._unfetched[tid]
            self._fetched[tid] = None
        if task.result is None and self.journal is not None:
            return self.journal.load_result(tid)  # restored: read from disk, not kept
        return task.result

    def finished(self, tid: int) -> bool:
        task = self.tasks.get(tid)
        return task is None or task.state in FINISHED

    def clear(self, tids: Iterable[int] | None = None, client: str | None = None) -> int:
        """Drop finished results (those given, or all of client's); return how many."""
        if tids is None:
            candidates = [t for t in list(self._fetched) + list(self._unfetched)
                          if client is None or self.tasks[t].client == client]
        else:
            candidates = [t for t in tids if t in self.tasks
                          and self.tasks[t].state in FINISHED]
        for tid in candidates:
            self._drop(tid)
        return len(candidates)

    def full(self) -> bool:
        """Tell whether unfetched results alone exceed the memory budget."""
        return len(self._unfetched) >= self.max_results or (
            self.result_bytes >= self.max_result_bytes and not self._fetched)

    def status(self, verbose: bool = False) -> dict[str, Any]:
        pending = [t.tid for t in self.tasks.values() if t.state in (PENDING, BLOCKED)]
        running: dict[int, list[int]] = {e: [] for e in self.engines}
        for slot in self.engines.values():
            for batch in slot.batches.values():
                for tid, token in batch.tasks:
                    task = self.tasks.get(tid)
                    if task is not None and task.token == token and task.state == RUNNING:
                        running[slot.engine_id].append(tid)
        out: dict[str, Any] = {
            "pending": len(pending),
            "running": {e: len(ts) for e, ts in running.items()},
            "succeeded": self.counts[SUCCEEDED],
            "failed": self.counts[FAILED],
            "engines": sorted(self.engines),
            "results_held": len(self._fetched) + len(self._unfetched),
            "result_bytes": self.result_bytes,
            "results_dropped": self.dropped,
        }
        if verbose:
            out["pending_ids"] = sorted(pending)
            out["running_ids"] = running
            finished = [t for t in self.tasks.values() if t.state in FINISHED]
            out["succeeded_ids"] = sorted(t.tid for t in finished if t.state == SUCCEEDED)
            out["failed_ids"] = sorted(t.tid for t in finished if t.state == FAILED)
        return out

    # -- internals --

    def _get(self, tid: int) -> TaskRecord:
        task = self.tasks.get(tid)
        if task is None:
            raise InvalidTaskID(f"no task with id {tid} (never submitted, or its result "
                                "was cleared)")
        return task

    def _make_ready(self, task: TaskRecord) -> None:
        task.state = PENDING
        task.engine_id = None
        self._touch(task)
        heapq.heappush(self._ready, (task.key(), task.tid))
        if task.unmet_on:
            self._check_satisfiable(task)

    def _batch_size(self, depth: int) -> int:
        if self.estimate is None:
            return 1
        size = int(TARGET_BATCH_SECONDS / max(self.estimate, 1e-6))
        # spread the work over every engine's slots
        share = -(-len(self._ready) // max(1, len(self.engines) * depth))
        return max(1, min(size, MAX_BATCH, share))

    def _take(self, engine_id: int, size: int) -> Batch | None:
        taken: list[TaskRecord] = []
        skipped: list[tuple[tuple[int, int, int], int]] = []
        rejected: list[TaskRecord] = []
        while self._ready and len(taken) < size:
            item = heapq.heappop(self._ready)
            task = self.tasks.get(item[1])
            if task is None or task.state != PENDING or item[0] != task.key():
                continue  # stale entry (aborted, cleared)
            if engine_id in task.unmet_on:
                skipped.append(item)
                continue
            if task.current.get("depend") is not None and self.check_depend is not None:
                reason = self.check_depend(task.current, engine_id)
                if reason:
                    task.unmet_on[engine_id] = reason
                    rejected.append(task)
                    skipped.append(item)
                    continue
            lonely = (task.solo or task.current.get("timeout") is not None
                      or _at_most_once(task))
            if lonely and taken:
                skipped.append(item)
                break
            taken.append(task)
            if lonely:
                break
        for item in skipped:
            heapq.heappush(self._ready, item)
        for task in rejected:
            self._check_satisfiable(task)  # fails it once no engine qualifies
        if not taken:
            return None
        now = self.clock()
        batch = Batch(next(self._batch_ids), engine_id, [], [])
        for task in taken:
            task.state = RUNNING
            task.engine_id = engine_id
            task.token = next(self._tokens)
            task.started = now
            self._touch(task)
            batch.tasks.append((task.tid, task.token))
            timeout = task.current.get("timeout")
            batch.specs.append([task.tid, timeout, task.current["payload"]])
            if timeout is not None:
                batch.timeout = float(timeout)
        return batch

    def _pop_batch(self, engine_id: int, batch_id: int) -> Batch | None:
        slot = self.engines.get(engine_id)
        if slot is None:
            return None
        return slot.batches.pop(batch_id, None)

    def _live(self, tid: int, token: int) -> TaskRecord | None:
        task = self.tasks.get(tid)
        if task is None or task.state != RUNNING or task.token != token:
            return None  # finished by another path already (timeout, abort): never twice
        return task

    def _reply(self, tid: int, token: int, engine_id: int, reply: list[Any]) -> None:
        task = self._live(tid, token)
        if task is None:
            return
        _, status, duration, data = reply
        if isinstance(duration, (int, float)) and duration >= 0:
            self.estimate = duration if self.estimate is None else (
                0.8 * self.estimate + 0.2 * duration)
        if status == "ok":
            self._succeed(task, engine_id, data, duration)
        elif status == "unmet":
            task.unmet_on[engine_id] = str(data or "depend returned False")
            self._make_ready(task)
        else:
            data = data if isinstance(data, dict) else {}
            error = data.get("error") if isinstance(data.get("error"), dict) else (
                error_to_wire(KernelError(f"malformed reply {reply!r:.200}"), engine_id))
            if error.get("ename") == "TaskRejectError":
                # The task's own code said "not this engine": another one, no attempt charged.
                task.unmet_on[engine_id] = f"raised TaskRejectError: {error.get('evalue', '')}"
                self._make_ready(task)
                return
            output = {"stdout": data.get("stdout", ""), "stderr": data.get("stderr", ""),
                      "duration": duration}
            self._attempt_failed(task, error, output)

    def _lose(self, batch: Batch, started: bool, reason: str) -> None:
        live = [t for t in (self._live(tid, tok) for tid, tok in batch.tasks) if t is not None]
        error = error_to_wire(EngineError(
            batch.engine_id, reason or f"engine {batch.engine_id} died"), batch.engine_id)
        for task in live:
            if not started:
                self._make_ready(task)  # it never reached the engine: free retry
            elif _at_most_once(task):
                self._fail(task, _outcome_unknown(task, batch.engine_id, reason or
                                                  f"engine {batch.engine_id} died"))
            elif len(live) > 1 and not task.solo:
                # Which of the batch was running is unknown: run each alone next
                # time, so the attempt is charged to the task that was.
                task.solo = True
                self._make_ready(task)
            else:
                self._attempt_failed(task, error)

    def _attempt_failed(self, task: TaskRecord, error: dict[str, Any],
                        reply: dict[str, Any] | None = None) -> None:
        task.attempts += 1
        if task.retries_left > 0:
            task.retries_left -= 1
            self._make_ready(task)
            return
        if task.first_error is None:
            task.first_error = error
        recovery = task.current.get("recovery")
        if recovery is not None:
            task.current = recovery
            task.retries_left = int(recovery.get("retries") or 0)
            task.recovered = True
            self._make_ready(task)
            return
        self._fail(task, task.first_error, reply)

    def _succeed(self, task: TaskRecord, engine_id: int, value: Any, duration: Any) -> None:
        task.attempts += 1
        task.result = {"tid": task.tid, "status": SUCCEEDED, "engine_id": engine_id,
                       "value": value, "duration": duration}
        if task.recovered:
            task.result["recovered"] = True
        self._finish(task, SUCCEEDED)
        for dep in self._dependents.pop(task.tid, []):
            other = self.tasks.get(dep)
            if other is not None and other.state == BLOCKED:
                other.waiting_on.discard(task.tid)
                if not other.waiting_on:
                    self._make_ready(other)

    def _fail(self, task: TaskRecord, error: dict[str, Any],
              reply: dict[str, Any] | None = None) -> None:
        if task.state in FINISHED:
            return
        task.result = {"tid": task.tid, "status": FAILED, "engine_id": task.engine_id,
                       "error": error, **(reply or {})}
        if task.recovered:
            task.result["recovered"] = True
        self._finish(task, FAILED)
        for dep in self._dependents.pop(task.tid, []):
            other = self.tasks.get(dep)
            if other is not None and other.state == BLOCKED:
                self._fail(other, _unmet(f"task {dep} depends on task {task.tid}, "
                                         f"which failed ({error.get('ename')})"))

    def _finish(self, task: TaskRecord, state: str) -> None:
        task.state = state
        task.completed = self.clock()
        task.spec = {"priority": task.priority}  # free the payload frames
        task.current = task.spec
        self._restricted.discard(task.tid)
        assert task.result is not None
        task.result.update(attempts=task.attempts, submitted=task.submitted,
                           started=task.started, completed=task.completed)
        task.size = frames_size(task.result.get("value")) + 200
        self.result_bytes += task.size
        self._unfetched[task.tid] = None
        self.counts[state] += 1
        self._touch(task)
        self._enforce_budget()
        self.on_finished(task.tid)

    def _enforce_budget(self) -> None:
        while self._fetched and (self.result_bytes > self.max_result_bytes or
                                 len(self._fetched) + len(self._unfetched) > self.max_results):
            tid = next(iter(self._fetched))
            self._drop(tid)
            self.dropped += 1

    def _drop(self, tid: int) -> None:
        task = self.tasks.pop(tid, None)
        self._fetched.pop(tid, None)
        self._unfetched.pop(tid, None)
        if task is not None:
            self.result_bytes -= task.size
            if self.journal is not None:
                self.journal.dropped(tid)

    def properties_changed(self, engine_id: int) -> None:
        """Forget engine_id's verdicts on waiting tasks: its properties changed."""
        for tid in list(self._restricted):
            task = self.tasks.get(tid)
            if task is not None and task.state == PENDING:
                task.unmet_on.pop(engine_id, None)

    def _check_satisfiable(self, task: TaskRecord) -> None:
        if not task.unmet_on:
            return
        self._restricted.add(task.tid)
        engines = set(self.engines)
        if engines and engines <= set(task.unmet_on):
            reasons = "; ".join(f"engine {e}: {r}" for e, r in sorted(task.unmet_on.items()))
            self._fail(task, _unmet(f"no registered engine satisfies the dependencies of "
                                    f"task {task.tid} ({reasons})"))


def _has_property_depend(meta: Any, depth: int = 0) -> bool:
    """Tell whether a task (or its recovery tasks) depends on engine properties."""
    if not isinstance(meta, dict) or depth > 10:
        return False
    recovery = meta.get("recovery")
    return meta.get("depend") is not None or (
        isinstance(recovery, list) and len(recovery) == 2
        and _has_property_depend(recovery[0], depth + 1))


def _unmet(message: str) -> dict[str, Any]:
    return error_to_wire(UnmetDependency(message))


# -- the adapter: scheduler + controller ------------------------------------------


# -- the wire ----------------------------------------------------------------------


def id_ranges(tids: Iterable[int]) -> str:
    """Write task ids compactly for events: [0, 1, 2, 5] -> "0-2,5"."""
    out: list[str] = []
    ids = sorted(set(tids))
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


# What this module held before the task farm was split (its old name is
# ipython1.kernel.task).
_MOVED_OUT = {"TaskFarm": "taskfarm", "TaskFarmSession": "tasksession",
              "TaskFarmReferenceable": "tasksession", "OBSERVER_ALLOWED": "tasksession"}


def __getattr__(name: str) -> Any:
    """Re-export the adapter and the wire, imported only when asked for (they import this)."""
    if name in _MOVED_OUT:
        return getattr(importlib.import_module(f"ipython1.controller.{_MOVED_OUT[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
