"""SSH: engines on hosts reached with the system ``ssh`` (BatchMode, the user's keys).

One ``ssh`` per host starts that host's engines as one ``ipengine --fork K
--watch``: the watcher tells the controller how each engine ended
(``engine/watcher.py``), which the controller could not learn across hosts.
With ``--restart-engines`` it starts the engine supervisor there instead
(``cluster/supervisor.py``): it restarts a dead engine on its host with its
id, and reports how it ended over the engine FURL.
The engine FURL travels over the ssh connection (the remote shell reads it
from stdin into ``IPYTHON1_ENGINE_FURL``), so the hosts need no shared
filesystem and the FURL never shows in a process list. The remote engines
write their pids to a file in the remote cluster directory; ``stop`` asks
each host over ssh to end them, then ends the local ssh clients.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zope.interface import implementer

from ipython1.cluster.launcher import EngineCommand, ILauncher, LaunchError
from ipython1.cluster.process import ProcessLauncher
from ipython1.common.clusterdir import ClusterDir

FURL_VARIABLE = "IPYTHON1_ENGINE_FURL"


@dataclass(frozen=True)
class HostSlots:
    """A host (as ssh takes it: name, user@name, an address) and how many engines it takes."""

    host: str
    slots: int


def parse_host(text: str) -> HostSlots:
    """Parse HOST, HOST:N, user@HOST:N, [IPv6]:N, or Open MPI's 'HOST slots=N'."""
    text = text.strip()
    m = re.fullmatch(r"(\S+)\s+(?:slots=)?(\d+)", text)
    if m:
        host, slots = m.group(1), m.group(2)
    else:
        m = re.fullmatch(r"(\[[^\]]+\]|[^:\s]+)(?::(\d+))?", text)
        if not m:
            raise LaunchError(f"invalid host {text!r}: use HOST, HOST:N or [IPv6]:N")
        host, slots = m.group(1), m.group(2)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    count = int(slots) if slots is not None else 1
    if count < 1 or not host:
        raise LaunchError(f"invalid host {text!r}: a host takes at least one engine")
    return HostSlots(host, count)


def parse_hosts(text: str) -> list[HostSlots]:
    """Parse --hosts: comma-separated HOST[:N]."""
    hosts = [parse_host(part) for part in text.split(",") if part.strip()]
    if not hosts:
        raise LaunchError("--hosts names no host")
    return hosts


def read_hostfile(path: str) -> list[HostSlots]:
    """Read a host file: one HOST[:N] (or 'HOST slots=N') per line; '#' starts a comment."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise LaunchError(f"cannot read --hostfile {path}: {e.strerror or e}") from None
    hosts = [parse_host(line.split("#", 1)[0]) for line in lines
             if line.split("#", 1)[0].strip()]
    if not hosts:
        raise LaunchError(f"--hostfile {path} names no host")
    return hosts


def assign(hosts: Sequence[HostSlots], n: int | None) -> list[HostSlots]:
    """Place n engines on the hosts in order, each up to its slots (all slots when n is None)."""
    total = sum(h.slots for h in hosts)
    if n is None:
        n = total
    if n < 1:
        raise LaunchError("-n must be at least 1")
    if n > total:
        raise LaunchError(f"-n {n} engines, but the hosts offer {total} slots "
                          f"({', '.join(f'{h.host}:{h.slots}' for h in hosts)})")
    placed: list[HostSlots] = []
    for h in hosts:
        take = min(h.slots, n)
        if take:
            placed.append(HostSlots(h.host, take))
        n -= take
    return placed


def remote_pid_file(profile: str, tag: str) -> str:
    """Return the remote pid file as a shell word (expanded by the remote shell)."""
    # profile is checked by ClusterDir (letters, digits, -_.), tag is ours: both are shell-safe.
    return f'"${{IPYTHON1_DIR:-$HOME/.ipython1}}/cluster_{profile}/pid/ssh-engines-{tag}.pid"'


def remote_supervisor_command(engine: EngineCommand, first_id: int, count: int,
                              tag: str) -> str:
    """Return the remote shell command: read the FURL from stdin, supervise count engines
    with ids from first_id (ipcluster start --restart-engines)."""
    from ipython1.cluster.launcher import ENGINE_MODULE

    commands = [[i, engine.argv("--engine-id", str(i), furl_file=False)]
                for i in range(first_id, first_id + count)]
    python = (engine.ipengine[:-1] if engine.ipengine[-1:] == [ENGINE_MODULE] and
              engine.ipengine[-2:-1] == ["-m"] else ["python3", "-P", "-m"])
    argv = shlex.join([*python, "ipython1.cluster.supervisor", engine.profile,
                       json.dumps(commands)])
    return (f"IFS= read -r {FURL_VARIABLE} && export {FURL_VARIABLE} && "
            f"exec {argv} {remote_pid_file(engine.profile, tag)} </dev/null")


def remote_engine_command(engine: EngineCommand, count: int, tag: str) -> str:
    """Return the remote shell command: read the FURL from stdin, start count engines."""
    pid_file = remote_pid_file(engine.profile, tag)
    argv = engine.shell("--fork", str(count), furl_file=False)
    return (f"IFS= read -r {FURL_VARIABLE} && export {FURL_VARIABLE} && "
            f"exec {argv} --watch --pid-file {pid_file} </dev/null")


# The pids of a pid file, either format (bare pids, or ipython1's JSON records), in sh.
PIDS_OF_FILE = (r"""sed -n -e 's/.*"pid": *\([0-9][0-9]*\).*/\1/p' """
                r"""-e 's/^\([0-9][0-9]*\)$/\1/p' "$f" | sort -u""")


def remote_stop_command(profile: str, tag: str) -> str:
    """Return the remote shell command that ends the engines started under tag."""
    f = remote_pid_file(profile, tag)
    return (f'f={f}; if [ -f "$f" ]; then kill $({PIDS_OF_FILE}) 2>/dev/null; rm -f "$f"; fi; '
            "true")


def ssh_argv(host: str, command: str, ssh_args: Sequence[str] = ()) -> list[str]:
    """Return the ssh command line: BatchMode (never ask for a password), then the user's args."""
    return ["ssh", "-o", "BatchMode=yes", *ssh_args, host, command]


