"""The event stream on the client: the subscription's receiving end, and events as text."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from foolscap.api import Referenceable
from twisted.logger import Logger
from zope.interface import implementer

from ipython1.common.interfaces import RIEventObserver

log = Logger()

Event = dict[str, Any]


def decode_batch(blob: bytes) -> list[Event]:
    """Turn one delivery (a JSON list) back into events."""
    events = json.loads(blob)
    if not isinstance(events, list):
        raise ValueError("an event batch must be a JSON list")
    return events


def format_event(event: Event) -> str:
    """Render one event as a line of text: time, user, what happened."""
    when = time.strftime("%H:%M:%S", time.localtime(event.get("time", 0)))
    user = event.get("user") or "-"
    kind = event.get("kind", "?")
    engine = event.get("engine")
    data = event.get("data") or {}
    where = f" on {engine}" if engine is not None else ""
    if kind == "queued":
        targets = format_targets(data.get("targets", []))
        what = data.get("code") or ", ".join(data.get("names", [])) or data.get("description", "")
        text = f"{data.get('op')} on {targets}: {what}"
    elif kind in ("stdout", "stderr"):
        text = f"[{kind}:{engine}] {data.get('text', '').rstrip()}"
        where = ""
    elif kind == "result":
        n = data.get("execution_count")
        text = f"{data.get('op')} done" + (f" Out[{n}]" if n is not None else "") + (
            f": {data['repr']}" if data.get("repr") else "")
    elif kind == "error":
        text = f"{data.get('ename')}: {data.get('evalue')}"
    elif kind == "chat":
        text = f"says: {data.get('text', '')}"
    elif kind == "denied":
        text = f"denied {data.get('op')}: {data.get('reason', '')}"
    elif kind in ("task_submitted", "task_finished"):
        status = f" {data['status']}" if data.get("status") else ""
        errors = ", ".join(f"{k} x{v}" for k, v in (data.get("errors") or {}).items())
        text = f"{data.get('n')} task(s){status}: {data.get('tids')}" + (
            f" ({errors})" if errors else "")
    else:
        text = " ".join(f"{k}={v}" for k, v in data.items())
    return f"{when} [{user}] {kind}{where}: {text}"


def format_targets(ids: list[int]) -> str:
    """Render engine ids compactly: [0, 1, 2, 3, 5] -> '0-3,5'."""
    if not ids:
        return "-"
    ids = sorted(ids)
    parts = []
    start = prev = ids[0]
    for i in ids[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


@implementer(RIEventObserver)
class EventObserver(Referenceable):  # type: ignore[misc]
    """The client's end of a subscription: calls callback(event) for each event."""

    def __init__(self, callback: Callable[[Event], Any]) -> None:
        self.callback = callback
        # (time, seq) of the last event delivered: a subscription renewed after a
        # lost connection asks for the bus's history again, and what was already
        # seen is skipped. A restarted controller numbers from 1 again, later.
        self.last: tuple[float, int] | None = None

    def remote_events(self, batch: bytes) -> None:
        for event in decode_batch(batch):
            key = (event.get("time", 0.0), event.get("seq", 0))
            if self.last is not None and key <= self.last:
                continue
            self.last = key
            try:
                self.callback(event)
            except Exception:
                log.failure("event observer {cb} failed", cb=self.callback)
