"""Owner-only files: FURLs, certificates, pid files and logs that nobody else may read.

Written 0600 (directories 0700), atomically where a reader could see half a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO


def make_private(top: Path) -> None:
    """Make top and every directory below it 0700 and every file 0600."""
    for root, _dirs, files in os.walk(top):
        for name, mode in [(root, 0o700)] + [(os.path.join(root, f), 0o600) for f in files]:
            try:
                if os.lstat(name).st_mode & 0o777 != mode and not os.path.islink(name):
                    os.chmod(name, mode)
            except OSError:
                pass  # e.g. removed meanwhile


def open_private_log(path: Path) -> IO[str]:
    """Open a log file for appending, readable by its owner only (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "a", buffering=1)


def write_private(path: Path, text: str) -> None:
    """Write a file that only its owner can read (mode 0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
