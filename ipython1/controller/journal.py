"""The task journal: the task farm's tasks in SQLite, so they outlive the controller.

One database per cluster directory (``tasks.sqlite``, WAL). The scheduler
marks a task dirty whenever its state changes; ``commit()`` writes every
dirty task in one transaction, so the farm commits once per client call and
once per reactor turn of replies, not once per task. Where it matters the
commit is fsynced (``durable``): tasks a client is told are accepted, and
ids handed out, survive a crash of the machine. Results and state changes
are written to the WAL at once, which a crash of the controller cannot undo,
and reach the disk with the next durable commit or checkpoint: after a crash
of the machine a task whose result was not yet fsynced runs again. A result
larger than ``LARGE_RESULT`` bytes goes to a file of its own
(``task-results/<tid>``), fsynced before the row that names it is committed.

What is kept: each task's spec (until it finishes), state, engine, attempts,
retries left, which recovery task is current, its first error, and once
finished its result record; and the next task id, so ids are never reused.
Values stay opaque frames: everything is encoded with msgpack, never pickle.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

LARGE_RESULT = 1 << 20  # result records larger than this go to a file of their own
FILE_NAME = "tasks.sqlite"
RESULTS_DIR = "task-results"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    tid INTEGER PRIMARY KEY,
    client TEXT NOT NULL,
    user TEXT NOT NULL,
    state TEXT NOT NULL,
    engine_id INTEGER,
    attempts INTEGER NOT NULL,
    retries_left INTEGER NOT NULL,
    recovery_depth INTEGER NOT NULL,
    submitted REAL NOT NULL,
    spec BLOB,
    first_error BLOB,
    result BLOB,
    result_file TEXT
);
"""

_UPSERT = """
INSERT INTO tasks (tid, client, user, state, engine_id, attempts, retries_left,
                   recovery_depth, submitted, spec, first_error, result, result_file)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(tid) DO UPDATE SET
    state = excluded.state, engine_id = excluded.engine_id, attempts = excluded.attempts,
    retries_left = excluded.retries_left, recovery_depth = excluded.recovery_depth,
    spec = CASE WHEN excluded.result IS NULL AND excluded.result_file IS NULL
                THEN tasks.spec END,
    first_error = excluded.first_error, result = excluded.result,
    result_file = excluded.result_file
"""


def _dumps(value: Any) -> bytes | None:
    return None if value is None else msgpack.packb(value, use_bin_type=True)


def _loads(data: bytes | None) -> Any:
    if data is None:
        return None
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


@dataclass
class StoredTask:
    """One task as the journal holds it (spec is None once finished)."""

    tid: int
    client: str
    user: str
    state: str
    engine_id: int | None
    attempts: int
    retries_left: int
    recovery_depth: int
    submitted: float
    spec: dict[str, Any] | None
    first_error: dict[str, Any] | None


def recovery_depth(task: Any) -> int:
    """Count how many recovery steps separate task.current from task.spec."""
    spec, depth = task.spec, 0
    while spec is not task.current and isinstance(spec, dict) and spec.get("recovery"):
        spec, depth = spec["recovery"], depth + 1
    return depth if spec is task.current else 0


def current_spec(spec: dict[str, Any], depth: int) -> dict[str, Any]:
    """Return the recovery task depth steps down spec (spec itself for 0)."""
    for _ in range(depth):
        spec = spec.get("recovery") or spec
    return spec


