"""The engine's IPython shell: output captured, not printed, and per-cell work remembered.

Display hooks keep results and ``display()`` outputs in the running command's
record; static input transformations and the autoawait check, pure functions
of a cell's text, are remembered per text.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable
from typing import Any


def _make_shell(recorder: _Recorder) -> Any:
    """Build an InteractiveShell whose output is captured, not printed."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    class CapturingDisplayHook(DisplayHook):  # type: ignore[misc]
        """Keep Out[n]'s format data instead of printing 'Out[n]: ...'."""

        def write_output_prompt(self) -> None:
            pass

        def write_format_data(self, format_dict: dict[str, Any], md_dict: Any = None) -> None:
            recorder.current["result"] = {"data": _plain(format_dict),
                                          "metadata": _plain(md_dict or {})}

        def finish_displayhook(self) -> None:
            pass

    class CapturingDisplayPublisher(DisplayPublisher):  # type: ignore[misc]
        """Keep display() calls as outputs of the running command."""

        def publish(self, data: dict[str, Any], metadata: Any = None, *args: Any,
                    **kw: Any) -> None:
            recorder.current.setdefault("outputs", []).append(
                {"data": _plain(data), "metadata": _plain(metadata or {})}
            )

        def clear_output(self, wait: bool = False) -> None:
            recorder.current["outputs"] = []

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    config.InteractiveShell.colors = "nocolor"
    config.InteractiveShell.xmode = "Context"
    config.IPCompleter.use_jedi = False  # complete on live objects, fast and predictable
    InteractiveShell.displayhook_class = CapturingDisplayHook
    InteractiveShell.display_pub_class = CapturingDisplayPublisher
    shell = InteractiveShell.instance(config=config)
    # The config applies only if this made the instance (a test process may hold one).
    shell.Completer.use_jedi = False

    def showtraceback(etype: Any, evalue: Any, stb: list[str]) -> None:
        recorder.current["traceback"] = shell.InteractiveTB.stb2text(stb)

    shell._showtraceback = showtraceback
    manager = shell.input_transformer_manager
    manager.transform_cell = StaticTransformCache(manager)
    shell.should_run_async = _cached_async_check(shell)
    shell.prefilter_manager.prefilter_lines = _keyword_lines_unfiltered(shell)
    return shell


# A shell built before forking engines (prebuild), for the first kernel made after.
_prebuilt: tuple[_Recorder, Any] | None = None


def prebuild() -> None:
    """Build the shell now, in a process about to fork engines: each engine's
    kernel takes its copy (take_shell) instead of building one (~1,100 page
    faults and 8-18 ms CPU per engine). The shell keeps no thread or file
    (its history is in memory), so a copy made by fork works as the original."""
    global _prebuilt
    recorder = _Recorder()
    _prebuilt = (recorder, _make_shell(recorder))


def take_shell() -> tuple[_Recorder, Any]:
    """Return a recorder and the shell writing to it: the prebuilt one once, else new."""
    global _prebuilt
    if _prebuilt is not None:
        parts, _prebuilt = _prebuilt, None
        return parts
    recorder = _Recorder()
    return recorder, _make_shell(recorder)


_FIRST_WORD = re.compile(r"\s*([A-Za-z_]\w*)")


def _keyword_lines_unfiltered(shell: Any) -> Callable[..., str]:
    """Skip IPython's dynamic prefilter for one-line cells that start with a keyword.

    The prefilter (automagic, autocall, macros) looks at the first word of a
    one-line cell; a Python keyword (``import``, ``for``, ``pass``...) is
    never a magic, an autocallable or a macro, so the line comes back as it
    went in. Knowing that up front saves ~75 us per cell on an engine whose
    caches are cold. Anything else, or any prefilter transformer installed,
    goes through IPython as usual.
    """
    manager = shell.prefilter_manager
    prefilter_lines = manager.prefilter_lines

    def maybe_prefilter(lines: str, continue_prompt: bool = False) -> str:
        line = lines.rstrip("\n")
        if not continue_prompt and "\n" not in line and not manager.transformers:
            word = _FIRST_WORD.match(line)
            if (word is not None and keyword.iskeyword(word.group(1))
                    and word.group(1) not in shell.user_ns):
                shell._last_input_line = line
                return line
        return prefilter_lines(lines, continue_prompt)

    return maybe_prefilter


