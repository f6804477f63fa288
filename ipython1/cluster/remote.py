"""A controller on another host, started over ssh (``ipcluster start --controller-host H``).

The controller runs under one ``ssh H`` from this host; its FURL files are
read back over ssh into this host's cluster directory, so clients and
launchers here use them as if it ran here. The local ssh client stands for
the controller in ``pid/ipcontroller.pid``; ``stop`` asks H over ssh to end
the controller (by the pid in H's cluster directory), then ends the client.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Sequence
from typing import Any

from ipython1.cluster.launcher import run_command
from ipython1.cluster.ssh import PIDS_OF_FILE, ssh_argv
from ipython1.common.clusterdir import (
    ADMIN_FURL,
    ENGINE_FURL,
    MEC_FURL,
    TASK_FURL,
    ClusterDir,
    write_private,
)

RECORD = "controller-host.json"
# The admin FURL is the owner's: ipcluster status and adduser talk to the controller with it.
FURLS = (ENGINE_FURL, MEC_FURL, TASK_FURL, ADMIN_FURL)


def host_name(host: str) -> str:
    """Return the name engines dial for an ssh destination: no user@, no [brackets]."""
    name = host.rsplit("@", 1)[-1]
    return name[1:-1] if name.startswith("[") and name.endswith("]") else name


def remote_dir(profile: str) -> str:
    """Return the remote cluster directory as a shell word (expanded by the remote shell)."""
    return f'"${{IPYTHON1_DIR:-$HOME/.ipython1}}/cluster_{profile}"'


def start_command(argv: Sequence[str], profile: str) -> str:
    """Return the remote command: drop old FURL files (so none is read stale), run argv."""
    security = remote_dir(profile) + "/security"
    return (f"rm -f {' '.join(f'{security}/{name}' for name in FURLS)}; "
            f"exec {shlex.join(argv)} </dev/null")


def fetch_command(profile: str) -> str:
    """Return the remote command that prints the FURL files, in FURLS order."""
    security = remote_dir(profile) + "/security"
    return "cat " + " ".join(f"{security}/{name}" for name in FURLS)


def stop_command(profile: str) -> str:
    f = remote_dir(profile) + "/pid/ipcontroller.pid"
    return f'f={f}; if [ -f "$f" ]; then kill $({PIDS_OF_FILE}); fi'


def parse_furls(text: str) -> dict[str, str] | None:
    """Return {file name: FURL} when the output holds every FURL, else None."""
    furls = [line.strip() for line in text.splitlines() if line.strip().startswith("pb://")]
    return dict(zip(FURLS, furls, strict=True)) if len(furls) == len(FURLS) else None


class RemoteController:
    """Start, find and stop a controller on another host over ssh."""

    def __init__(self, cluster_dir: ClusterDir, host: str, ssh_args: Sequence[str] = ()) -> None:
        self.cluster_dir = cluster_dir
        self.host = host
        self.ssh_args = list(ssh_args)

    def argv(self, controller_argv: Sequence[str]) -> list[str]:
        return ssh_argv(self.host, start_command(controller_argv, self.cluster_dir.profile),
                        self.ssh_args)

    def fetch(self, run: Any = run_command) -> bool:
        """Copy the controller's FURL files here once it has written them all."""
        proc = run(ssh_argv(self.host, fetch_command(self.cluster_dir.profile), self.ssh_args))
        furls = parse_furls(proc.stdout) if proc.returncode == 0 else None
        if furls is None:
            return False
        for name, furl in furls.items():
            write_private(self.cluster_dir.furl_file(name), furl + "\n")
        return True

    def save(self) -> None:
        write_private(self.cluster_dir.pid / RECORD,
                      json.dumps({"host": self.host, "ssh_args": self.ssh_args}))

    @classmethod
    def load(cls, cluster_dir: ClusterDir) -> RemoteController | None:
        try:
            data = json.loads((cluster_dir.pid / RECORD).read_text())
        except (OSError, ValueError):
            return None
        return cls(cluster_dir, data["host"], data["ssh_args"])

    def stop(self, grace: float) -> str | None:
        """Ask the host to end the controller; return an error message, or None."""
        (self.cluster_dir.pid / RECORD).unlink(missing_ok=True)
        argv = ssh_argv(self.host, stop_command(self.cluster_dir.profile),
                        [*self.ssh_args, "-o", f"ConnectTimeout={max(1, int(grace))}"])
        try:
            proc = run_command(argv, timeout=grace + 10)
        except subprocess.TimeoutExpired:
            return f"ssh {self.host}: timed out stopping the controller"
        if proc.returncode != 0:
            return f"ssh {self.host}: could not stop the controller: {proc.stderr.strip()}"
        return None
