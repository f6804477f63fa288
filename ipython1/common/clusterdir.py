"""The cluster directory: where FURLs, logs and pid files of a profile live.

``$IPYTHON1_DIR/cluster_<profile>/`` (default ``~/.ipython1``) holds
``security/`` (FURL files and the controller's certificate, owner-only),
``log/`` and ``pid/``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ipython1.common.private import (  # noqa: F401 - the cluster directory's files, as before
    make_private,
    open_private_log,
    write_private,
)
from ipython1.common.processes import check

ENGINE_FURL = "ipcontroller-engine.furl"
MEC_FURL = "ipcontroller-mec.furl"
TASK_FURL = "ipcontroller-task.furl"
ADMIN_FURL = "ipcontroller-admin.furl"  # the owner's: manage users
CONTROLLER_CERT = "ipcontroller.pem"

_PROFILE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def base_dir() -> Path:
    """Return the root of all cluster directories."""
    env = os.environ.get("IPYTHON1_DIR")
    return Path(env).expanduser() if env else Path.home() / ".ipython1"


class ClusterDir:
    """Paths of one profile's cluster directory."""

    def __init__(self, profile: str = "default", root: Path | None = None) -> None:
        if not _PROFILE_RE.match(profile):
            raise ValueError(
                f"invalid profile name {profile!r}: use letters, digits, '-', '_', '.'"
            )
        self.profile = profile
        self.path = (root or base_dir()) / f"cluster_{profile}"

    @property
    def security(self) -> Path:
        return self.path / "security"

    @property
    def log(self) -> Path:
        return self.path / "log"

    @property
    def pid(self) -> Path:
        return self.path / "pid"

    def create(self, tighten: bool = False) -> ClusterDir:
        """Make the directories, owner-only: directories 0700, files 0600.

        Logs hold user code's output, and FURL files are credentials. With
        tighten (the controller and ipcluster start, not every engine), what
        an older version left more open is tightened too.
        """
        for d in (self.path, self.security, self.log, self.pid):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if tighten:
            make_private(self.path)
        return self

    def furl_file(self, name: str) -> Path:
        return self.security / name

    def pid_file(self, name: str) -> Path:
        return self.pid / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.log / f"{name}.log"

    def controller_running(self) -> bool:
        """Tell whether the controller's pid file names our live controller process
        (not an unrelated process that took its pid after a crash)."""
        return bool(check(self.pid_file("ipcontroller")).live)


def read_pid(path: Path) -> int | None:
    """Return the pid in a pid file, or None."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int | None) -> bool:
    """Tell whether a process exists (and is not a zombie)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
