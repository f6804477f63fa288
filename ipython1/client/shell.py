"""ipython1-shell: a collaborative IPython terminal whose cells run on the cluster.

IPython's own TerminalInteractiveShell (prompt_toolkit: history, highlighting,
completion), except that a cell runs on the engines (all of them, or those of
``%targets``); ``%local`` / ``%%local`` run a line or cell here. Everything the
other users of the cluster do appears live above the prompt, attributed, without
garbling the line being typed (IPython prompts under prompt_toolkit's
``patch_stdout``, so text written from the event thread is printed above it).

Shell magics: %targets, %local, %%local, %users, %say, %mute, %unmute,
%transcript. Completion and ``name?`` / ``name??`` ask the engines.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import threading
import time
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.terminal.interactiveshell import TerminalInteractiveShell

from ipython1.client.events import format_event, format_targets
from ipython1.common.errors import KernelError, PermissionDenied

# Cells that start with one of these run in the shell itself, not on the engines.
LOCAL_COMMANDS = ("%targets", "%local", "%%local", "%users", "%say", "%mute", "%unmute",
                  "%transcript", "%exit", "%quit", "exit", "quit", "%history", "%hist",
                  "%load_ext", "%config", "%colors")
_INSPECT = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(\?\??)\s*$")
_PREFIX = re.compile(r"^\s*(%%?\w+|\w+)")


class EventPrinter:
    """Print other users' events as attributed lines (runs in the reactor thread)."""

    def __init__(self, me: str, out: Any = None) -> None:
        self.me = me  # this shell's session: its own events are not echoed
        self.muted: set[str] = set()
        self.counts: dict[int, int] = {}  # engine -> last execution count seen
        self.history_until = 1 << 62  # events up to this seq are history: shown by recent()
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self.last_seq = 0  # the newest event seen
        self._arrived = threading.Condition()
        self._lock = threading.Lock()
        self._out = out

    def write(self, text: str) -> None:
        out = self._out or sys.stdout  # the prompt's patch_stdout proxy while prompting
        with self._lock:
            out.write(text + "\n")
            out.flush()

    def __call__(self, event: dict[str, Any]) -> None:
        kind, data, engine = event.get("kind"), event.get("data") or {}, event.get("engine")
        if kind in ("result", "error") and engine is not None and \
                isinstance(data.get("execution_count"), int):
            self.counts[engine] = data["execution_count"]
        elif kind in ("engine_registered", "engine_died") and engine is not None:
            self.counts.pop(engine, None)  # a new engine counts from 1
        with self._arrived:
            self.last_seq = max(self.last_seq, int(event.get("seq", 0)))
            self._arrived.notify_all()
        if event.get("client") == self.me and kind != "chat":  # own chat: the echo
            return
        if event.get("seq", 0) <= self.history_until:
            self.history.append(event)
            return
        user = event.get("user") or "-"
        if user in self.muted:
            return
        line = self.format(user, kind, engine, data)
        if line:
            self.write(line)

    def recent(self, last: int = 20, timeout: float = 2.0) -> list[str]:
        """Return the last lines of the history this shell got when it subscribed.

        The history arrives just after the subscription's answer: wait for it.
        """
        with self._arrived:
            self._arrived.wait_for(lambda: self.last_seq >= self.history_until, timeout)
        lines = []
        for event in self.history:
            line = self.format(event.get("user") or "-", event.get("kind"),
                               event.get("engine"), event.get("data") or {})
            if line:
                when = time.strftime("%H:%M:%S", time.localtime(event.get("time", 0)))
                lines.append(f"{when} {line}")
        return lines[-last:]

    def format(self, user: str, kind: Any, engine: Any, data: dict[str, Any]) -> str | None:
        tag = f"[{user}]"
        if kind == "queued":
            targets = data.get("targets") or []
            where = format_targets(targets)
            if data.get("op") == "execute":
                nexts = {self.counts.get(e, 0) + 1 for e in targets}
                n = nexts.pop() if len(nexts) == 1 else "*"
                code = str(data.get("code", "")).rstrip("\n").split("\n")
                pad = " " * (len(tag) + len(f" In [{n}]")) + "...: "
                return f"{tag} In [{n}] on {where}: " + f"\n{pad}".join(code)
            op = str(data.get("op"))
            what = ", ".join(data.get("names", [])) or str(data.get("description", ""))
            if not what.startswith(op):  # descriptions such as "inspect y" name it already
                what = f"{op} {what}".rstrip()
            return f"{tag} {what} on {where}"
        if kind in ("stdout", "stderr"):
            text = str(data.get("text", "")).rstrip("\n")
            label = f"{tag}[{kind}:{engine}]"
            return "\n".join(f"{label} {line}" for line in text.split("\n"))
        if kind == "result" and data.get("repr") is not None:
            return f"{tag}[{engine}] Out[{data.get('execution_count')}]: {data['repr']}"
        if kind == "error":
            return f"{tag}[{engine}] {data.get('ename')}: {data.get('evalue')}"
        if kind == "chat":
            return f"{tag} says: {data.get('text', '')}"
        if kind in ("joined", "left"):
            return f"* {user} {kind} ({data.get('kind', '')})"
        if kind in ("engine_registered", "engine_died"):
            return f"* engine {engine} {'registered' if kind == 'engine_registered' else 'died'}"
        if kind == "denied":
            return f"{tag} was refused {data.get('op')} (observer)"
        if kind in ("user_added", "user_removed"):
            return f"* user {data.get('name')} {kind.split('_')[1]}"
        return None


