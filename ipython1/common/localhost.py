"""Same host, same user: what the local shortcuts (data and command channels) share.

Two processes with the same host key can reach each other's abstract Unix
sockets (same network namespace) and see each other's true pid and uid with
SO_PEERCRED (same pid and user namespaces); the shortcuts check both.
"""

from __future__ import annotations

import functools
import os
import socket
import struct


def env_enabled(name: str) -> bool:
    """Tell whether the environment variable name leaves a shortcut on (the default)."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "no", "false", "off")


def host_key() -> str:
    """Name this host, user and namespaces; "" where SO_PEERCRED or /proc is missing."""
    if not hasattr(socket, "SO_PEERCRED"):
        return ""
    boot_id, namespaces = _boot_id_and_namespaces()
    return f"{boot_id}:{socket.gethostname()}:{os.getuid()}:{namespaces}" if boot_id else ""


@functools.lru_cache(maxsize=1)
def _boot_id_and_namespaces() -> tuple[str, str]:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = f.read().strip()
        namespaces = ".".join(str(os.stat(f"/proc/self/ns/{ns}").st_ino)
                              for ns in ("net", "pid", "user"))
    except OSError:
        return "", ""
    return boot_id, namespaces


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """Return the pid and uid of the process at the other end of a Unix socket."""
    pid, uid, _gid = struct.unpack("3i", sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


def socket_address(name: str) -> str:
    """Turn an advertised socket name ("@..." for the abstract namespace) into an address."""
    return "\0" + name[1:] if name.startswith("@") else name
