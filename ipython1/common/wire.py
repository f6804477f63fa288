"""Foolscap plumbing: Tubs, FURL files, and finding a controller's FURL.

A FURL is the only credential: it names the controller's TLS certificate and
an unguessable swiss number. FURL files are written owner-only (0600).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from foolscap.api import Tub
from foolscap.broker import Broker
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred

from ipython1.common import addresses
from ipython1.common.addresses import furl_endpoints, split_host_port, unreachable_advice
from ipython1.common.clusterdir import MEC_FURL, ClusterDir
from ipython1.common.errors import ControllerNotFound
from ipython1.common.listenguard import ListenerGuard, guarded_negotiation


def _env_seconds(name: str, default: float) -> float:
    """Read a timeout in seconds from the environment."""
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


# Keep connections alive across long-running cells; the reactor thread of an
# engine answers pings even while user code runs.
TUB_OPTIONS = {"keepaliveTimeout": 30, "disconnectTimeout": 120}
# e.g. IPYTHON1_TUB_OPTIONS='{"keepaliveTimeout": 1, "disconnectTimeout": 3}'
TUB_OPTIONS_ENV = "IPYTHON1_TUB_OPTIONS"


def tub_options() -> dict[str, Any]:
    """Return TUB_OPTIONS, overridden by the JSON object in $IPYTHON1_TUB_OPTIONS."""
    import json

    options = dict(TUB_OPTIONS)
    text = os.environ.get(TUB_OPTIONS_ENV, "").strip()
    if text:
        try:
            extra = json.loads(text)
        except ValueError as e:
            raise ValueError(f"${TUB_OPTIONS_ENV} is not a JSON object: {e}") from None
        bad = [k for k, v in extra.items() if k not in TUB_OPTIONS
               or not isinstance(v, (int, float))] if isinstance(extra, dict) else [text]
        if bad:
            raise ValueError(f"${TUB_OPTIONS_ENV}: unknown option or non-number value "
                             f"{bad[0]!r} (known: {', '.join(TUB_OPTIONS)})")
        options.update(extra)
    return options


def ec_certificate_pem() -> bytes:
    """Return a new self-signed ECDSA P-256 key and certificate, PEM-encoded.

    Foolscap would make an RSA-2048 key (about 0.1 s of CPU each); every
    engine and client needs its own identity, so start-up uses EC keys.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "newpb_thingy")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256()))
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()) + cert.public_bytes(
        serialization.Encoding.PEM)


# An MPI engine inside a collective that holds the GIL (mpi4py's lowercase
# comm.allreduce waiting for a late rank) answers no ping until it returns:
# its connections wait this long before calling it dead. A rank that really
# dies closes its socket, and the MPI launcher ends the job, at once.
MPI_DISCONNECT_TIMEOUT = _env_seconds("IPYTHON1_MPI_DISCONNECT_TIMEOUT", 7 * 24 * 3600)


class _WriteCollector:
    """Stands in for a transport while Banana produces: collects its writes."""

    def __init__(self, transport: Any, chunks: list[bytes]) -> None:
        self._transport = transport
        self.write = chunks.append

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingBroker(Broker):  # type: ignore[misc]
    """Foolscap's Broker, handing each burst of messages to TLS in one write.

    Banana writes every token, and every byte of a token's length prefix,
    with a transport.write of its own: ~60 calls for the smallest command,
    each through Twisted's TLS layer, on every hop of every command. The
    bytes on the wire are the same; only the Python calls go.
    """

    def produce(self, dummy: Any = None) -> Any:
        transport = self.transport
        if transport is None or isinstance(transport, _WriteCollector):
            return super().produce(dummy)  # not connected, or nested in a produce
        chunks: list[bytes] = []
        self.transport = collector = _WriteCollector(transport, chunks)
        try:
            return super().produce(dummy)
        finally:
            if self.transport is collector:
                self.transport = transport
            if chunks:
                transport.write(b"".join(chunks))
                # Twisted's TLS layer holds small writes until the next reactor
                # turn to aggregate them; this one is already whole: send it now.
                aggregator = getattr(getattr(transport, "protocol", None), "_aggregator", None)
                if aggregator is not None:
                    aggregator.flush()


def _new_tub(**kwargs: Any) -> Tub:
    tub = Tub(**kwargs)
    tub.brokerClass = CoalescingBroker
    for name, value in tub_options().items():
        tub.setOption(name, value)
    return tub


def client_tub(disconnect_timeout: float | None = None) -> Tub:
    """Return a started Tub for outbound connections only."""
    tub = _new_tub(certData=ec_certificate_pem())
    if disconnect_timeout is not None:
        tub.setOption("disconnectTimeout", disconnect_timeout)
    tub.startService()
    return tub


