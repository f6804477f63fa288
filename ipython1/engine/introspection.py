"""Introspection of an engine's IPython shell: history, inspect, who, complete.

Pure functions of an ``InteractiveShell``; the engine calls them on its shell
thread. Every answer is plain data (str, int, list, dict) that Foolscap can
send as is.
"""

from __future__ import annotations

from typing import Any

MAX_HISTORY_ITEMS = 10_000  # inputs returned by one history() call
MAX_MATCHES = 1_000  # completions returned by one complete() call
MAX_REPR = 200  # characters of a value's repr in whos()

# The fields of IPython's object_inspect() that we send; all text or None.
INSPECT_FIELDS = (
    "name", "found", "type_name", "base_class", "string_form", "namespace", "length",
    "file", "definition", "docstring", "source", "init_definition", "class_docstring",
    "init_docstring", "call_def", "call_docstring", "isclass", "ismagic", "isalias",
)


def history(shell: Any, start: int | None = None, stop: int | None = None) -> list[list[Any]]:
    """Return [[n, input], ...] for execution numbers start <= n < stop."""
    for name, value in (("start", start), ("stop", stop)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise TypeError(f"history() {name} must be an int or None, not {value!r}")
    first = 1 if start is None else start
    items = shell.history_manager.get_range(0, first, stop, raw=True, output=False)
    out = [[n, text] for _session, n, text in items]
    return out[-MAX_HISTORY_ITEMS:]


def inspect(shell: Any, name: str, detail_level: int = 0) -> dict[str, Any]:
    """Return what ``name?`` (0) or ``name??`` (1) shows: {"data": {...}, "text": str}."""
    if detail_level not in (0, 1):
        raise ValueError(f"detail_level must be 0 (like obj?) or 1 (like obj??), "
                         f"not {detail_level!r}")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("inspect() needs a name, e.g. 'x' or 'np.linalg.norm'")
    info = shell.object_inspect(name, detail_level=detail_level)
    if not info.get("found"):
        raise NameError(f"name {name!r} is not defined on this engine")
    data = {key: _text_or_none(info.get(key)) for key in INSPECT_FIELDS}
    data["found"] = True
    text = shell.object_inspect_text(name, detail_level=detail_level)
    return {"data": data, "text": text}


def _text_or_none(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    return str(value)


def who(shell: Any) -> list[str]:
    """Return the user's names, like ``%who_ls``."""
    hidden = shell.user_ns_hidden
    return sorted(k for k in shell.user_ns if not k.startswith("_") and k not in hidden)


def whos(shell: Any) -> dict[str, Any]:
    """Describe each user name: type, and shape/dtype for arrays; as data and text."""
    rows = []
    for name in who(shell):
        value = shell.user_ns[name]
        row: dict[str, Any] = {"name": name, "type": type(value).__name__}
        shape = getattr(value, "shape", None)
        if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape):
            row["shape"] = list(shape)
            dtype = getattr(value, "dtype", None)
            if dtype is not None:
                row["dtype"] = str(dtype)
            row["info"] = f"shape {'x'.join(map(str, shape)) or '()'}" + (
                f", dtype {dtype}" if dtype is not None else "")
        else:
            try:
                text = repr(value)
            except Exception as e:  # a broken __repr__ must not break whos
                text = f"<repr failed: {type(e).__name__}>"
            row["info"] = text if len(text) <= MAX_REPR else text[:MAX_REPR - 3] + "..."
        rows.append(row)
    return {"data": rows, "text": _whos_table(rows)}


def _whos_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "Interactive namespace is empty."
    width_name = max(8, *(len(r["name"]) for r in rows))
    width_type = max(4, *(len(r["type"]) for r in rows))
    lines = [f"{'Variable':<{width_name}}   {'Type':<{width_type}}   Data/Info",
             "-" * (width_name + width_type + 16)]
    for r in rows:
        info = r["info"].replace("\n", " ")
        lines.append(f"{r['name']:<{width_name}}   {r['type']:<{width_type}}   {info}")
    return "\n".join(lines)


def complete(shell: Any, text: str, line: str | None = None,
             cursor_pos: int | None = None) -> dict[str, Any]:
    """Return IPython's completions: {"text": matched text, "matches": [...]}."""
    if not isinstance(text, str) or not isinstance(line, (str, type(None))):
        raise TypeError("complete() takes text and line as str (line may be None)")
    if cursor_pos is not None and (not isinstance(cursor_pos, int) or line is None):
        raise TypeError("complete() cursor_pos must be an int, with a line")
    if line is not None and cursor_pos is None:
        cursor_pos = len(line)
    if cursor_pos is not None and line is not None and not 0 <= cursor_pos <= len(line):
        raise ValueError(f"cursor_pos {cursor_pos} is outside the line (length {len(line)})")
    matched, matches = shell.complete(text, line, cursor_pos)
    return {"text": matched, "matches": list(matches)[:MAX_MATCHES]}
