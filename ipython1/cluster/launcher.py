"""Engine launchers: what every way of getting nodes (ssh, Slurm, SGE, ...) offers ipcluster.

A launcher starts engines somewhere (hosts over ssh, batch jobs), says while
ipcluster waits whether something already failed, reports what it started,
and stops it. ``ipcluster start`` and ``ipcluster stop`` are separate
processes, so a launcher keeps what it started in a JSON record in the
cluster directory (``pid/launcher.json``) and is rebuilt from it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zope.interface import Attribute, Interface

from ipython1.common.clusterdir import ENGINE_FURL, ClusterDir, write_private
from ipython1.common.processes import python_module

STATE_FILE = "launcher.json"
ENGINE_MODULE = "ipython1.scripts.ipengine"

# run(argv, input=None) -> CompletedProcess; injectable so tests can stand in for sbatch & co.
Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def run_command(argv: Sequence[str], input: str | None = None,
                timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output as text."""
    return subprocess.run(list(argv), input=input, capture_output=True, text=True,
                          timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)


class LaunchError(Exception):
    """A launcher could not start its engines (bad options, a refused submission)."""


class ILauncher(Interface):
    """Start engines somewhere, report on them, and stop them."""

    name = Attribute("The --engines name: 'ssh', 'slurm', 'sge', 'pbs', 'lsf'.")

    def start(n: int) -> None:  # type: ignore[misc]
        """Start (or submit) n engines; return once they are on their way."""

    def failure() -> str | None:  # type: ignore[misc]
        """Return why engines will not come (a job failed, ssh exited), or None."""

    def waiting() -> list[str]:  # type: ignore[misc]
        """Describe what has not started yet (pending jobs), for a start that times out."""

    def status() -> list[str]:  # type: ignore[misc]
        """Return one line per thing started (a job's id and state, a host's engines)."""

    def stop(grace: float) -> list[str]:  # type: ignore[misc]
        """Stop everything started; return one line per thing stopped."""

    def state() -> dict[str, Any]:  # type: ignore[misc]
        """Return a JSON-able record from which the launcher can be rebuilt."""


@dataclass
class EngineCommand:
    """How an engine is started on a node: the ipengine command and its options."""

    profile: str
    furl_file: str
    connect_timeout: float = 120.0
    # python -P: a module planted in the job's working directory is never imported.
    ipengine: list[str] = field(default_factory=lambda: python_module(ENGINE_MODULE))
    extra: list[str] = field(default_factory=list)

    @classmethod
    def for_cluster(cls, cluster_dir: ClusterDir, connect_timeout: float = 120.0,
                    ipengine: str | None = None, extra: Sequence[str] = ()) -> EngineCommand:
        """Engines of this cluster directory; ipengine is a command line ("ipengine")."""
        command = cls(cluster_dir.profile, str(cluster_dir.furl_file(ENGINE_FURL)),
                      connect_timeout, extra=list(extra))
        if ipengine:
            command.ipengine = shlex.split(ipengine)
        return command

    def argv(self, *more: str, furl_file: bool = True) -> list[str]:
        """Return the engine's argv; without furl_file the FURL comes from elsewhere."""
        return [*self.ipengine, "--profile", self.profile,
                "--connect-timeout", f"{self.connect_timeout:g}",
                *(["--furl-file", self.furl_file] if furl_file else []), *self.extra, *more]

    def shell(self, *more: str, furl_file: bool = True) -> str:
        """Return the engine's command as one shell-quoted line."""
        return shlex.join(self.argv(*more, furl_file=furl_file))

    def to_json(self) -> dict[str, Any]:
        return {"profile": self.profile, "furl_file": self.furl_file,
                "connect_timeout": self.connect_timeout, "ipengine": self.ipengine,
                "extra": self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EngineCommand:
        return cls(data["profile"], data["furl_file"], data["connect_timeout"],
                   list(data["ipengine"]), list(data.get("extra", [])))


def tail(path: Path | str, lines: int = 15) -> str:
    """Return the last lines of a file, or '' when it cannot be read."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def save_state(cluster_dir: ClusterDir, launcher: Any) -> None:
    """Record a launcher's state so that `ipcluster stop`/`status` can rebuild it."""
    write_private(cluster_dir.pid / STATE_FILE,
                  json.dumps({"launcher": launcher.name, **launcher.state()}, indent=1))


def load_state(cluster_dir: ClusterDir) -> dict[str, Any] | None:
    """Return the recorded launcher state, or None when there is none."""
    try:
        data: dict[str, Any] = json.loads((cluster_dir.pid / STATE_FILE).read_text())
        return data
    except (OSError, ValueError):
        return None


def clear_state(cluster_dir: ClusterDir) -> None:
    (cluster_dir.pid / STATE_FILE).unlink(missing_ok=True)
