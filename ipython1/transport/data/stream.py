"""One transfer's bytes over TCP: the engine's TLS identity, framing, the socket helpers.

The client opens TLS to the engine (the engine serves its own Foolscap
certificate), checks that the certificate's digest is the engine's tubid,
and sends the transfer's secret inside TLS; the engine refuses the transfer
unless it matches.
"""

from __future__ import annotations

import base64
import hashlib
import mmap
import os
import socket
import ssl
import tempfile
from typing import Any

from ipython1.kernel.addresses import split_host_port
from ipython1.transport.data.buffers import buffer_for
from ipython1.transport.data.refs import TransferError

PAIR_TIMEOUT = 30.0  # seconds a relay end waits for its peer
CHUNK = 4 * 2**20


def tubid_of(der: bytes) -> str:
    """Return the Foolscap tubid of a DER certificate."""
    return base64.b32encode(hashlib.sha1(der).digest()).decode().lower().rstrip("=")


def server_context(cert_pem: bytes) -> ssl.SSLContext:
    """Return a TLS server context for a Foolscap certificate (key + cert PEM)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Bulk data: AES-128-GCM is as safe here and markedly faster than the TLS 1.3
    # default (AES-256), and Python's ssl cannot choose TLS 1.3 suites.
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384")
    fd, path = tempfile.mkstemp(prefix="ipython1-cert-")
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp made it 0600
            f.write(cert_pem)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)
    return ctx


def client_context() -> ssl.SSLContext:
    # The engine's certificate is self-signed; it is checked against its
    # tubid (see _check_peer) instead of against a CA.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def recv_exact(sock: Any, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], min(size - got, CHUNK))
        if not n:
            raise TransferError(f"connection closed after {got} of {size} bytes")
        got += n
    return buf


def recv_frame(sock: Any, size: int) -> bytearray | mmap.mmap:
    """Receive one frame into a fresh `buffer_for` buffer."""
    buf = buffer_for(size)
    view = memoryview(buf)
    got = 0
    try:
        while got < size:
            n = sock.recv_into(view[got:], min(size - got, CHUNK))
            if not n:
                raise TransferError(f"connection closed after {got} of {size} bytes")
            got += n
    finally:
        view.release()
    return buf


def connect(address: str, timeout: float) -> socket.socket:
    host, port = split_host_port(address)
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock

