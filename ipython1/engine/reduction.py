"""Reductions among engines: partial results go engine to engine, as a tree.

The client plans the tree (`ipython1.client.reduction`) and runs two
commands on every engine of the reduction:

1. `stage`: compute or look up this engine's value, keep it here, and, if the
   engine has children in the tree, listen on a TCP port of the address it
   reaches the controller from; answer that address.
2. `combine`: take the children's values (in tree order, so a reduction
   only needs to be associative), fold them into its own, send the result to
   the parent, and (for an allreduce) wait for the final value from the
   parent and pass it on to the children.

Only the root's result (or nothing, for an allreduce) goes back to the
client. Every frame carries an HMAC-SHA256 under a secret the client made
for this one reduction and sent through the controller with the commands,
so an engine unpickles only what another engine of the same reduction sent.
The frames are not encrypted: partial results travel in the clear between
engines (inside the cluster's network).

Under MPI (`mpi_allreduce`), one command does it all with mpi4py.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import cloudpickle

from ipython1.engine.loaders import user_namespace

__all__ = ["combine", "discard", "mpi_allreduce", "own_address", "stage"]

MAGIC = b"IP1R"
# magic, kind, sender index, payload length, MAC of those, MAC of the payload
HEADER = struct.Struct("!4sBIQ32s32s")
ACCEPT_SLICE = 0.5
HEADER_TIMEOUT = 10.0  # a peer sends its header at once: a silent connection is dropped
OK, FAILED = 0, 1
STAGE_TTL = 600.0  # a staged value whose combine never came is dropped after this
TIMEOUT = float(os.environ.get("IPYTHON1_REDUCE_TIMEOUT", "120"))

# Reduction id -> {"value", "listener", "time"}: held between the two commands.
_staged: dict[str, dict[str, Any]] = {}

# How this engine's last reduction ran ("tree" or "mpi"): to check, and to debug.
last_path = ""


class ReductionError(RuntimeError):
    """Another engine of the reduction failed, or a peer could not be reached."""


class PeerLost(ReductionError):
    """An authenticated peer's connection broke in the middle of its frame."""


def own_address() -> str:
    """Return the IP address this engine reaches the controller from.

    Other engines reach the controller too, so they can reach this address.
    It is the local end of the engine's established TCP connection (Foolscap);
    IPYTHON1_PEER_HOST overrides it.
    """
    override = os.environ.get("IPYTHON1_PEER_HOST")
    if override:
        return override
    import psutil

    fallback = "127.0.0.1"
    for conn in psutil.Process().net_connections(kind="inet"):
        if conn.status == psutil.CONN_ESTABLISHED and conn.raddr:
            if not conn.laddr.ip.startswith("127."):
                return str(conn.laddr.ip)
            fallback = str(conn.laddr.ip)
    return fallback


def _expire() -> None:
    now = time.monotonic()
    for rid in [r for r, e in _staged.items() if now - e["time"] > STAGE_TTL]:
        discard(rid)


def stage(reduction_id: str, source: Any, listen: bool) -> tuple[str, int] | None:
    """Hold this engine's value for a reduction; listen if children will send to it.

    source is a name in the namespace, or (func, args): func(*args) is the value.
    """
    _expire()
    if isinstance(source, str):
        ns = user_namespace()
        if source not in ns:
            raise NameError(f"name {source!r} is not defined")
        value = ns[source]
    else:
        func, args = source
        value = func(*args)
    entry: dict[str, Any] = {"value": value, "listener": None, "time": time.monotonic()}
    _staged[reduction_id] = entry
    if not listen:
        return None
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((own_address(), 0))
    listener.listen(64)
    entry["listener"] = listener
    host, port = listener.getsockname()[:2]
    return str(host), int(port)


def discard(reduction_id: str) -> None:
    """Drop a staged value and close its listener (a reduction that failed early)."""
    entry = _staged.pop(reduction_id, None)
    if entry is not None and entry["listener"] is not None:
        entry["listener"].close()


def _mac(secret: bytes, reduction_id: str, kind: int, index: int, data: bytes) -> bytes:
    head = f"{reduction_id}:{kind}:{index}:".encode()
    return hmac.new(secret, head + data, hashlib.sha256).digest()


