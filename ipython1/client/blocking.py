"""The blocking multi-engine client: ``MultiEngineClient`` and its views (``mec[0:4]``).

A thin wrapper that runs an `AsyncMultiEngineClient` in the client's reactor
thread (`reactor`); every call waits with a deadline, or returns a
`PendingResult`. This module is also IPython 0.10's ``client`` namespace
(``from ipython1.kernel import client``): ``client.TaskClient``, the task
descriptions and the errors are importable from it.
"""

from __future__ import annotations

import importlib
import queue
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from ipython1.client import connect
from ipython1.client import multiengine as asyncclient
from ipython1.client.events import format_targets
from ipython1.client.executor import MultiEngineExecutor
from ipython1.client.output import StreamPrinter
from ipython1.client.parallel import Mapper, Parallel
from ipython1.client.parallel import raw_map as _raw_map
from ipython1.client.pending import PendingResult, _split_prompt
from ipython1.client.reactor import ReactorThread, _wait, _wait_for_restarts
from ipython1.client.sessionfile import parse_script, to_script
from ipython1.client.taskfarm import PendingTasks, TaskClient
from ipython1.common.constraints import as_targets
from ipython1.common.errors import ClientTimeout, ConnectionLost, Interrupted, KernelError
from ipython1.common.serialize import deserialize

__all__ = ["MultiEngineClient", "PendingResult"]


class MultiEngineClient:
    """Control a set of engines directly; blocking by default.

    ``furl_or_file`` is a FURL, a FURL file, or None for the profile's
    ``security/ipcontroller-mec.furl``.
    """

    def __init__(self, furl_or_file: Any = None, profile: str = "default",
                 timeout: float | None = None, connect_timeout: float = 10.0,
                 block: bool = True, targets: Any = "all") -> None:
        self._loop = ReactorThread.get()
        self.timeout = timeout
        self.block = block
        self.targets = targets
        future = self._loop.submit(connect.get_multiengine_client, furl_or_file, profile,
                                   connect_timeout)
        self._async: asyncclient.AsyncMultiEngineClient = _wait(future, connect_timeout + 5)
        _wait_for_restarts(self._async, timeout)
        # Engine pdb prompts arrive on the reactor thread; blocking waits serve them.
        self._debug_prompts: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()
        self._async.on_debugger = lambda engine_id, text: self._debug_prompts.put(
            (engine_id, text))

    @property
    def local_channel(self) -> bool:
        """Tell whether commands take the controller's local socket (same host and
        user) rather than Foolscap; see docs/architecture.md."""
        return self._async.local_channel

    # -- plumbing --

    def _run(self, method: Callable[..., Any], *args: Any, targets: Any = None,
             block: bool | None = None, interruptible: bool = False, **kwargs: Any) -> Any:
        """Run method in the reactor thread; wait, or return a PendingResult."""
        targets = as_targets(self.targets if targets is None else targets)  # a tuple: a list
        block = self.block if block is None else block
        on_interrupt = (lambda: self._interrupt_quietly(targets)) if interruptible else None
        sent = time.monotonic()  # elapsed counts from here: the engine may start first
        try:
            future = self._loop.submit(method, *args, targets=targets, block=block, **kwargs)
            result = _wait(future, self.timeout, on_interrupt, self._serve_debugger)
        except KeyboardInterrupt as e:  # Ctrl-C may come before the wait starts, too
            if on_interrupt is None or isinstance(e, Interrupted):
                raise
            raise Interrupted(on_interrupt()) from None
        finally:
            if getattr(self, "_printer", None) is not None:
                self._printer.flush()  # a command's output came before its reply
        if block:
            return result
        return PendingResult(self, result, submitted=sent)

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return _wait(self._loop.submit(method, *args, **kwargs), self.timeout)

    def _serve_debugger(self) -> float:
        """Drive every engine pdb waiting for this client; return the seconds it took."""
        started = time.monotonic()
        served = False
        while True:
            try:
                engine_id, text = self._debug_prompts.get_nowait()
            except queue.Empty:
                return time.monotonic() - started if served else 0.0
            served = True
            self._drive_debugger(engine_id, text)

    def _drive_debugger(self, engine_id: int, text: str) -> None:
        """Show pdb's output, read a line here (terminal, Jupyter's input box), send it."""
        while True:
            printed, prompt = _split_prompt(text)
            sys.stdout.write(printed)
            sys.stdout.flush()
            try:
                line = input(prompt)
            except (EOFError, KeyboardInterrupt):
                line = "quit"
            try:
                answer = self._call(self._async.debug_input, engine_id, line)
            except KernelError:  # the engine died or was killed: its command says so
                return
            text = str(answer.get("output", ""))
            if not answer.get("waiting"):
                sys.stdout.write(text)
                sys.stdout.flush()
                return

    def debug(self, targets: Any = None) -> Any:
        """Open pdb post mortem on each target's last exception, here; return how it ended.

        The prompt appears in this terminal (or Jupyter's input box); the engine's
        queue waits meanwhile. breakpoint() in engine code opens the same prompt.
        """
        return self._run(self._async.debug, targets=targets, block=True)

    def _interrupt_quietly(self, targets: Any) -> str:
        """Interrupt targets after a Ctrl-C; say which engines were running."""
        try:
            ids = _wait(self._loop.submit(self._async._ids, targets), 5)
            running = _wait(self._loop.submit(self._async.interrupt, ids), 5)
        except Exception as e:
            return f"the engines could not be interrupted ({e})"
        hit = [i for i, was in zip(ids, running, strict=True) if was]
        idle = [i for i in ids if i not in hit]
        plural = "s" if len(hit) > 1 else ""
        said = f"interrupted engine{plural} {format_targets(hit)}" if hit else \
            "no engine was still running the call"
        return said + (f" (engine{'s' if len(idle) > 1 else ''} {format_targets(idle)} "
                       "had finished)" if hit and idle else "")

    # -- the multi-engine interface --

    def get_ids(self) -> list[int]:
        """Return the ids of the registered engines."""
        return self._call(self._async.get_ids)

    def execute(self, code: str, targets: Any = None, block: bool | None = None) -> Any:
        """Run code on targets; see IMultiEngine.execute."""
        return self._run(self._async.execute, code, targets=targets, block=block,
                         interruptible=True)

    def push(self, namespace: dict[str, Any], targets: Any = None,
             block: bool | None = None) -> Any:
        """Bind the values of namespace to its names on targets."""
        return self._run(self._async.push, namespace, targets=targets, block=block)

    push_function = push

    def pull(self, keys: str | Sequence[str], targets: Any = None,
             block: bool | None = None) -> Any:
        """Fetch the values of names from targets."""
        return self._run(self._async.pull, keys, targets=targets, block=block)

    pull_function = pull

    def __setitem__(self, key: str, value: Any) -> None:
        self.push({key: value})

    def __getitem__(self, key: Any) -> Any:
        """mec['a'] pulls a; mec[3], mec[0:4], mec[::2] and mec[[1, 2]] are views."""
        if isinstance(key, str):
            return self.pull(key)
        return self.view(key)

    def scatter(self, key: str, seq: Any, targets: Any = None, flatten: bool = False,
                block: bool | None = None) -> Any:
        """Split seq across targets and bind each part to key."""
        return self._run(self._async.scatter, key, seq, targets=targets, block=block,
                         flatten=flatten)

    def gather(self, key: str, targets: Any = None, block: bool | None = None) -> Any:
        """Pull key from targets and join the parts in order."""
        return self._run(self._async.gather, key, targets=targets, block=block)

    def map(self, func: Callable[..., Any], *seqs: Sequence[Any], targets: Any = None,
            block: bool | None = None) -> Any:
        """Apply func elementwise across targets; results in order."""
        method = self._async.map if (self.block if block is None else block) else \
            self._async.map_keeping_stdout
        return self._run(method, func, *seqs, targets=targets, block=block,
                         interruptible=True)

    def apply(self, func: Callable[..., Any], *args: Any, targets: Any = None,
              block: bool | None = None, **kwargs: Any) -> Any:
        """Call func(*args, **kwargs) on each target."""
        # Non-blocking, the PendingResult keeps what the calls printed (its .stdout).
        method = self._async.apply if (self.block if block is None else block) else \
            self._async.apply_keeping_stdout
        return self._run(method, func, *args, targets=targets, block=block,
                         interruptible=True, **kwargs)

    def get_result(self, n: int | None = None, targets: Any = None,
                   block: bool | None = None) -> Any:
        """Return an earlier ExecuteResult by execution number (default: last)."""
        return self._run(self._async.get_result, n, targets=targets, block=block)

    def keys(self, targets: Any = None, block: bool | None = None) -> Any:
        """List the names defined on each target."""
        return self._run(self._async.keys, targets=targets, block=block)

    def reset(self, targets: Any = None, block: bool | None = None) -> Any:
        """Clear the namespace of each target."""
        return self._run(self._async.reset, targets=targets, block=block)

    def kill(self, controller: bool = False, targets: Any = None,
             block: bool | None = None) -> Any:
        """End engines at once; with controller=True, the controller too."""
        return self._run(self._async.kill, controller, targets=targets, block=block)

    def restart(self, targets: Any = None, block: bool | None = None) -> Any:
        """Start engines afresh (new namespace, same id); return once they are back."""
        return self._run(self._async.restart, targets=targets, block=block)

    def interrupt(self, targets: Any = None) -> Any:
        """Raise KeyboardInterrupt in the code running on targets."""
        return self._call(self._async.interrupt, self.targets if targets is None else targets)

    def logs(self, targets: Any = None, lines: int = 100) -> Any:
        """Return the last lines of each target's log; an int target gives one list."""
        return self._call(self._async.logs, self.targets if targets is None else targets, lines)

    def queue_status(self, targets: Any = None) -> Any:
        """Describe each target's queue."""
        return self._call(self._async.queue_status, self.targets if targets is None else targets)

    def clear_queue(self, targets: Any = None) -> Any:
        """Drop the waiting commands of targets; they fail with QueueCleared."""
        return self._call(self._async.clear_queue, self.targets if targets is None else targets)

    def engine_info(self, targets: Any = None) -> Any:
        """Describe targets as they registered: pid, hostname, mpi_rank, mpi_size..."""
        return self._call(self._async.engine_info, self.targets if targets is None else targets)

    def get_pending_result(self, pending_id: int, block: bool = True,
                           timeout: float | None = None) -> Any:
        """Fetch a non-blocking call's result by its id."""
        future = self._loop.submit(self._async.get_pending_result, pending_id, block)
        return _wait(future, timeout if timeout is not None else self.timeout)

    def pending_ids(self) -> list[int]:
        """Return the ids of this client's results not yet fetched."""
        return self._call(self._async.pending_ids)

    def history(self, start: int | None = None, stop: int | None = None,
                targets: Any = None, block: bool | None = None) -> Any:
        """Return each target's numbered inputs [[n, input], ...], start <= n < stop."""
        return self._run(self._async.history, start, stop, targets=targets, block=block)

    def inspect(self, name: str, detail_level: int = 0, targets: Any = None,
                block: bool | None = None) -> Any:
        """Return what `name?` (0) / `name??` (1) shows: {"data": {...}, "text": str}."""
        return self._run(self._async.inspect, name, detail_level, targets=targets, block=block)

    def who(self, targets: Any = None, block: bool | None = None) -> Any:
        """Return the user's names on each target."""
        return self._run(self._async.who, targets=targets, block=block)

    def whos(self, targets: Any = None, block: bool | None = None) -> Any:
        """Return each target's names, types and shapes: {"data": [...], "text": str}."""
        return self._run(self._async.whos, targets=targets, block=block)

    def complete(self, text: str, line: str | None = None, cursor_pos: int | None = None,
                 targets: Any = None, block: bool | None = None) -> Any:
        """Return IPython's completions on each target: {"text", "matches"}."""
        return self._run(self._async.complete, text, line, cursor_pos, targets=targets,
                         block=block)

    def ping(self, targets: Any = None, block: bool | None = None) -> Any:
        """Return each target's {"pid", "time"} once its queue reached the ping."""
        return self._run(self._async.ping, targets=targets, block=block)

    def session_log(self) -> list[dict[str, Any]]:
        """Return the controller's record of commands: op, targets, client, time, status."""
        entries = self._call(self._async.session_log)
        for entry in entries:
            entry.pop("values", None)  # frames; save_session() turns them into code
        return entries

    def save_session(self, path: Any) -> int:
        """Write the controller's session log to path as a Python script; return its size."""
        entries = self._call(self._async.session_log)
        with open(path, "w", encoding="utf-8") as f:
            f.write(to_script(entries, deserialize))
        return len(entries)

    def restore_session(self, path: Any, stop_on_error: bool = False,
                        include_failed: bool = False) -> list[dict[str, Any]]:
        """Replay a saved session onto the engines; report each command's outcome.

        The whole file is parsed first: if it does not parse, SessionFileError
        is raised and nothing runs. Commands that failed or were interrupted
        when recorded (saved commented out, '# failed: ...') are skipped unless
        include_failed. Each report is {"n", "targets", "status": "ok" |
        "error" | "skipped", "error"}.
        """
        with open(path, encoding="utf-8") as f:
            commands = parse_script(f.read(), str(path))
        reports = []
        for command in commands:
            report = {"n": command["n"], "line": command["line"],
                      "targets": command["targets"], "status": "ok", "error": None}
            if command["skip"] is not None:
                report.update(status="skipped", error=command["skip"])
            elif command["failed"] is not None and not include_failed:
                report.update(status="skipped", error=f"failed when recorded: "
                                                      f"{command['failed']}")
            elif command["code"].strip():
                try:
                    self.execute(command["code"], targets=command["targets"], block=True)
                except KernelError as e:
                    report.update(status="error", error=str(e))
            reports.append(report)
            if stop_on_error and report["status"] == "error":
                break
        return reports

    def subscribe(self, callback: Callable[[int, str, str], None] | None = None,
                  own_only: bool = True) -> None:
        """Receive live stdout/stderr; by default print it as '[stdout:3] line'."""
        self._printer = StreamPrinter() if callback is None else None
        self._call(self._async.subscribe, callback or self._printer, own_only)

    def unsubscribe(self) -> None:
        """Stop live output."""
        self._call(self._async.unsubscribe)
        self._printer = None

    def activate(self, shell: Any = None) -> Any:
        """Make this client the one %px, %%px, %autopx and %result use in IPython."""
        from ipython1.client import magics  # IPython itself: only for those who use it

        return magics.activate(self, shell)

    # -- collaboration (issue 8) --

    @property
    def user(self) -> str:
        """The name of the user this client acts as."""
        if getattr(self, "_whoami", None) is None:
            self._whoami = self._call(self._async.whoami)
        return str(self._whoami["user"])

    @property
    def kind(self) -> str:
        """'owner', 'full' or 'observer'."""
        self.user  # noqa: B018 - fetches whoami
        return str(self._whoami["kind"])

    def users(self) -> list[dict[str, Any]]:
        """List the users: name, kind, connected sessions, queued commands."""
        return self._call(self._async.users)

    def say(self, text: str) -> None:
        """Send a chat line to everyone subscribed."""
        return self._call(self._async.say, text)

    def subscribe_events(self, observer: Callable[[dict[str, Any]], Any],
                         history: int = 200) -> dict[str, int]:
        """Call observer(event) for each event, in the client's reactor thread.

        Returns {"seq": n}: the events numbered up to n are history.
        """
        return self._call(self._async.subscribe_events, observer, history)

    def unsubscribe_events(self) -> None:
        """Stop the events (and the events() iterator)."""
        self._events = None
        return self._call(self._async.unsubscribe_events)

    def task_client(self) -> TaskClient:
        """Return a TaskClient for the task farm acting as this client's user."""
        return TaskClient._wrap(self._call(self._async.connect_tasks), self.timeout)

    def transcript(self, user: str | None = None, last: int = 1000) -> list[dict[str, Any]]:
        """Return the last events of the controller's transcript."""
        return self._call(self._async.transcript, user, last)

    def events(self, timeout: float | None = None, history: int = 200) -> Any:
        """Iterate over events as they come; stop after timeout s without one.

        The first call subscribes (recent history first); the subscription stays
        until unsubscribe_events(), so no event is missed between two iterations.
        Events wait in a bounded buffer (the oldest are dropped past 100,000).
        """
        import collections
        import queue as queue_mod

        if getattr(self, "_events", None) is None:
            events: queue_mod.Queue[dict[str, Any]] = queue_mod.Queue()
            overflow: collections.deque[int] = collections.deque()

            def put(event: dict[str, Any]) -> None:
                if events.qsize() >= 100_000:
                    try:
                        events.get_nowait()
                        overflow.append(1)
                    except queue_mod.Empty:
                        pass
                events.put(event)

            self.subscribe_events(put, history)
            self._events = events
        source = self._events
        while True:
            try:
                yield source.get(timeout=timeout)
            except queue_mod.Empty:
                return

    # -- data sets on the engines (issue 21; ipython1/client/, docs/data.md) --

    def load_partitions(self, key: str, paths: Any, loader: Any = "npy", targets: Any = None,
                        mmap: bool = False, **options: Any) -> dict[int, dict[str, Any]]:
        """Have each target load its share of paths (files or a glob) into key.

        Returns {engine_id: {"rows": range, "files": [...]}}; a missing or
        unreadable file raises PartitionLoadError naming it and the engine.
        """
        from ipython1.client import partitions  # numpy: only for the data features

        return self._call(partitions.load_partitions, self._async, key, paths, loader,
                          self.targets if targets is None else targets, mmap, options)

    def distarray(self, key: str, targets: Any = None) -> Any:
        """Return a DistArray over the blocks named key on targets, in engine order."""
        # numpy: only for the data features
        from ipython1.client.distarray import DistArray

        return DistArray.attach(self, key, targets)

    def reduce(self, func: Callable[[Any, Any], Any], key: str, targets: Any = None) -> Any:
        """Fold the values named key on targets with func, pairwise among the engines."""
        ids = self._call(self._async._ids, self.targets if targets is None else targets)
        return self._reduce(func, key, ids)

    def allreduce(self, func: Callable[[Any, Any], Any], key: str, targets: Any = None,
                  out: str | None = None) -> None:
        """Like reduce, and bind the result to out (default: key) on every target."""
        ids = self._call(self._async._ids, self.targets if targets is None else targets)
        self._reduce(func, key, ids, out or key, False)

    def _reduce(self, func: Callable[[Any, Any], Any], source: Any, ids: list[int],
                out: str | None = None, return_result: bool = True) -> Any:
        """Run a reduction among engines ids (client/reduction.py); Ctrl-C interrupts them."""
        from ipython1.client import reduction  # numpy: only for the data features

        future = self._loop.submit(reduction.reduce_on_engines, self._async, func, source, ids,
                                   out, return_result)
        return _wait(future, self.timeout, lambda: self._interrupt_quietly(ids))

    # -- IPython 0.10 names, views, executors (issue 20; docs/migration.md) --

    def __len__(self) -> int:
        """Return how many engines are registered."""
        return len(self.get_ids())

    def push_serialized(self, namespace: dict[str, list[bytes]], targets: Any = None,
                        block: bool | None = None) -> Any:
        """Bind already serialized values ({name: serialize(value)}) to their names."""
        return self._run(self._async.push_serialized, namespace, targets=targets, block=block)

    def pull_serialized(self, keys: str | Sequence[str], targets: Any = None,
                        block: bool | None = None) -> Any:
        """Fetch names as frames, not deserialized (serialize.deserialize(frames))."""
        return self._run(self._async.pull_serialized, keys, targets=targets, block=block)

    def zip_pull(self, keys: Sequence[str], targets: Any = None,
                 block: bool | None = None) -> Any:
        """Pull several names: one tuple per name, its values in target order."""
        return self._run(self._async.zip_pull, keys, targets=targets, block=block)

    def run(self, filename: Any, targets: Any = None, block: bool | None = None) -> Any:
        """Run a local Python file's code on targets."""
        return self._run(self._async.run, filename, targets=targets, block=block,
                         interruptible=True)

    def barrier(self, pending_results: Sequence[PendingResult]) -> None:
        """Wait for every PendingResult (0.10): errors are kept for their get_result()."""
        for pending in sorted(pending_results, key=lambda p: p.id):
            try:
                pending.get_result(block=True)
            except KernelError:
                pass

    def flush(self) -> None:
        """Drop this client's results not yet fetched (other clients' stay)."""
        self._call(self._async.clear_pending_results)

    clear_pending_results = flush

    def get_properties(self, keys: Sequence[str] | None = None, targets: Any = None,
                       block: bool | None = None) -> Any:
        """Return each target's properties: a dict of the named ones (or all)."""
        return self._run(self._async.get_properties, keys, targets=targets, block=block)

    def set_properties(self, properties: dict[str, Any], targets: Any = None,
                       block: bool | None = None) -> Any:
        """Set engine properties (plain data), read by tasks' depend functions."""
        return self._run(self._async.set_properties, properties, targets=targets, block=block)

    def del_properties(self, keys: Sequence[str], targets: Any = None,
                       block: bool | None = None) -> Any:
        """Remove the named properties of targets."""
        return self._run(self._async.del_properties, keys, targets=targets, block=block)

    def has_properties(self, keys: Sequence[str], targets: Any = None,
                       block: bool | None = None) -> Any:
        """Return, per target, whether each name is set there."""
        return self._run(self._async.has_properties, keys, targets=targets, block=block)

    def clear_properties(self, targets: Any = None, block: bool | None = None) -> Any:
        """Remove every property of targets."""
        return self._run(self._async.clear_properties, targets=targets, block=block)

    def mapper(self, dist: str = "b", targets: Any = None, block: bool | None = None) -> Any:
        """Return a Mapper: m.map(f, xs) maps with these targets and blocking."""
        return Mapper(self, dist, self.targets if targets is None else targets,
                      self.block if block is None else block)

    def raw_map(self, func: Callable[..., Any], seqs: Sequence[Sequence[Any]],
                dist: str = "b", targets: Any = None, block: bool | None = None) -> Any:
        """raw_map(f, [xs, ys]) is map(f, xs, ys)."""
        return _raw_map(self, func, seqs, dist, targets, block)

    def parallel(self, dist: str = "b", targets: Any = None, block: bool | None = None) -> Any:
        """Return a decorator: @mec.parallel() def f(x): ...; f(xs) maps f over xs."""
        return Parallel(self.mapper(dist, targets, block))

    def benchmark(self, push_size: int = 10_000) -> dict[str, tuple[float, str]]:
        """Measure latency (execute 'pass') and push throughput, as IPython 0.10 did."""
        import numpy as np

        def best(run: Callable[[], Any], repeat: int = 3, count: int = 10) -> float:
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                for _ in range(count):
                    run()
                times.append((time.perf_counter() - t0) / count)
            return min(times)

        ids = self.get_ids()
        data = {"a": np.zeros(push_size, dtype="float64")}
        return {
            "single_engine_latency": (1000 * best(lambda: self.execute(
                "pass", targets=ids[0], block=True)), "msec"),
            "all_engine_latency": (1000 * best(lambda: self.execute(
                "pass", targets=ids, block=True)), "msec"),
            "all_engine_push": (1e-6 * push_size * 8 / best(lambda: self.push(
                data, targets=ids, block=True)), "MB/sec"),
            "single_engine_push": (1e-6 * push_size * 8 / best(lambda: self.push(
                data, targets=ids[0], block=True)), "MB/sec"),
        }

    def view(self, targets: Any) -> Any:
        """Return a View: this client restricted to targets (also mec[0:4], mec[3])."""
        return View(self, resolve(targets, self.get_ids))

    def executor(self, targets: Any = None) -> Any:
        """Return a concurrent.futures.Executor running each call on one of targets."""
        return MultiEngineExecutor(self, targets)

    def wait_for_engines(self, n: int, timeout: float | None = None) -> list[int]:
        """Wait until at least n engines are registered; return their ids."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.02
        while True:
            ids = self.get_ids()
            if len(ids) >= n:
                return ids
            if deadline is not None and time.monotonic() >= deadline:
                raise ClientTimeout(f"{len(ids)} engine(s) registered, not {n}, "
                                    f"within {timeout:g} s")
            left = delay if deadline is None else min(delay, deadline - time.monotonic())
            time.sleep(max(0.0, left))
            delay = min(delay * 1.5, 0.5)

    def close(self) -> None:
        """Disconnect from the controller."""
        self._loop.reactor.callFromThread(self._async.disconnect)

    def __enter__(self) -> MultiEngineClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- views: a client on fixed targets (mec[0:4], mec[3]) ------------------------------


def resolve(key: int | slice | Sequence[int], ids: Callable[[], list[int]]) -> Any:
    """Turn mec[key] into targets: an int stays one engine; a slice cuts the engine ids."""
    if isinstance(key, bool):
        raise TypeError("engine ids are ints, not bool")
    if isinstance(key, int):
        return key
    if isinstance(key, slice):
        return ids()[key]
    if isinstance(key, (list, tuple, range)) and all(
            isinstance(k, int) and not isinstance(k, bool) for k in key):
        return list(key)
    raise TypeError(f"mec[...] takes an engine id, a slice or a list of ids, not {key!r}")


class View(MultiEngineClient):
    """A MultiEngineClient on fixed targets; blocking like its client."""

    def __init__(self, client: MultiEngineClient, targets: Any) -> None:
        # Share the connection, reactor thread and settings; not a new session.
        self.__dict__.update(client.__dict__)
        self.client = client
        self.targets = targets

    def __len__(self) -> int:
        return 1 if isinstance(self.targets, int) else len(self.targets)

    def view(self, targets: Any) -> View:
        """Narrow this view: view[0] is its first engine, view[::2] every other one."""
        mine = [self.targets] if isinstance(self.targets, int) else list(self.targets)
        if isinstance(targets, int) and not isinstance(targets, bool):
            return View(self.client, mine[targets])
        return View(self.client, resolve(targets, lambda: mine))

    def __repr__(self) -> str:
        return f"<View targets={self.targets!r}>"

    def apply_async(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call func(*args, **kwargs) on the view's engines; return a PendingResult."""
        return self.apply(func, *args, block=False, **kwargs)

    def apply_sync(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call func(*args, **kwargs) on the view's engines and wait for the results."""
        return self.apply(func, *args, block=True, **kwargs)

    def map_async(self, func: Callable[..., Any], *seqs: Sequence[Any]) -> Any:
        """Map func over seqs across the view's engines; return a PendingResult."""
        return self.map(func, *seqs, block=False)

    def map_sync(self, func: Callable[..., Any], *seqs: Sequence[Any]) -> Any:
        """Map func over seqs across the view's engines and wait for the results."""
        return self.map(func, *seqs, block=True)

    def close(self) -> None:
        """Do nothing: the client the view came from owns the connection."""


# -- IPython 0.10's client namespace: the task farm (taskfarm.py, taskspec.py) --------

from ipython1.client.taskspec import MapTask, StringTask, TaskResult  # noqa: E402

__all__ += ["MapTask", "PendingTasks", "StringTask", "TaskClient", "TaskResult"]


from ipython1.client.interactive import interactive  # noqa: E402 - ipyparallel's name

__all__ += ["interactive"]

# -- IPython 0.10: the errors, importable from client (client.CompositeError...) --

from ipython1.common.errors import (  # noqa: E402
    CompositeError,
    ControllerNotFound,
    EngineError,
    InvalidEngineID,
    InvalidPendingResult,
    InvalidTaskID,
    NoEnginesRegistered,
    PermissionDenied,
    QueueCleared,
    RemoteError,
    ResultNotReady,
    SerializationError,
    TaskAborted,
    TaskRejectError,
    TaskTimeout,
    UnmetDependency,
)

__all__ += ["ClientTimeout", "CompositeError", "ConnectionLost", "ControllerNotFound",
            "EngineError", "InvalidEngineID", "InvalidPendingResult", "InvalidTaskID",
            "KernelError", "NoEnginesRegistered", "PermissionDenied", "QueueCleared",
            "RemoteError", "ResultNotReady", "SerializationError", "TaskAborted",
            "TaskRejectError", "TaskTimeout", "UnmetDependency"]


# What this module held before the blocking clients were split (its old name is
# ipython1.kernel.client); the rest of it is imported above.
_MOVED_OUT = {"DEBUGGER_POLL": "reactor", "_stdout_of": "pending", "POLL_SECONDS": "taskfarm",
              "WAIT_WINDOW": "taskfarm", "_stopped_waiting": "taskfarm"}


def __getattr__(name: str) -> Any:
    """Re-export the constants that moved with their classes, imported only when asked for."""
    if name in _MOVED_OUT:
        return getattr(importlib.import_module(f"ipython1.client.{_MOVED_OUT[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
