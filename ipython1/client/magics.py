"""The %px magics: run code on the engines from an IPython session.

Installed by ``%load_ext ipython1.magics`` (the extension: connects to the
default profile's controller on first use) or ``mec.activate()`` (uses that
client). Then:

- ``%px [options] code`` runs one line on the active targets and shows each
  engine's result; ``%%px [--targets 0:4] [--block|--noblock] [--stream]``
  runs a cell; both take the same options.
- ``%autopx`` sends every input to the engines until ``%autopx`` again.
- ``%result [n]`` shows the last result (fetching a non-blocking one), or
  execution number n.
- ``%pxconfig [--targets ...] [--block|--noblock] [--stream|--nostream]``
  sets the defaults.

Targets are written ``all``, ``3``, ``1,3,5``, or a slice ``0:4`` / ``0:8:2``.
When engines raise, the cell fails with their tracebacks (grouped by kind
of error), as in ipyparallel: "Run all" in a notebook stops there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ipython1.common.errors import CompositeError, KernelError, RemoteError

_PASS_THROUGH = ("%autopx", "%pxconfig", "%result", "%px", "%%px", "%load_ext", "%unload_ext")


def parse_targets(text: str) -> Any:
    """Turn 'all', '3', '1,3,5' or '0:4' / '0:8:2' into targets."""
    text = text.strip()
    if text in ("", "all"):
        return "all"
    try:
        if ":" in text:
            parts = [int(p) if p.strip() else None for p in text.split(":")]
            if len(parts) > 3 or parts[1] is None:
                raise ValueError
            start, stop, step = (parts + [None])[:3]
            return list(range(start or 0, stop, step or 1))
        if "," in text:
            return [int(p) for p in text.split(",") if p.strip()]
        return int(text)
    except (ValueError, TypeError):
        raise UsageError(f"bad targets {text!r}: use all, 3, 1,3,5 or 0:4") from None


# Leading options of the line form: %px --targets 0 --noblock code
_LINE_OPTION = re.compile(r"\s*((?:--targets|-t)(?:=|\s+)\S+|--block|--noblock|--stream)(?=\s|$)")


def split_line_options(line: str) -> tuple[str, str]:
    """Split '%px --targets 0 --noblock code' into its options and its code."""
    end = 0
    while match := _LINE_OPTION.match(line, end):
        end = match.end()
    return line[:end].strip(), line[end:].strip()


def _labelled(eid: Any, name: str, text: str) -> str:
    return "\n".join(f"[{name}:{eid}] {line}" for line in text.rstrip("\n").split("\n"))


def _show_partial(error: KernelError, stdout: bool = True) -> None:
    """Show what a failed command left: the failing engines' output, labelled per
    engine (unless it was streamed live), and the other engines' results."""
    errors = error.errors if isinstance(error, CompositeError) else [error]
    for err in errors if stdout else []:
        record = getattr(err, "record", None) or {}
        for name in ("stdout", "stderr"):
            if record.get(name):
                print(_labelled(getattr(err, "engine_id", "?"), name, record[name]))
    for done in error.results if isinstance(error, CompositeError) else []:
        _show(done, stdout=stdout)


def _show_error(error: KernelError) -> None:
    errors = error.errors if isinstance(error, CompositeError) else [error]
    for err in errors:
        eid = getattr(err, "engine_id", "?")
        print(f"[{eid}:error] {err.render_traceback() if isinstance(err, RemoteError) else err}")
        record = getattr(err, "record", None) or {}
        for name in ("stdout", "stderr"):
            if record.get(name):
                print(_labelled(eid, name, record[name]))
    if isinstance(error, CompositeError):
        for result in error.results:
            _show(result)


def _show(results: Any, stdout: bool = True) -> None:
    if results is None:
        return
    for result in results if isinstance(results, list) else [results]:
        if hasattr(result, "display"):
            result.display(stdout=stdout)
        else:
            print(repr(result))