@magics_class
class CollaborationMagics(Magics):  # type: ignore[misc]
    """%targets, %local, %%local, %users, %say, %mute, %unmute, %transcript."""

    @line_magic
    def targets(self, line: str) -> None:
        """%targets 0,2 | 0:4 | all: choose the engines cells run on."""
        # IPython, Foolscap, the reactor: once the shell starts, not for --help
        from ipython1.client.magics import parse_targets

        if line.strip():
            self.shell.cluster_targets = parse_targets(line)
        print(f"cells run on: {self.shell.cluster_targets!r}")

    @line_magic
    def local(self, line: str) -> None:
        """%local CODE: run one line in this shell, not on the cluster."""
        self.shell.run_local(line)  # it shows its own Out[n]; returned, it would show twice

    @cell_magic("local")
    def local_cell(self, line: str, cell: str) -> None:
        """%%local: run the cell in this shell, not on the cluster."""
        self.shell.run_local(cell)

    @line_magic
    def users(self, line: str) -> None:
        """%users: who can use this cluster, who is connected, what they have queued."""
        for u in self.shell.mec.users():
            here = "connected" if u["connected"] else "-"
            print(f"{u['name']:<16} {u['kind']:<9} {here:<10} {u['queued']} queued")

    @line_magic
    def say(self, line: str) -> None:
        """%say TEXT: chat to everyone on the cluster."""
        if line.strip():
            self.shell.mec.say(line.strip())

    @line_magic
    def mute(self, line: str) -> None:
        """%mute NAME...: hide these users' activity in this terminal."""
        names = line.split()
        self.shell.printer.muted.update(names)
        print(f"muted: {', '.join(sorted(self.shell.printer.muted)) or 'nobody'}")

    @line_magic
    def unmute(self, line: str) -> None:
        """%unmute [NAME...]: show these users (default: everyone) again."""
        names = line.split()
        if names:
            self.shell.printer.muted.difference_update(names)
        else:
            self.shell.printer.muted.clear()
        print(f"muted: {', '.join(sorted(self.shell.printer.muted)) or 'nobody'}")

    @line_magic
    def transcript(self, line: str) -> None:
        """%transcript [NAME] [-n N]: the shared history, attributed and timestamped."""
        words = line.split()
        last = 50
        if "-n" in words:
            i = words.index("-n")
            last = int(words[i + 1])
            del words[i:i + 2]
        user = words[0] if words else None
        for event in self.shell.mec.transcript(user=user, last=last):
            print(format_event(event))


