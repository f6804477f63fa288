"""The command channel across hosts: the same frames over TLS on TCP.

Engines and clients on other hosts cannot reach the controller's abstract
Unix socket (`transport.channel`), so without this their every command
crosses Foolscap, which spends about 3x the CPU of the channel in every
process (docs/performance.md, "Cross-host"). Here the channel's frames, ops
and ends are the same; only the connection differs:

1. The controller listens on a TCP port beside its Foolscap port (on its
   ``--ip``; ``--command-port``, and ``--reuse`` keeps the port across
   restarts as it keeps the relay's) and serves TLS with its own Foolscap
   certificate.
2. The offer (port, kind, id, one-time secret) goes over the authenticated
   Foolscap connection, as for the Unix socket. The engine or client
   connects to the address its Foolscap connection reached, checks that the
   server's certificate digest is the controller's tubid (which it knows from
   the FURL: only the real controller is talked to), and only then sends the
   secret, inside TLS.
3. Until the secret is checked a connection is held to the listener bounds
   (`listenguard`: capped, 1 KiB frames, a handshake deadline).

The engine's end is a blocking stdlib ``ssl`` socket owned by its shell
thread alone: connected and handshaken on a worker thread (a firewall that
drops packets must not stall commands), then handed over, and from then on
read and written only on the shell thread, so no two threads ever use one
SSL object. TLS 1.2 only: TLS 1.3 sends session tickets after the
handshake, and a blocking read that met one would wait for the next frame
with jobs from the reactor waiting. A client's end runs on its reactor
thread with Twisted's TLS.

If the port cannot be reached (a firewall, a closed port) commands stay on
Foolscap: an engine keeps using Foolscap until its channel attaches (it
tries a few times: see `connect_engine`), a client waits at most
`CONNECT_TIMEOUT`. ``IPYTHON1_TCP_COMMAND_CHANNEL=0``
turns off only this variant (in the controller's environment for all, in an
engine's or client's for that process); ``IPYTHON1_COMMAND_CHANNEL=0`` turns
off both.
"""

from __future__ import annotations

import random
import socket
import ssl
import time
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import defer, reactor
from twisted.internet import ssl as twisted_ssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import ClientFactory, Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from ipython1.common import wire
from ipython1.common.addresses import join_host_port
from ipython1.common.listenguard import ListenerGuard
from ipython1.common.localhost import env_enabled
from ipython1.common.replies import dumps, loads
from ipython1.transport import channel
from ipython1.transport.data.stream import tubid_of

log = Logger()

ENV = "IPYTHON1_TCP_COMMAND_CHANNEL"
CONNECT_TIMEOUT = 3.0  # seconds a client waits to connect and finish TLS, else Foolscap
# An engine is patient (Foolscap carries its commands meanwhile): a controller
# registering hundreds of engines at once answers handshakes late.
ENGINE_CONNECT_TIMEOUT = 10.0
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # an engine's next tries (see connect_engine)
BACKLOG = 1024  # hundreds of engines connect at once when a cluster starts
TRANSPORT_NAME = "tcp-channel"
# AES-128-GCM: as safe here and cheaper than the TLS 1.3 default (see datachannel).
CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
           "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384")


def enabled() -> bool:
    """Tell whether this process may use (or serve) the channel over TCP."""
    return channel.enabled() and env_enabled(ENV)


def valid_offer(offer: Any) -> bool:
    return (isinstance(offer, dict) and isinstance(offer.get("tcp_port"), int)
            and 0 < offer["tcp_port"] < 65536 and isinstance(offer.get("secret"), bytes)
            and isinstance(offer.get("id"), int) and offer.get("kind") in ("engine", "session"))


def hello(offer: dict[str, Any]) -> bytes:
    return dumps([offer["kind"], offer["id"], offer["secret"]])


# -- the controller's end ------------------------------------------------------------------


def server_options(cert_pem: bytes) -> twisted_ssl.CertificateOptions:
    """TLS 1.2 with the controller's Foolscap certificate (key + cert PEM)."""
    identity = twisted_ssl.PrivateCertificate.loadPEM(cert_pem)
    return twisted_ssl.CertificateOptions(
        privateKey=identity.privateKey.original, certificate=identity.original,
        lowerMaximumSecurityTo=twisted_ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=twisted_ssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHERS))


class TCPControllerEnd(channel.ControllerEnd):
    """An engine's or client's channel over TLS: authenticated by its secret alone."""

    transport_name = TRANSPORT_NAME
    # An engine hands its end to its shell thread only once attached: a hello
    # that came too late (the controller busy past the handshake deadline)
    # is then tried again, not taken for a working channel.
    engines_hear_ok = True

    def _peer_allowed(self) -> bool:
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        return True


class UnbufferedTLSFactory(TLSMemoryBIOFactory):
    """TLS whose writes go to the socket's transport at once.

    Twisted's default TLS transport gathers small writes until the next
    reactor turn: one DelayedCall per connection and write, and two copies
    of the bytes. Each channel frame is already one write, so a command to
    256 engines paid 256 DelayedCalls (and their heap) for nothing.
    """

    protocol = TLSMemoryBIOProtocol


