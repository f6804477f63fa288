"""The engine's end of same-host transfers: its abstract Unix socket (`LocalServer`).

The socket is in the abstract namespace, so it vanishes with the engine
however the engine ends (SIGKILL, ``os._exit``): no file is left behind, and
no path length limit applies. Anyone on the host may connect to it, so the
uid check (``SO_PEERCRED``) comes first, before a byte is read.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
import weakref
from typing import Any

from ipython1.common.localhost import peer_credentials as _peer
from ipython1.common.localhost import socket_address as _address
from ipython1.engine.blobs import BlobStore
from ipython1.engine.dataserver import TransferListener
from ipython1.transport.data import local
from ipython1.transport.data.stream import HEAD, PAIR_TIMEOUT, recv_exact


class LocalServer(TransferListener):
    """The engine's end of same-host transfers: an abstract Unix socket.

    Serves peers of the engine's own uid that present a pairing id and
    secret announced with `expect`, each good for a number of transfers (a
    *book* of tickets) until BOOK_TTL; the client names each transfer
    (direction, blob id, sizes) after the secret.
    """

    def __init__(self, store: BlobStore, uid: int | None = None) -> None:
        self.uid = os.getuid() if uid is None else uid
        self.pid = os.getpid()
        self.name = f"@ipython1-engine-{self.pid}-{secrets.token_hex(8)}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(_address(self.name))
        listener.listen(128)
        # A process user code forks must not keep the name alive after the
        # engine ends: nobody would accept, and clients would wait in vain.
        os.register_at_fork(after_in_child=functools.partial(_close_in_child,
                                                             weakref.ref(self)))
        super().__init__(store, listener, f"engine data socket {self.name}")

    def info(self) -> dict[str, Any]:
        """What the engine advertises at registration (``info["local_data"]``)."""
        return {"host": local.host_key(), "socket": self.name, "pid": self.pid, "uid": self.uid}

    def _serve(self, sock: socket.socket) -> None:
        try:
            local.tune(sock)
            _pid, uid = _peer(sock)
            if uid != self.uid:  # not our user: hang up before reading a byte
                local.refuse(sock, f"uid {uid} is not the engine's user")
                return
            sock.settimeout(self.guard.deadline)  # unauthenticated: be quick
            head = bytes(recv_exact(sock, HEAD.size))
        except TimeoutError:
            self.guard.timed_out_one()
            raise
        finally:
            self.guard.release()
        sock.settimeout(PAIR_TIMEOUT)
        pairing_id, secret = HEAD.unpack(head)[:2]
        self._finish(sock, head, self._use(pairing_id,
                                           lambda s: secrets.compare_digest(s, secret)))


def _close_in_child(server_ref: weakref.ref[LocalServer]) -> None:
    server = server_ref()
    if server is not None:
        server._closed = True
        server._listener.close()  # this process's descriptor only: no shutdown