def listening_tub(cert_file: Path, ip: str = "127.0.0.1", port: int = 0,
                  location: str | None = None) -> tuple[Tub, int]:
    """Return a Tub listening on ip:port with a persistent certificate.

    Its FURLs advertise location (HOST[:PORT],...), else what addresses.advertised
    finds for ip: never a wildcard address.
    """
    if not cert_file.exists():
        fd = os.open(cert_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(ec_certificate_pem())
    tub = _new_tub(certFile=str(cert_file))
    os.chmod(cert_file, 0o600)
    port = _free_port(ip, port)
    try:
        endpoints = addresses.advertised(ip, port, location)
    except ValueError as e:
        raise ControllerNotFound(str(e)) from None

    # Connections that have not negotiated yet: capped, timed out, floods logged.
    tub.negotiationClass = guarded_negotiation(ListenerGuard(f"Foolscap port {ip}:{port}"))
    tub.listenOn(addresses.listen_endpoint(ip, port))
    tub.setLocation(addresses.location_hints(endpoints))
    return tub, port


def _free_port(ip: str, port: int) -> int:
    """Check that ip:port can be listened on (any free port if 0); return the port.

    Foolscap listens asynchronously and only logs a failure: check first so
    that a bad --ip or a busy --port stops the controller with a clear error.
    """
    family = socket.AF_INET6 if ":" in ip or ip == "" else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError as e:
            raise ControllerNotFound(f"cannot listen on {ip}:{port}: {e.strerror or e}") from None
        return int(sock.getsockname()[1])


def publish(tub: Tub, obj: Any, furl_path: Path) -> str:
    """Register obj on tub and write its FURL to furl_path (0600).

    The swiss number of an existing FURL file is reused, so a controller
    restarted with the same certificate keeps its FURLs. The file is
    replaced atomically (Foolscap would truncate and rewrite it in place):
    whoever sees it reads a whole FURL, never an empty or partial one.
    """
    from foolscap.referenceable import SturdyRef

    name = None
    try:
        old = SturdyRef(furl_path.read_text().strip())
        if old.tubID == tub.getTubID():
            name = old.name  # else made by another certificate: start afresh
    except (OSError, ValueError):
        pass
    furl: str = tub.registerReference(obj, name=name)
    tmp = furl_path.with_name(f".{furl_path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(furl + "\n")
    os.replace(tmp, furl_path)
    return furl


def resolve_furl(furl_or_file: str | os.PathLike[str] | None, profile: str = "default",
                 default_name: str = MEC_FURL) -> str:
    """Return a FURL from a FURL, a FURL file, or the profile's default file.

    A missing or unreadable file raises ControllerNotFound naming the file,
    the profile, and whether a controller is running.
    """
    if furl_or_file is not None and str(furl_or_file).startswith("pb://"):
        return str(furl_or_file)
    cluster = ClusterDir(profile)
    path = Path(furl_or_file) if furl_or_file is not None else cluster.furl_file(default_name)
    try:
        furl = path.read_text().strip()
    except OSError as e:
        running = "a controller is running" if cluster.controller_running() else (
            "no controller is running (start one with: ipcluster start -n 4 --daemon"
            + ("" if profile == "default" else f" --profile {profile}") + ")")
        raise ControllerNotFound(
            f"cannot read FURL file {path} ({e.strerror or e}) for profile {profile!r}; "
            f"{running}"
        ) from None
    if not furl.startswith("pb://"):
        raise ControllerNotFound(f"FURL file {path} does not hold a FURL (profile {profile!r})")
    return furl


def furl_source(furl_or_file: str | os.PathLike[str] | None, profile: str = "default",
                default_name: str = MEC_FURL) -> str:
    """Say where resolve_furl takes its FURL from, for messages ('' for a bare FURL)."""
    if furl_or_file is not None and str(furl_or_file).startswith("pb://"):
        return ""
    path = Path(furl_or_file) if furl_or_file is not None else \
        ClusterDir(profile).furl_file(default_name)
    start = "ipcluster start -n 4 --daemon" + ("" if profile == "default"
                                                else f" --profile {profile}")
    return (f"the FURL file {path} (profile {profile!r}) names it, but no controller "
            f"answers there; start one with: {start}")


def get_reference(tub: Tub, furl: str, timeout: float = 10.0,
                  source: str = "") -> Deferred[Any]:
    """Connect to a FURL; fail with ControllerNotFound after timeout seconds.

    source (see furl_source) says where the FURL came from and what to do.
    """
    d = tub.getReference(furl)
    hint = f"; {source}" if source else ""

    def failed(f: Any) -> None:
        advice = unreachable_advice(furl, socket.gethostname())
        if f.check(defer.CancelledError):
            raise ControllerNotFound(
                f"no controller answered at {furl_location(furl)} within {timeout:g} s"
                f"{hint}; {advice}"
            )
        raise ControllerNotFound(
            f"cannot connect to the controller at {furl_location(furl)}: "
            f"{f.getErrorMessage().rstrip('.')}{hint}; {advice}"
        )

    d.addTimeout(timeout, reactor)
    d.addErrback(failed)
    return d


def relax_disconnect_timeout(ref: Any, seconds: float = MPI_DISCONNECT_TIMEOUT) -> bool:
    """Give one connection a longer disconnect timeout; False if it has none.

    Foolscap sets timeouts per Tub; this changes the broker behind one
    RemoteReference (its disconnect timer re-reads the value when it fires).
    """
    broker = getattr(getattr(ref, "tracker", None), "broker", None)
    if broker is None or getattr(broker, "disconnectTimeout", None) is None:
        return False
    broker.disconnectTimeout = seconds
    return True


def furl_location(furl: str) -> str:
    """Return the host:port part of a FURL, for messages."""
    return ", ".join(furl_endpoints(furl)) or furl


def peer_host(ref: Any, furl: str = "") -> str:
    """Return the address a RemoteReference's connection reached (its peer's host).

    Of the FURL's several location hints, this is the one that worked from
    here: the controller's other listeners (the data relay) are on it too.
    """
    try:
        return str(ref.tracker.broker.transport.getPeer().host)
    except AttributeError:  # not connected over TCP (a local stand-in in tests)

        hints = furl_endpoints(furl)
        return split_host_port(hints[0], 0)[0] if hints else "127.0.0.1"
