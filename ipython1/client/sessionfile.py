"""Saved sessions on the client: a controller's session log as a Python script, and back.

``to_script`` writes a log as a readable Python script; each command is a block::

    # ---- [3] execute by alice-client-1 at 2025-01-02 10:00:00 (ok)
    # targets: [0, 1]
    x = compute(a)

``parse_script`` reads such a file back, validating all of it before
anything runs; a file that does not parse raises SessionFileError naming
the line.
"""

from __future__ import annotations

import ast
import base64
import re
import time
from collections.abc import Callable
from typing import Any

from ipython1.common.errors import SessionFileError
from ipython1.common.serialize import deserialize

HEADER = "# ipython1 session log"
_BLOCK = re.compile(r"^# ---- \[(\d+)\] (.*)$")
_TARGETS = re.compile(r"^# targets: (.*)$")
NOT_REPLAYABLE = "# not replayable: "
FAILED = "# failed: "  # a command that failed or was interrupted: its code follows, commented


def load_value(*frames_b64: str) -> Any:
    """Rebuild a pushed value from its base64 frames (used by saved sessions)."""
    return deserialize([base64.b64decode(f) for f in frames_b64])


def _value_source(name: str, frames: list[bytes], deserialize: Callable[[Any], Any]) -> str:
    """Return a line binding name to the value: a literal when it round-trips."""
    try:
        value = deserialize(frames)
    except Exception:
        note = "  # value as pickled frames"
    else:
        try:
            text = repr(value)
            again = ast.literal_eval(text) if len(text) <= 10_000 else None
            if type(again) is type(value) and again == value:
                return f"{name} = {text}"
        except Exception:  # not a literal (arrays, objects): keep the frames
            pass
        shape = getattr(value, "shape", None)
        note = f"  # {type(value).__name__}" + (
            f" shape {tuple(shape)}" if isinstance(shape, tuple) else "")
    args = ", ".join(repr(base64.b64encode(f).decode()) for f in frames)
    return f"{name} = _ipython1_load({args}){note}"


def _push_body(values: dict[str, list[bytes]], deserialize: Callable[[Any], Any]) -> str:
    lines = [_value_source(k, fr, deserialize) for k, fr in sorted(values.items())]
    if any("_ipython1_load(" in line for line in lines):
        lines = (["from ipython1.client.sessionfile import load_value as _ipython1_load"]
                 + lines + ["del _ipython1_load"])
    return "\n".join(lines)


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def to_script(entries: list[dict[str, Any]], deserialize: Callable[[Any], Any]) -> str:
    """Write a session log as a readable Python script of '# ---- [n]' blocks."""
    out = [f"{HEADER}, saved {_stamp(time.time())} ({len(entries)} commands)",
           "# Each command is a block: a '# ---- [n]' line, a '# targets:' line, then its code.",
           "# Replay it with MultiEngineClient.restore_session(path).", ""]
    for n, entry in enumerate(entries, 1):
        status = entry.get("status", "ok")
        if entry.get("errors"):
            status = "error: " + ", ".join(entry["errors"][:4])
        blocks = _entry_blocks(entry, deserialize)
        failed = _failure(entry)
        for targets, body in blocks:
            out.append(f"# ---- [{n}] {entry['op']} by {entry.get('client', '?')} at "
                       f"{_stamp(entry.get('time', 0))} ({status})")
            out.append(f"# targets: {targets!r}" if targets != "all" else "# targets: all")
            if failed and not body.startswith(NOT_REPLAYABLE):
                # Replaying it would fail again, or loop again: kept, but commented out.
                out.append(FAILED + failed)
                body = "\n".join("# " + line if line else "#" for line in body.split("\n"))
            out.append(body.rstrip("\n"))
            out.append("")
    return "\n".join(out)


def _failure(entry: dict[str, Any]) -> str:
    """Say why a command did not succeed ('' if it did)."""
    if entry.get("errors"):
        return ", ".join(entry["errors"][:4])
    if entry.get("status", "ok") == "ok":
        return ""
    if entry.get("status") == "pending":
        return "still running when the session was saved"
    return str(entry.get("status"))