class _AutopxTransform:
    """Prefix each input with %%px, once it is complete.

    has_side_effects keeps it out of IPython's check_complete: seen there, a
    cell magic needs a blank line to end, and each input took three Enters.
    """

    has_side_effects = True

    def __call__(self, lines: list[str]) -> list[str]:
        first = next((ln.strip() for ln in lines if ln.strip()), "")
        if not first or first.startswith(_PASS_THROUGH):
            return lines
        return ["%%px\n", *lines]


@magics_class
class ParallelMagics(Magics):  # type: ignore[misc]
    """%px, %%px, %autopx, %result and %pxconfig for one MultiEngineClient."""

    def __init__(self, shell: Any, client: Any = None,
                 connect: Callable[[], Any] | None = None) -> None:
        super().__init__(shell)
        self._client = client
        self._connect = connect  # makes the client on first use when none is given
        self.targets: Any = None  # None: the client's own default
        self.block = True
        self.stream = False
        self.autopx_on = False
        self._autopx_transform: _AutopxTransform | None = None
        self.last: Any = None
        # IPython's own %debug, which ours calls unless told --engine N.
        self._local_debug = shell.magics_manager.magics["line"].get("debug") if shell else None

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                if self._connect is None:
                    raise KernelError("no client given")
                self._client = self._connect()
            except KernelError as e:
                raise UsageError(f"no ipython1 controller to talk to: {e}. Start one "
                                 "(ipcluster start -n 4 --daemon) or call mec.activate() "
                                 "on a connected client.") from None
        return self._client

    def _targets(self, override: str | None) -> Any:
        if override is not None:
            return parse_targets(override)
        return self.targets if self.targets is not None else self.client.targets

    def run(self, code: str, targets: Any = None, block: bool | None = None,
            stream: bool = False) -> Any:
        """Run code on targets and show the results; return them.

        If engines raise, show what the others returned, then raise: the cell fails.
        """
        if code.strip() == "%debug":  # %px %debug: pdb on each engine's last exception
            return self.debug_engines(targets if targets is not None else self._targets(None))
        block = self.block if block is None else block
        # One command's --stream; a non-blocking one leaves it on (%pxconfig --nostream).
        streaming_now = stream and not self.stream
        if streaming_now:
            self.client.subscribe()
            self.stream = True
        live = self.stream
        try:
            result = self.client.execute(code, targets=targets if targets is not None
                                         else self._targets(None), block=block)
        except KernelError as e:
            self.last = e
            _show_partial(e, stdout=not live)
            raise  # the cell fails; IPython shows the engines' frames (_render_traceback_)
        finally:
            if streaming_now and block:
                self.client.unsubscribe()
                self.stream = False
        self.last = result
        if block:
            _show(result, stdout=not live)
        else:
            print(f"[ipython1] running without blocking ({result!r}); %result shows it")
        return result

    @magic_arguments()
    @argument("--targets", "-t", default=None, help="engines: all, 3, 1,3,5 or 0:4")
    @argument("--block", action="store_true", default=None, help="wait for the results")
    @argument("--noblock", action="store_true", default=None, help="do not wait")
    @argument("--stream", action="store_true", default=None,
              help="print engines' stdout/stderr live as [stdout:3] lines")
    @line_cell_magic
    def px(self, line: str, cell: str | None = None) -> None:
        """Run code on the engines: '%px [options] code', or a cell: '%%px [options]'.

        Options: --targets T, --block, --noblock, --stream.
        """
        if cell is None:
            line, cell = split_line_options(line)
            if not cell:
                raise UsageError("%px needs code to run, e.g. %px import numpy")
        args = parse_argstring(self.px, line)
        if args.block and args.noblock:
            raise UsageError("choose one of --block and --noblock")
        block = False if args.noblock else (True if args.block else None)
        self.run(cell, targets=self._targets(args.targets), block=block,
                 stream=bool(args.stream))

    def debug_engines(self, targets: Any) -> Any:
        """Open pdb on the engines' last exceptions, one prompt after another, here."""
        try:
            return self.client.debug(targets)
        except KernelError as e:
            self.last = e
            _show_error(e)
            return None

    @line_cell_magic
    def debug(self, line: str = "", cell: str | None = None) -> Any:
        """%debug --engine N: pdb on engine N's last exception; otherwise IPython's %debug."""
        words = line.split()
        if "--engine" in words or "-e" in words:
            at = words.index("--engine") if "--engine" in words else words.index("-e")
            if at + 1 >= len(words):
                raise UsageError("%debug --engine needs an engine id, e.g. %debug --engine 3")
            return self.debug_engines(parse_targets(words[at + 1]))
        if self._local_debug is None:
            raise UsageError("IPython's own %debug is not available here")
        return self._local_debug(line, cell) if cell is not None else self._local_debug(line)

    @line_magic
    def autopx(self, line: str = "") -> None:
        """Toggle sending every input to the engines (like %%px on each cell)."""
        cleanup = self.shell.input_transformers_cleanup
        if self.autopx_on:
            if self._autopx_transform in cleanup:
                cleanup.remove(self._autopx_transform)
            self.autopx_on = False
            print("%autopx disabled: inputs run locally again")
        else:
            self._autopx_transform = _AutopxTransform()
            cleanup.append(self._autopx_transform)
            self.autopx_on = True
            print("%autopx enabled: every input now runs on the engines; %autopx to stop")

    @magic_arguments()
    @argument("n", nargs="?", type=int, default=None, help="execution number (default: last)")
    @argument("--targets", "-t", default=None, help="engines for n: all, 3, 1,3,5 or 0:4")
    @line_magic
    def result(self, line: str = "") -> Any:
        """Show the last %px result (waiting for a non-blocking one), or In/Out[n]."""
        args = parse_argstring(self.result, line)
        try:
            if args.n is not None:
                result = self.client.get_result(args.n, targets=self._targets(args.targets),
                                                 block=True)
            elif self.last is None:
                raise UsageError("no %px result yet")
            elif hasattr(self.last, "get_result"):
                self.last = result = self.last.get_result()
            elif isinstance(self.last, KernelError):
                raise self.last
            else:
                result = self.last
        except KernelError as e:
            self.last = e
            _show_partial(e, stdout=not self.stream)
            raise  # the cell fails, as %px's would have
        _show(result)
        return None

    @magic_arguments()
    @argument("--targets", "-t", default=None, help="engines: all, 3, 1,3,5 or 0:4")
    @argument("--block", action="store_true", default=None, help="wait for results")
    @argument("--noblock", action="store_true", default=None, help="do not wait")
    @argument("--stream", action="store_true", default=None,
              help="print engines' stdout/stderr live as [stdout:3] lines")
    @argument("--nostream", action="store_true", default=None, help="stop live output")
    @line_magic
    def pxconfig(self, line: str = "") -> None:
        """Set the targets, blocking and live output of %px, %%px and %autopx."""
        args = parse_argstring(self.pxconfig, line)
        if args.block and args.noblock:
            raise UsageError("choose one of --block and --noblock")
        if args.targets is not None:
            self.targets = parse_targets(args.targets)
        if args.block or args.noblock:
            self.block = bool(args.block)
        if args.stream:
            self.client.subscribe()
            self.stream = True
        elif args.nostream and self.stream:
            self.client.unsubscribe()
            self.stream = False
        print(f"%px targets: {self._targets(None)!r}, block: {self.block}, "
              f"stream: {self.stream}")


_installed: dict[int, ParallelMagics] = {}


def activate(client: Any = None, shell: Any = None,
             connect: Callable[[], Any] | None = None) -> ParallelMagics:
    """Register the magics in shell (default: the running IPython) for client.

    Without a client, ``connect()`` makes one when a magic first needs it.
    """
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    if shell is None:
        raise KernelError("activate() needs a running IPython session (none is running)")
    old = _installed.get(id(shell))
    if old is not None and old.autopx_on:
        old.autopx()  # toggle off: the new magics take over
    magics = ParallelMagics(shell, client, connect)
    shell.register_magics(magics)
    _installed[id(shell)] = magics
    return magics


def unload_ipython_extension(ipython: Any) -> None:
    magics = _installed.pop(id(ipython), None)
    if magics is not None and magics.autopx_on:
        magics.autopx()