def host_tag(index: int, host: str) -> str:
    return f"{index}-" + re.sub(r"[^A-Za-z0-9_.-]", "_", host)


@implementer(ILauncher)
class SSHLauncher(ProcessLauncher):
    """Engines on hosts over ssh, count per host from --hosts or --hostfile."""

    name = "ssh"

    def __init__(self, cluster_dir: ClusterDir, engine: EngineCommand,
                 hosts: Sequence[HostSlots], ssh_args: Sequence[str] = (),
                 pids: Sequence[dict[str, Any]] = (), supervised: bool = False) -> None:
        super().__init__(cluster_dir, pids)
        self.engine = engine
        self.hosts = list(hosts)
        self.ssh_args = list(ssh_args)
        self.supervised = supervised  # a supervisor on each host restarts its engines

    @classmethod
    def from_options(cls, cluster_dir: ClusterDir, engine: EngineCommand,
                     hosts: str | None, hostfile: str | None,
                     ssh_args: str = "", supervised: bool = False) -> SSHLauncher:
        if bool(hosts) == bool(hostfile):
            raise LaunchError("--engines ssh needs --hosts h1:4,h2:4 or --hostfile FILE "
                              "(one of them)")
        parsed = parse_hosts(hosts) if hosts else read_hostfile(str(hostfile))
        return cls(cluster_dir, engine, parsed, shlex.split(ssh_args), supervised=supervised)

    def plan(self, n: int | None) -> list[HostSlots]:
        return assign(self.hosts, n)

    def start(self, n: int | None) -> None:
        furl_path = Path(self.engine.furl_file)
        try:
            furl = furl_path.read_text().strip()
        except OSError as e:
            raise LaunchError(f"cannot read the engine FURL {furl_path}: {e}") from None
        if not furl.startswith("pb://"):
            raise LaunchError(f"{furl_path} holds no FURL")
        first_id = 0
        for index, h in enumerate(self.plan(n)):
            tag = host_tag(index, h.host)
            command = (remote_supervisor_command(self.engine, first_id, h.slots, tag)
                       if self.supervised else remote_engine_command(self.engine, h.slots, tag))
            first_id += h.slots
            self.spawn(ssh_argv(h.host, command, self.ssh_args),
                       f"ssh {h.host} ({h.slots} engines)",
                       self.cluster_dir.log_file(f"ssh-{tag}"), stdin_text=furl + "\n",
                       host=h.host, engines=h.slots, tag=tag)

    def before_stop(self, grace: float) -> list[str]:
        stoppers = [(p["host"], subprocess.Popen(
            ssh_argv(p["host"], remote_stop_command(self.engine.profile, p["tag"]),
                     [*self.ssh_args, "-o", f"ConnectTimeout={max(1, int(grace))}"]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            for p in self.processes]
        lines = []
        for host, proc in stoppers:
            try:
                _, err = proc.communicate(timeout=grace + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                err = b"timed out"
            if proc.returncode != 0:
                lines.append(f"ssh {host}: could not stop its engines: "
                             f"{err.decode(errors='replace').strip()}")
        return lines

    def state(self) -> dict[str, Any]:
        return {**super().state(), "engine": self.engine.to_json(),
                "hosts": [[h.host, h.slots] for h in self.hosts], "ssh_args": self.ssh_args,
                "supervised": self.supervised}

    @classmethod
    def from_state(cls, cluster_dir: ClusterDir, data: dict[str, Any],
                   run: Any = None) -> SSHLauncher:
        return cls(cluster_dir, EngineCommand.from_json(data["engine"]),
                   [HostSlots(h, s) for h, s in data["hosts"]], data["ssh_args"], data["pids"],
                   bool(data.get("supervised")))
