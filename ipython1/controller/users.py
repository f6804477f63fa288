"""Who may do what on a shared controller: the permission rule, the user listing,
the transcript's tail. Read by every adapter (multi-engine, task farm); the
directory of users itself is ipython1.controller.userdir.UserDirectory."""

from __future__ import annotations

import collections
from typing import Any

from ipython1.common import clusterdir as cluster
from ipython1.common.errors import PermissionDenied
from ipython1.controller.events import read_transcript

TRANSCRIPT = "transcript.jsonl"
MAX_TRANSCRIPT_EVENTS = 10_000  # events one transcript() call returns at most


def permission_denied(user: str, kind: str, revoked: bool, op: str,
                      observer_allowed: frozenset[str], observer_scope: str
                      ) -> PermissionDenied | None:
    """Say why a user may not run op, or None if they may (shared by every adapter)."""
    if revoked:
        return PermissionDenied(f"user {user!r}: the capability was revoked; {op} was not run")
    if kind == "observer" and op not in observer_allowed:
        return PermissionDenied(f"user {user!r} is an observer and may not {op}: {observer_scope}")
    return None


def transcript_path(cluster_dir: cluster.ClusterDir) -> Any:
    return cluster_dir.log / TRANSCRIPT


def list_users(adapter: Any) -> list[dict[str, Any]]:
    """Who can use this controller, and who is connected (session.users())."""
    directory = getattr(adapter, "directory", None)
    if directory is None:
        return [{"name": adapter.controller.owner, "kind": "owner", "connected": 0,
                 "queued": 0}]
    return directory.listing()  # type: ignore[no-any-return]


def transcript_tail(adapter: Any, user: str | None, last: int) -> list[dict[str, Any]]:
    """Return the last events of the transcript (optionally one user's)."""
    directory = getattr(adapter, "directory", None)
    last = max(0, min(int(last), MAX_TRANSCRIPT_EVENTS))
    if directory is None:
        return []
    path = transcript_path(directory.cluster_dir)
    if not path.exists():
        return []
    return list(collections.deque(read_transcript(path, user), maxlen=last))
