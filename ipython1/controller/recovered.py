"""Results of the last controller's commands, recovered from the engines that rejoin.

A client object names itself with a random token, kept across reconnections,
and each of its commands with a call id. The controller sends every
multi-engine command to its engines with a tag, ``token/call/n`` (n: how
many engines it went to); an engine keeps the replies of its last tagged
commands (``engine/rejoin.py``). When the controller is restarted, each
rejoining engine names the tags it keeps and the one it is running; a
client that reopens its session with the same token asks for a call's
result by its id (a pending id, or the id of a blocking call that was in
flight at the loss), and the controller gathers the parts from the engines.

A call is complete once its n engines have each given a part (kept, or lost
with a dead engine), or, for parts nobody named, once the engines alive at
the loss have all rejoined, or at the latest when the rejoin window
(``ipcontroller --rejoin-wait``) is over: an engine that rejoins without the
tag never started the command (it was still queued on the old controller).

Pure: no reactor; ``expire`` is called when the window ends.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed

KEPT, RUNNING, LOST = "kept", "running", "lost"
REJOIN_WAIT = 60.0  # s after a restart engines may rejoin with results (--rejoin-wait)
MAX_TOKEN = 64  # characters of a client's token


def make_tag(token: str, call: int, engines: int) -> str:
    return f"{token}/{call}/{engines}"


def parse_tag(tag: Any) -> tuple[str, int, int] | None:
    """Return (token, call, engines) of a tag, or None if it is not one."""
    try:
        token, call, engines = str(tag).split("/")
        return token, int(call), int(engines)
    except ValueError:
        return None


def valid_token(token: Any) -> bool:
    return isinstance(token, str) and 0 < len(token) <= MAX_TOKEN and "/" not in token


class Call:
    """One call's parts, as the rejoining engines name them."""

    def __init__(self, engines: int) -> None:
        self.engines = engines
        self.parts: dict[int, str] = {}  # engine id -> KEPT, RUNNING or LOST
        self.waiters: list[Deferred[Call]] = []

    def complete(self, window_over: bool) -> bool:
        if RUNNING in self.parts.values():
            return False
        return window_over or len(self.parts) >= self.engines

    @property
    def missing(self) -> int:
        """How many engines gave no part (never started it, or never rejoined)."""
        return max(0, self.engines - len(self.parts))


class RecoveredResults:
    """Which rejoined engine holds which part of the last controller's calls."""

    def __init__(self) -> None:
        self.calls: dict[tuple[str, int], Call] = {}
        self.window_over = False
        self._tags: dict[tuple[str, int], str] = {}
        self._fetched: set[tuple[str, int]] = set()  # fetched once, as any pending result
        self._awaited: set[int] = set()  # engines alive at the loss, not rejoined yet
        self.restarted = False  # a controller taking over (--reuse): see expect

    def expect(self, engine_ids: set[int]) -> None:
        """Name the engines that were alive when the last controller stopped: once
        they have all rejoined, no part can come any more (the window ends)."""
        self._awaited = set(engine_ids)
        self.restarted = True
        if not self._awaited:
            self.expire()

    def _part(self, tag: Any, engine_id: int, state: str) -> None:
        parsed = parse_tag(tag)
        if parsed is None:
            return
        token, call, engines = parsed
        key = (token, call)
        if key in self._fetched:
            return
        record = self.calls.setdefault(key, Call(engines))
        record.engines = engines  # a client may have waited before any engine named it
        self._tags[key] = str(tag)
        if record.parts.get(engine_id) != LOST:
            record.parts[engine_id] = state
        self._settle(record)

    def rejoined(self, engine_id: int, kept: Any, running: Any) -> None:
        """An engine rejoined: the tags of the replies it keeps, the one it runs."""
        for tag in kept if isinstance(kept, list) else []:
            self._part(tag, engine_id, KEPT)
        if running is not None:
            self._part(running, engine_id, RUNNING)
        if engine_id in self._awaited:
            self._awaited.discard(engine_id)
            if not self._awaited:
                self.expire()

    def finished(self, engine_id: int, tags: Any) -> None:
        """A rejoined engine finished what it was running: its reply is kept now."""
        for tag in tags if isinstance(tags, list) else []:
            self._part(tag, engine_id, KEPT)

    def lost(self, engine_id: int) -> None:
        """An engine died: its parts cannot be fetched any more."""
        for record in list(self.calls.values()):
            if engine_id in record.parts:
                record.parts[engine_id] = LOST
                self._settle(record)

    def expire(self) -> None:
        """The rejoin window is over: engines that have not named a part never will."""
        self.window_over = True
        for record in list(self.calls.values()):
            self._settle(record)

    def knows(self, token: str, call: int) -> bool:
        """Tell whether an engine named the call, or still might (the window is open)."""
        key = (token, call)
        return key not in self._fetched and (key in self.calls or not self.window_over)

    def complete(self, token: str, call: int) -> bool:
        record = self.calls.get((token, call))
        return record is not None and record.complete(self.window_over)

    def wait(self, token: str, call: int) -> Deferred[tuple[str, Call] | None]:
        """Fire with (tag, its Call) once complete; None if no engine had it."""
        key = (token, call)
        record = self.calls.get(key)
        if record is None and self.window_over or key in self._fetched:
            return succeed(None)
        if record is None:  # the engines have not rejoined yet: wait for one to name it
            record = self.calls[key] = Call(0)
        d: Deferred[Any] = Deferred()
        record.waiters.append(d)
        self._settle(record)
        return d.addCallback(lambda r: None if not r.parts else (self._tags[key], r))

    def forget(self, token: str, call: int) -> None:
        """The result was fetched: fetched once, as any pending result."""
        self.calls.pop((token, call), None)
        self._tags.pop((token, call), None)
        self._fetched.add((token, call))

    def _settle(self, record: Call) -> None:
        if record.waiters and record.complete(self.window_over) and \
                (record.engines or self.window_over):
            waiters, record.waiters = record.waiters, []
            for d in waiters:
                d.callback(record)