def _cached_async_check(shell: Any) -> Callable[..., bool]:
    """Remember, per transformed cell, whether it needs IPython's autoawait.

    IPython compiles every cell an extra time to look for a top-level
    ``await``: a pure function of the cell's text, asked again for every
    broadcast and every loop of the same cell.
    """
    ask = shell.should_run_async
    known: dict[str, bool] = {}

    def should_run_async(raw_cell: str, *, transformed_cell: str | None = None,
                         preprocessing_exc_tuple: Any = None) -> bool:
        if transformed_cell is None or preprocessing_exc_tuple is not None or not shell.autoawait:
            return ask(raw_cell, transformed_cell=transformed_cell,
                       preprocessing_exc_tuple=preprocessing_exc_tuple)
        answer = known.get(transformed_cell)
        if answer is None:
            answer = bool(ask(raw_cell, transformed_cell=transformed_cell,
                              preprocessing_exc_tuple=None))
            _remember_cell(known, transformed_cell, answer)
        return answer

    return should_run_async


class StaticTransformCache:
    """Remember what IPython's static input transformations make of a cell.

    They are a pure function of the cell's text and of the transformer lists
    (``%magic``, ``!cmd``, ``obj?``, prompts, indentation), yet they tokenize
    the cell every time: on an engine among hundreds, whose caches are cold
    when a command arrives, that is ~100 us of a no-op's ~500 us. The same
    cells come back again and again (every engine of a broadcast, loops of
    commands), so the result is kept per text, and all of it is forgotten if
    a transformer is added or removed. IPython's dynamic transformations
    (automagic, autocall), which depend on the namespace, still run each time.
    """

    MAX_CELLS = 256
    MAX_CELL_CHARS = 4096

    def __init__(self, manager: Any) -> None:
        self._manager = manager
        self._transform = manager.transform_cell
        self._transformers: tuple[Any, ...] = ()
        self._cells: dict[str, str] = {}

    def _current(self) -> tuple[Any, ...]:
        m = self._manager
        return (*m.cleanup_transforms, None, *m.line_transforms, None, *m.token_transformers)

    def __call__(self, cell: str) -> str:
        transformers = self._current()
        if transformers != self._transformers:
            self._cells.clear()
            self._transformers = transformers
        done = self._cells.get(cell)
        if done is None:
            done = self._transform(cell)
            _remember_cell(self._cells, cell, done)
        return done


def _remember_cell(cells: dict[str, Any], cell: str, value: Any) -> None:
    """Keep what a cell's text gave, for cells up to MAX_CELL_CHARS, the newest MAX_CELLS."""
    if len(cell) <= StaticTransformCache.MAX_CELL_CHARS:
        if len(cells) >= StaticTransformCache.MAX_CELLS:
            del cells[next(iter(cells))]  # the oldest
        cells[cell] = value


def _plain(mapping: dict[str, Any]) -> dict[str, Any]:
    """Return a dict that Foolscap can send: str keys, plain values."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, (str, bytes, int, float, bool, type(None))):
            out[str(key)] = value
        elif isinstance(value, dict):
            out[str(key)] = _plain(value)
        elif isinstance(value, (list, tuple)):
            out[str(key)] = [v if isinstance(v, (str, int, float, bool)) else repr(v)
                             for v in value]
        else:
            out[str(key)] = repr(value)
    return out


class _Recorder:
    """Holds the record of the command being run on the shell thread."""

    def __init__(self) -> None:
        self.current: dict[str, Any] = {}