class ClusterShell(TerminalInteractiveShell):  # type: ignore[misc]
    """A terminal IPython whose cells run on a cluster, shared with other users."""

    def init_cluster(self, mec: Any) -> None:
        self.mec = mec
        self.cluster_targets: Any = "all"
        who = mec._call(mec._async.whoami)
        self.cluster_user, self.cluster_kind = who["user"], who["kind"]
        self.printer = EventPrinter(who["client"])
        # Own calls: call id -> engines whose result/error arrived (see _run_remote).
        self._own_calls: list[int] = []
        self._finished: dict[int, set[int]] = {}
        self._own = threading.Condition()
        self.register_magics(CollaborationMagics)
        self.Completer.custom_matchers.insert(0, self._engine_matches)
        # The history so far primes the execution counts; live events are printed.
        answer = mec.subscribe_events(self._on_event, history=200)
        self.printer.history_until = int((answer or {}).get("seq", 0))
        recent = self.printer.recent()
        if recent:  # including whoever joined just before: nobody's join is missed
            print("ipython1-shell: recent activity on this cluster:\n" + "\n".join(recent))

    def _on_event(self, event: dict[str, Any]) -> None:
        self.printer(event)
        if event.get("seq", 0) <= self.printer.history_until or \
                event.get("client") != self.printer.me:
            return
        kind, call = event.get("kind"), (event.get("data") or {}).get("call")
        if kind in ("queued", "result", "error"):
            with self._own:
                if kind == "queued":
                    self._own_calls.append(call)
                    del self._own_calls[:-100]
                else:
                    self._finished.setdefault(call, set()).add(event.get("engine"))
                self._own.notify_all()
        if event.get("kind") in ("stdout",
                                                                             "stderr"):
            # This shell's own cell: its output streams live, labelled by engine.
            text = str(event["data"].get("text", "")).rstrip("\n")
            self.printer.write("\n".join(f"[{event['kind']}:{event['engine']}] {line}"
                                         for line in text.split("\n")))

    def run_local(self, code: str) -> Any:
        return super().run_cell(code, store_history=False)

    def run_cell(self, raw_cell: str, store_history: bool = False, silent: bool = False,
                 shell_futures: bool = True, cell_id: Any = None) -> Any:
        prefix = _PREFIX.match(raw_cell)
        if not raw_cell.strip() or (prefix and prefix.group(1) in LOCAL_COMMANDS):
            return super().run_cell(raw_cell, store_history, silent, shell_futures,
                                    cell_id=cell_id)
        if store_history:
            self.history_manager.store_inputs(self.execution_count, raw_cell, raw_cell)
            self.execution_count += 1
        if self.cluster_kind == "observer":
            print(f"ipython1-shell: {self.cluster_user} is an observer: cells cannot run on "
                  "the cluster (watch, %users, %say, %transcript; %local runs here)")
            return None
        inspect = _INSPECT.match(raw_cell)
        try:
            if raw_cell.strip() == "%debug":  # pdb on the engines' last exceptions, here
                return self.mec.debug(self.cluster_targets)
            if inspect:
                return self._inspect(inspect.group(1), len(inspect.group(2)) - 1)
            return self._run_remote(raw_cell)
        except KeyboardInterrupt:
            print("KeyboardInterrupt (the engines were interrupted)")
        except PermissionDenied as e:
            print(f"ipython1-shell: {e}")
        except KernelError as e:
            # IPython, Foolscap, the reactor: once the shell starts, not for --help
            from ipython1.client.magics import _show_error

            _show_error(e)
        return None

    def _run_remote(self, code: str) -> None:
        # IPython, Foolscap, the reactor: once the shell starts, not for --help
        from ipython1.client.magics import _show

        results = self.mec.execute(code, targets=self.cluster_targets, block=True)
        engines = {r.engine_id for r in (results if isinstance(results, list) else [results])}
        # The live output comes on the event stream: let it finish printing first.
        with self._own:
            self._own.wait_for(lambda: bool(self._own_calls) and engines <= self._finished.get(
                self._own_calls[-1], set()), timeout=2.0)
            self._finished.clear()
        _show(results, stdout=False)  # stdout was streamed live (see _on_event)

    def _inspect(self, name: str, detail: int) -> None:
        ids = self.mec.get_ids() if self.cluster_targets == "all" else self.cluster_targets
        first = ids if isinstance(ids, int) else ids[0]
        info = self.mec.inspect(name, detail, targets=first)
        print(info.get("text", info) if isinstance(info, dict) else info)

    def _engine_matches(self, text: str) -> list[str]:
        """Complete from the first target engine (falls back to local on failure)."""
        if not text:
            return []
        try:
            ids = self.mec.get_ids() if self.cluster_targets == "all" else \
                self.cluster_targets
            first = ids if isinstance(ids, int) else ids[0]
            line = self.Completer.line_buffer or text
            pos = len(self.Completer.text_until_cursor or text)
            saved, self.mec.timeout = self.mec.timeout, 2.0
            try:
                reply = self.mec.complete(text, line, pos, targets=first)
            finally:
                self.mec.timeout = saved
        except Exception:
            return []
        matches = reply.get("matches", []) if isinstance(reply, dict) else []
        # Engine matches replace the token IPython's reply covers; keep those
        # that extend the text being completed.
        return [m for m in matches if isinstance(m, str)]


def main(argv: list[str] | None = None) -> None:
    """Run the collaborative shell on the cluster a FURL (file) names."""
    parser = argparse.ArgumentParser(prog="ipython1-shell", description=__doc__.split("\n")[0])
    parser.add_argument("--furl-file", "-f", default=None,
                        help="your FURL file (security/users/NAME.furl); default: the "
                             "owner's FURL of --profile")
    parser.add_argument("--profile", "-p", default="default")
    parser.add_argument("--targets", "-t", default="all", help="engines cells run on")
    parser.add_argument("--no-color", action="store_true", help="no syntax highlighting")
    args = parser.parse_args(argv)
    # IPython, Foolscap, the reactor: once the shell starts, not for --help
    from ipython1.client.blocking import MultiEngineClient
    from ipython1.client.magics import parse_targets

    try:
        mec = MultiEngineClient(args.furl_file, profile=args.profile)
    except KernelError as e:
        sys.exit(f"ipython1-shell: {e}")
    shell = ClusterShell.instance(colors="nocolor" if args.no_color else "neutral",
                                  confirm_exit=False, banner1="")
    shell.init_cluster(mec)
    shell.cluster_targets = parse_targets(args.targets)
    ids = mec.get_ids()
    role = {"observer": "an observer (watch only)", "owner": "the owner"}.get(
        shell.cluster_kind, "a full user")
    print(f"ipython1-shell: you are {shell.cluster_user}, {role}, on {len(ids)} engine(s). "
          "Cells run on the cluster; %targets, %local, %users, %say, %mute, %transcript.")
    try:
        shell.mainloop()
    finally:
        mec.close()


if __name__ == "__main__":
    main()