def _entry_blocks(entry: dict[str, Any],
                  deserialize: Callable[[Any], Any]) -> list[tuple[Any, str]]:
    op, targets = entry["op"], entry.get("targets", "all")
    if op == "execute":
        return [(targets, entry.get("code", ""))]
    if op == "reset":
        return [(targets, "get_ipython().reset(new_session=False)")]
    if op in ("push", "push_each"):
        values = entry.get("values")
        if values is None:
            names = ", ".join(entry.get("names", []))
            return [(targets, f"{NOT_REPLAYABLE}the pushed values ({names}) were too large "
                              "to keep in the session log")]
        if op == "push":
            return [(targets, _push_body(values["all"], deserialize))]
        return [([int(e)], _push_body(ns, deserialize)) for e, ns in sorted(
            values.items(), key=lambda kv: int(kv[0]))]
    return [(targets, f"{NOT_REPLAYABLE}{op} of a function ({entry.get('description', '')})")]


def parse_script(text: str, source: str = "<session>") -> list[dict[str, Any]]:
    """Return the commands of a saved session: [{"n", "line", "targets", "code", ...}].

    Everything is checked before anything runs: the header, each block's
    '# targets:' line, and that the code of each command compiles (after
    IPython's transforms of magics and !cmd).
    """
    lines = text.splitlines()
    if not lines or not lines[0].startswith(HEADER):
        raise SessionFileError(f"{source}:1: not an ipython1 session file "
                               f"(the first line must start with {HEADER!r})")
    commands: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    i = 1
    while i < len(lines):
        line = lines[i]
        match = _BLOCK.match(line)
        if match:
            if i + 1 >= len(lines) or not _TARGETS.match(lines[i + 1]):
                raise SessionFileError(f"{source}:{i + 2}: expected '# targets: ...' after "
                                       f"the command line {line!r}")
            targets = _parse_targets(_TARGETS.match(lines[i + 1]).group(1), source, i + 2)
            current = {"n": int(match.group(1)), "header": match.group(2), "line": i + 1,
                       "targets": targets, "lines": []}
            commands.append(current)
            i += 2
            continue
        if current is None:
            if line.strip() and not line.startswith("#"):
                raise SessionFileError(f"{source}:{i + 1}: code before the first "
                                       "'# ---- [n]' command line")
        else:
            current["lines"].append(line)
        i += 1
    for command in commands:
        lines = command.pop("lines")
        first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
        command["failed"] = None
        if first is not None and lines[first].startswith(FAILED):
            command["failed"] = lines[first][len(FAILED):].strip()
            lines = [re.sub(r"^# ?", "", ln) for ln in lines[first + 1:]]
        elif "(error" in command["header"]:  # saved before failures were commented out
            command["failed"] = command["header"].rsplit("(", 1)[-1].rstrip(")")
        code = "\n".join(lines).strip("\n")
        command["code"] = code
        body = [ln for ln in code.splitlines() if ln.strip()]
        command["skip"] = next((ln[len(NOT_REPLAYABLE):] for ln in body
                                if ln.startswith(NOT_REPLAYABLE)), None)
        if command["skip"] is None and command["failed"] is None:
            _check_compiles(code, source, command["line"] + 2)
    return commands


def _parse_targets(text: str, source: str, lineno: int) -> Any:
    text = text.strip()
    if text == "all":
        return "all"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, list) and value and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    raise SessionFileError(f"{source}:{lineno}: bad targets {text!r} "
                           "(use 'all', an engine id, or a list of engine ids)")


def _check_compiles(code: str, source: str, first_line: int) -> None:
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        python = TransformerManager().transform_cell(code)
        compile(python, source, "exec")
    except SyntaxError as e:
        where = first_line + (e.lineno or 1) - 1
        raise SessionFileError(f"{source}:{where}: the command does not parse: "
                               f"{e.msg}") from None