def _send(sock: socket.socket, secret: bytes, reduction_id: str, kind: int, index: int,
          value: Any) -> None:
    payload = cloudpickle.dumps(value, protocol=5)
    head_mac = _mac(secret, reduction_id, kind, index, str(len(payload)).encode())
    mac = _mac(secret, reduction_id, kind, index, payload)
    sock.sendall(HEADER.pack(MAGIC, kind, index, len(payload), head_mac, mac) + payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError(f"peer closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def _recv(sock: socket.socket, secret: bytes, reduction_id: str, deadline: float,
          header_timeout: float = HEADER_TIMEOUT) -> tuple[int, int, Any]:
    """Read one frame; fail unless its MACs are right.

    The header's MAC is checked before the payload is read (a stranger
    cannot make the engine allocate), the payload's before it is unpickled.
    """
    sock.settimeout(max(0.01, min(header_timeout, deadline - time.monotonic())))
    magic, kind, index, length, head_mac, mac = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if magic != MAGIC or not hmac.compare_digest(
            head_mac, _mac(secret, reduction_id, kind, index, str(length).encode())):
        raise ReductionError("a peer sent something that is not a frame of this reduction")
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        payload = _recv_exact(sock, length)
    except OSError as e:  # a peer of this reduction, lost mid-frame: no point waiting
        raise PeerLost(f"the engine at tree position {index} was lost mid-send: {e}") from e
    if not hmac.compare_digest(mac, _mac(secret, reduction_id, kind, index, payload)):
        raise ReductionError("a peer's frame failed the reduction's MAC")
    return kind, index, pickle.loads(payload)


def _accept_children(listener: socket.socket, children: list[int], secret: bytes,
                     reduction_id: str, deadline: float
                     ) -> dict[int, tuple[socket.socket, int, Any]]:
    """Accept one authenticated frame from each child; ignore any other connection."""
    got: dict[int, tuple[socket.socket, int, Any]] = {}
    while len(got) < len(children):
        # Short waits, so that an interrupt raised in this thread lands promptly.
        listener.settimeout(max(0.01, min(ACCEPT_SLICE, deadline - time.monotonic())))
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            if time.monotonic() < deadline:
                continue
            missing = sorted(set(children) - set(got))
            raise ReductionError(f"no partial result from the engines at tree positions "
                                 f"{missing} within {TIMEOUT:g} s") from None
        try:
            kind, index, value = _recv(conn, secret, reduction_id, deadline)
        except PeerLost:
            conn.close()
            raise
        except (OSError, ReductionError, struct.error):  # not a peer: ignore it
            conn.close()
            continue
        if index in children and index not in got:
            got[index] = (conn, kind, value)
        else:
            conn.close()
    return got


def combine(reduction_id: str, func: Callable[[Any, Any], Any], index: int,
            parent: tuple[str, int] | None, children: list[int], secret: bytes,
            result_key: str | None = None, return_result: bool = True) -> Any:
    """Fold the children's values into this engine's, then pass the result on.

    With result_key (an allreduce) the final value comes back down the tree
    and is bound to result_key on every engine. The root returns the result
    when return_result is set; every other engine returns None.
    """
    global last_path
    last_path = "tree"
    entry = _staged.pop(reduction_id, None)
    if entry is None:
        raise ReductionError(f"reduction {reduction_id} was not staged on this engine")
    deadline = time.monotonic() + TIMEOUT
    conns: dict[int, tuple[socket.socket, int, Any]] = {}
    upward: socket.socket | None = None
    try:
        if children:
            try:
                conns = _accept_children(entry["listener"], children, secret, reduction_id,
                                         deadline)
            finally:
                entry["listener"].close()
        failure = next((v for _, k, v in conns.values() if k == FAILED), None)
        value = entry["value"]
        if failure is None:
            try:
                for child in sorted(conns):
                    value = func(value, conns[child][2])
            except Exception as e:
                failure = f"engine at tree position {index}: {type(e).__name__}: {e}"
        if parent is not None:
            upward = socket.create_connection(
                parent, timeout=max(0.01, deadline - time.monotonic()))
            _send(upward, secret, reduction_id, FAILED if failure else OK, index,
                  failure if failure else value)
            if result_key is not None and failure is None:
                # The parent answers once the whole tree has: no header timeout.
                kind, _, value = _recv(upward, secret, reduction_id, deadline, TIMEOUT)
                if kind == FAILED:
                    failure = value
        if result_key is not None:
            for conn, _, _ in conns.values():
                _send(conn, secret, reduction_id, FAILED if failure else OK, index,
                      failure if failure else value)
        if failure is not None:
            raise ReductionError(failure)
        if result_key is not None:
            user_namespace()[result_key] = value
        return value if parent is None and return_result else None
    finally:
        for conn, _, _ in conns.values():
            conn.close()
        if upward is not None:
            upward.close()


def mpi_allreduce(source: Any, func: Callable[[Any, Any], Any], result_key: str | None,
                  return_result: bool) -> Any:
    """Reduce over MPI.COMM_WORLD with mpi4py; rank 0 returns the result."""
    from mpi4py import MPI

    global last_path
    last_path = "mpi"
    if isinstance(source, str):
        value = user_namespace()[source]
    else:
        fn, args = source
        value = fn(*args)
    comm = MPI.COMM_WORLD
    result = comm.allreduce(value, op=func)
    if result_key is not None:
        user_namespace()[result_key] = result
    return result if comm.Get_rank() == 0 and return_result else None