class TCPListener:
    """The controller's TLS port for the command channel (see the module docstring)."""

    def __init__(self, server: channel.CommandChannelServer, ip: str, port: int,
                 cert_pem: bytes) -> None:
        factory = Factory.forProtocol(lambda: TCPControllerEnd(server, self.guard))
        interface = ip or "::"
        tls = UnbufferedTLSFactory(server_options(cert_pem), False, factory)
        try:
            self._port = reactor.listenTCP(port, tls, backlog=BACKLOG, interface=interface)
        except Exception as e:
            raise OSError(f"the command channel cannot listen on "
                          f"{join_host_port(interface, port)}: {e}") from None
        self.port: int = self._port.getHost().port
        self.guard = ListenerGuard(f"command channel {join_host_port(interface, self.port)}")

    def close(self) -> Deferred[Any]:
        self.guard.close()
        return defer.maybeDeferred(self._port.stopListening)


# -- the engine's end (blocking; see EngineChannel) ------------------------------------------


def engine_context() -> ssl.SSLContext:
    # The controller's certificate is self-signed: it is checked against the
    # tubid from the FURL instead of against a CA.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # no post-handshake messages (see above)
    ctx.set_ciphers(CIPHERS)
    return ctx


def connect_engine(offer: dict[str, Any], host: str, tubid: str,
                   timeout: float = ENGINE_CONNECT_TIMEOUT,
                   retry_delays: tuple[float, ...] = RETRY_DELAYS) -> channel.EngineChannel | None:
    """Connect, check the controller's certificate, say who we are (blocking; on a
    worker thread); None if it cannot be done, and commands keep Foolscap.

    A connection that fails before the secret was sent (hundreds of engines
    starting at once meet the listener's cap on unauthenticated connections,
    or a controller too busy to finish the handshake in time) is tried again
    after each of retry_delays (with jitter): the offer is still good.
    """
    address = join_host_port(host, offer["tcp_port"])
    for delay in (*retry_delays, None):
        try:
            return _connect_engine_once(offer, host, tubid, timeout)
        except _NotTheController:
            log.warn("command channel: {a} is not the controller (certificate); "
                     "commands take Foolscap", a=address)
            return None
        except OSError as e:
            if delay is None:
                log.warn("command channel: cannot connect to {a} ({e}); commands take "
                         "Foolscap", a=address, e=e)
                return None
            time.sleep(delay * (0.5 + random.random()))
    return None


class _NotTheController(Exception):
    pass


def _connect_engine_once(offer: dict[str, Any], host: str, tubid: str,
                         timeout: float) -> channel.EngineChannel:
    raw = socket.create_connection((host, offer["tcp_port"]), timeout=timeout)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = engine_context().wrap_socket(raw)  # the handshake, within timeout
        if tubid_of(sock.getpeercert(binary_form=True) or b"") != tubid:
            sock.close()
            raise _NotTheController()
        end = channel.EngineChannel(sock)
        end.send(hello(offer))
        _await_ok(end)
        sock.settimeout(None)
        return end
    except OSError:
        raw.close()
        raise


def _await_ok(end: channel.EngineChannel) -> None:
    """Read the controller's ok (within the socket's timeout); keep frames after it."""
    frames: list[Any] = []
    while not frames:
        got = end.receive()
        if got is None:
            raise ConnectionError("the controller closed the channel before accepting it")
        frames = got
    try:
        accepted = loads(frames[0]) == ["ok", None, None]
    except (ValueError, TypeError):
        accepted = False
    if not accepted:
        raise ConnectionError("the controller did not accept the channel")
    end.early = frames[1:]


# -- a client's end (Twisted TLS on the reactor thread) --------------------------------------


@implementer(IHandshakeListener)
class TCPClientEnd(channel.ClientEnd):
    """A client's end over TLS: says who it is once the certificate proved the controller."""

    def __init__(self, offer: dict[str, Any], tubid: str) -> None:
        super().__init__(offer)
        self.tubid = tubid

    def connectionMade(self) -> None:
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)

    def handshakeCompleted(self) -> None:
        cert = self.transport.getPeerCertificate()
        der = cert.to_cryptography().public_bytes(Encoding.DER) if cert is not None else b""
        if tubid_of(der) != self.tubid:
            log.warn("command channel: the TLS peer is not the controller (certificate)")
            self.transport.abortConnection()
            return
        self.sendFrame(hello(self.offer))


def connect_session(offer: Any, session: Any) -> Deferred[channel.ClientEnd | None]:
    """Open a client's end for an offer of either listener; fire with it, or None.

    For the TLS port, session (the Foolscap reference the offer came on) says
    where the controller is (the address that connection reached) and who it
    is (its tubid).
    """
    if not valid_offer(offer):
        return channel.connect_client(offer)
    if not enabled():
        return defer.succeed(None)
    return connect_client(offer, wire.peer_host(session), session.getRemoteTubID())


def client_options() -> twisted_ssl.CertificateOptions:
    return twisted_ssl.CertificateOptions(
        lowerMaximumSecurityTo=twisted_ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=twisted_ssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHERS))


def connect_client(offer: dict[str, Any], host: str, tubid: str,
                   timeout: float = CONNECT_TIMEOUT) -> Deferred[channel.ClientEnd | None]:
    """Open a client's end; fire with it once the controller accepted it, else None."""
    end = TCPClientEnd(offer, tubid)
    reactor.connectSSL(host, offer["tcp_port"], _EndFactory(end), client_options(),
                       timeout=timeout)
    return channel.await_ready(end, timeout)


class _EndFactory(ClientFactory):
    """Build the one end; a refused connection gives up at once, not at the timeout."""

    def __init__(self, end: TCPClientEnd) -> None:
        self.end = end

    def buildProtocol(self, addr: Any) -> TCPClientEnd:
        self.end.factory = self
        return self.end

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if not self.end.ready.called:
            log.warn("command channel: cannot connect ({e}); calls take Foolscap",
                     e=reason.getErrorMessage())
            self.end.ready.errback(reason)