class TaskJournal:
    """Keep tasks durably in SQLite; see the module docstring."""

    def __init__(self, path: Path | str, large_result: int = LARGE_RESULT) -> None:
        self.path = Path(path)
        self.results_dir = self.path.parent / RESULTS_DIR
        self.large_result = large_result
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        os.chmod(self.path, 0o600)  # task values may be private
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._synchronous = ""
        # Reads (start-up, fetching a restored result) on their own connection:
        # the writer may be busy on another thread.
        self._reader = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
        self._dirty: dict[int, Any] = {}
        self._dropped: set[int] = set()
        self._next_tid: int | None = None
        self.commits = 0

    # -- recording (buffered until commit) --

    def touch(self, task: Any) -> None:
        """Note that a task's state changed (TaskRecord)."""
        self._dirty[task.tid] = task
        self._dropped.discard(task.tid)

    def dropped(self, tid: int) -> None:
        self._dirty.pop(tid, None)
        self._dropped.add(tid)

    def reserved(self, next_tid: int) -> None:
        self._next_tid = next_tid

    def pending(self) -> bool:
        return bool(self._dirty or self._dropped or self._next_tid is not None)

    def commit(self, durable: bool = True) -> None:
        """Write every change since the last commit in one transaction, now."""
        write = self.prepare(durable)
        if write is not None:
            write()

    def prepare(self, durable: bool = True) -> Callable[[], None] | None:
        """Take every change since the last call; return the transaction that writes
        them (None if there are none), to run on any one thread, in order.

        Encoding happens here, on the caller's thread, while the tasks hold
        these values; the SQLite work and fsync happen in the returned call.
        durable: fsync it (FULL); else it survives a crash of this process,
        not of the machine, until the next durable commit (NORMAL).
        """
        if not self.pending():
            return None
        dirty, self._dirty = self._dirty, {}
        dropped, self._dropped = self._dropped, set()
        next_tid, self._next_tid = self._next_tid, None
        rows = [self._row(task) for task in dirty.values()]
        for task in dirty.values():
            task.journaled = True  # its spec is on its way: later rows leave it alone
        return lambda: self._write(rows, dropped, next_tid, durable)

    def _write(self, rows: list[list[Any]], dropped: set[int], next_tid: int | None,
               durable: bool) -> None:
        db = self._db
        synchronous = "FULL" if durable else "NORMAL"
        if synchronous != self._synchronous:  # per connection, between transactions
            db.execute(f"PRAGMA synchronous={synchronous}")
            self._synchronous = synchronous
        for row in rows:
            if row[11] is not None and len(row[11]) > self.large_result:
                row[12] = self._write_file(row[0], row[11])
                row[11] = None
        files = self._files(dropped)
        db.execute("BEGIN IMMEDIATE")
        try:
            if next_tid is not None:
                db.execute("INSERT INTO meta VALUES ('next_tid', ?) ON CONFLICT(key) DO "
                           "UPDATE SET value = max(value, excluded.value)", (next_tid,))
            db.executemany(_UPSERT, rows)
            db.executemany("DELETE FROM tasks WHERE tid = ?", [(t,) for t in dropped])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.commits += 1
        for path in files:
            path.unlink(missing_ok=True)

    def _row(self, task: Any) -> list[Any]:
        finished = task.result is not None and task.state in ("succeeded", "failed")
        return [task.tid, task.client, task.user, task.state, task.engine_id, task.attempts,
                task.retries_left, recovery_depth(task), task.submitted,
                None if finished or task.journaled else _dumps(task.spec),
                _dumps(task.first_error), _dumps(task.result) if finished else None, None]

    def _write_file(self, tid: int, data: bytes) -> str:
        self.results_dir.mkdir(mode=0o700, exist_ok=True)
        path = self.results_dir / str(tid)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)  # before the row that names it is committed
        finally:
            os.close(fd)
        return path.name

    def _files(self, tids: set[int]) -> list[Path]:
        if not tids:
            return []
        marks = ",".join("?" * len(tids))
        rows = self._db.execute(f"SELECT result_file FROM tasks WHERE tid IN ({marks}) "
                                "AND result_file IS NOT NULL", list(tids)).fetchall()
        return [self.results_dir / name for (name,) in rows]

    # -- reading (at start-up) --

    def next_tid(self) -> int:
        """Return the first task id never handed out."""
        row = self._reader.execute("SELECT value FROM meta WHERE key = 'next_tid'").fetchone()
        top = self._reader.execute("SELECT max(tid) FROM tasks").fetchone()[0]
        return max(row[0] if row else 0, 0 if top is None else top + 1)

    def load(self) -> Iterator[StoredTask]:
        """Yield every task, in id order, without finished results (see load_result)."""
        cursor = self._reader.execute(
            "SELECT tid, client, user, state, engine_id, attempts, retries_left, "
            "recovery_depth, submitted, spec, first_error FROM tasks ORDER BY tid")
        for row in cursor:
            yield StoredTask(*row[:9], _loads(row[9]), _loads(row[10]))

    def load_result(self, tid: int) -> dict[str, Any] | None:
        """Return a finished task's result record, or None."""
        row = self._reader.execute("SELECT result, result_file FROM tasks WHERE tid = ?",
                                   (tid,)).fetchone()
        if row is None:
            return None
        if row[1] is not None:
            return _loads((self.results_dir / row[1]).read_bytes())  # type: ignore[no-any-return]
        return _loads(row[0])  # type: ignore[no-any-return]

    def close(self) -> None:
        self.commit()
        self._db.close()
        self._reader.close()


class JournalWriter:
    """Run a journal's writes on one thread of their own, in order.

    The reactor never waits for SQLite or an fsync; a caller that must know
    its write is on disk (a client's submission) waits for the Deferred.
    """

    def __init__(self, reactor: Any = None) -> None:
        from twisted.python.threadpool import ThreadPool

        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._pool = ThreadPool(1, 1, "task-journal")
        self._started = False

    def run(self, write: Callable[[], None]) -> Any:
        """Queue write; return a Deferred that fires once it is done."""
        from twisted.internet import threads

        if not self._started:
            self._started = True
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)
        return threads.deferToThreadPool(self._reactor, self._pool, write)

    def stop(self) -> None:
        """Finish the queued writes and end the thread."""
        if self._started:
            self._started = False
            self._pool.stop()


def open_journal(cluster_path: Path) -> TaskJournal | None:
    """Open the cluster directory's journal; None if IPYTHON1_TASK_JOURNAL=0."""
    if os.environ.get("IPYTHON1_TASK_JOURNAL", "1") == "0":
        return None
    return TaskJournal(Path(cluster_path) / FILE_NAME)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
