"""``ipcluster adduser``, ``deluser``, ``users`` and ``transcript``: the cluster's named users.

The owner's admin calls go to the running controller (`ipython1.client.admin`);
the transcript is read from the cluster directory.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO

from ipython1.common.clusterdir import ClusterDir
from ipython1.common.errors import KernelError


def adduser(cluster_dir: ClusterDir, name: str, observer: bool = False,
            out: IO[str] = sys.stdout) -> int:
    """Ask the running controller for a new user's capability; print its FURL file."""
    # Foolscap and the reactor: ipcluster loads them only to talk to a controller
    from ipython1.controller.userdir import admin_call, validate_user_name

    try:
        validate_user_name(name)
        path = admin_call(cluster_dir, "add_user", name, observer)
    except KernelError as e:
        out.write(f"ipcluster: {e}\n")
        return 1
    out.write(f"{path}\n")
    return 0


def deluser(cluster_dir: ClusterDir, name: str, out: IO[str] = sys.stdout) -> int:
    """Revoke a user's capability at once."""
    # Foolscap and the reactor: ipcluster loads them only to talk to a controller
    from ipython1.controller.userdir import admin_call, validate_user_name

    try:
        validate_user_name(name)
        done = admin_call(cluster_dir, "remove_user", name)
    except KernelError as e:
        out.write(f"ipcluster: {e}\n")
        return 1
    out.write(f"ipcluster: revoked {name}: {done['dropped']} connection(s) dropped, "
              f"{done['cleared']} queued command(s) cleared\n")
    if "rotated" in done:
        out.write(f"ipcluster: {len(done['rotated'])} FURL(s) rotated (engine code could "
                  "read them); the old ones no longer connect\n")
        _print_new_furls(done.get("new_furls") or {}, out)
    return 0


def _print_new_furls(new_furls: dict[str, str], out: IO[str]) -> None:
    for user, path in new_furls.items():
        out.write(f"ipcluster: give {user} their new FURL file: {path}\n")


def users(cluster_dir: ClusterDir, out: IO[str] = sys.stdout) -> int:
    """List the users of the running controller."""
    # Foolscap and the reactor: ipcluster loads them only to talk to a controller
    from ipython1.controller.userdir import admin_call

    try:
        rows = admin_call(cluster_dir, "users")
    except KernelError as e:
        out.write(f"ipcluster: {e}\n")
        return 1
    out.write(f"{'user':<20} {'kind':<9} {'connected':>9} {'queued':>7}  new FURL\n")
    for row in rows:
        new = "needed" if row.get("needs_new_furl") else ""
        out.write(f"{row['name']:<20} {row['kind']:<9} {row['connected']:>9} "
                  f"{row['queued']:>7}  {new}\n")
    _print_new_furls({row["name"]: str(cluster_dir.security / "users" / f"{row['name']}.furl")
                      for row in rows if row.get("needs_new_furl")}, out)
    return 0


def transcript(cluster_dir: ClusterDir, user: str | None = None, follow: bool = False,
               out: IO[str] = sys.stdout) -> int:
    """Print the transcript, attributed and timestamped; with follow, keep going."""
    # Foolscap and the reactor: ipcluster loads them only to talk to a controller
    from ipython1.controller.events import format_event
    from ipython1.controller.userdir import transcript_path

    path = transcript_path(cluster_dir)
    if not path.exists() and not follow:
        out.write(f"ipcluster: no transcript yet at {path}\n")
        return 1
    position = 0
    try:
        while True:
            try:
                with open(path, "rb") as f:
                    f.seek(position)
                    for line in f:
                        if not line.endswith(b"\n"):
                            break  # still being written
                        position += len(line)
                        try:
                            event = json.loads(line)
                        except ValueError:
                            continue
                        if user is None or event.get("user") == user:
                            out.write(format_event(event) + "\n")
            except FileNotFoundError:
                pass
            out.flush()
            if not follow:
                return 0
            time.sleep(0.2)  # polling a file; nothing to wait on
    except KeyboardInterrupt:
        return 0
