"""Results of execute: one record per engine, printed like IPython prompts."""

from __future__ import annotations

from typing import Any

from ipython1.common.serialize import deserialize


class ExecuteResult:
    """What one engine did with one execute: In[n], Out[n], stdout, stderr."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.engine_id: int | None = record.get("engine_id")
        self.execution_count: int | None = record.get("execution_count")
        self.input: str = record.get("input", "")
        self.stdout: str = record.get("stdout", "")
        self.stderr: str = record.get("stderr", "")
        self.outputs: list[dict[str, Any]] = record.get("outputs") or []
        self._result = record.get("result")

    @property
    def has_output(self) -> bool:
        """Tell whether the cell ended with an expression (Out[n])."""
        return self._result is not None

    @property
    def output_repr(self) -> str | None:
        """Return the text/plain repr of Out[n], if any."""
        if self._result is None:
            return None
        return self._result.get("data", {}).get("text/plain")

    @property
    def data(self) -> dict[str, Any]:
        """Return Out[n]'s rich representations by MIME type."""
        return dict(self._result.get("data", {})) if self._result else {}

    @property
    def output(self) -> Any:
        """Return Out[n] itself when it was picklable, else its repr."""
        if self._result is None:
            return None
        frames = self._result.get("frames")
        return deserialize(frames) if frames else self.output_repr

    # IPython 0.10 results were dicts: r['id'] and r['number'] name the engine and In[n].
    _ALIASES = {"id": "engine_id", "number": "execution_count"}

    def __getitem__(self, key: str) -> Any:
        return getattr(self, self._ALIASES.get(key, key))

    def __repr__(self) -> str:
        return self.format()

    def format(self, rich: bool = True) -> str:
        """Render like IPython: '[0] In [3]: code', output, '[0] Out[3]: value'.

        Without rich, stop after stdout/stderr (display() publishes the rest).
        """
        eid = self.engine_id
        n = self.execution_count
        lines = [f"[{eid}] In [{n}]: " + self.input.rstrip("\n").replace("\n", "\n...: ")]
        if self.stdout:
            lines.append(self.stdout.rstrip("\n"))
        if self.stderr:
            lines.append(f"[stderr:{eid}] " + self.stderr.rstrip("\n"))
        if not rich:
            return "\n".join(lines)
        for out in self.outputs:
            text = out.get("data", {}).get("text/plain")
            if text:
                lines.append(f"[output:{eid}] {text}")
        if self.output_repr is not None:
            lines.append(f"[{eid}] Out[{n}]: {self.output_repr}")
        return "\n".join(lines)


    def display(self, stdout: bool = True) -> None:
        """Show this result in the IPython/Jupyter frontend, rich outputs included.

        display() calls and Out[n] are published with all their MIME types, so
        a notebook shows an engine's plots and HTML; a terminal shows text.
        """
        from IPython.display import publish_display_data

        eid, n = self.engine_id, self.execution_count
        text = self.format(rich=False)
        if not stdout:
            text = text.split("\n", 1)[0]
        print(text)
        for out in self.outputs:
            publish_display_data(out.get("data", {}), out.get("metadata") or {})
        if self._result is not None:
            data = self.data
            if set(data) - {"text/plain"}:
                print(f"[{eid}] Out[{n}]:")
                publish_display_data(data, self._result.get("metadata") or {})
            else:
                print(f"[{eid}] Out[{n}]: {self.output_repr}")

    def _ipython_display_(self) -> None:
        self.display()


class ResultList(list):  # type: ignore[type-arg]
    """A list of ExecuteResults that prints as a transcript."""

    def _ipython_display_(self) -> None:
        for result in self:
            result.display()

    def __repr__(self) -> str:
        return "\n".join(r.format() for r in self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))
