"""Where the controller listens, and what its FURLs advertise to other hosts.

A controller binds one address (``--ip``) and advertises one or more
``host:port`` location hints in every FURL (``--location``). Bound to a
wildcard (``0.0.0.0`` or ``::``) it advertises every non-loopback address of
its host, never the wildcard itself, which no other host can dial.

Pure logic: the host's addresses come from a callable (psutil by default).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

WILDCARDS = ("0.0.0.0", "::", "")

Endpoint = tuple[str, int]  # (host or address, port)


def is_wildcard(ip: str) -> bool:
    """Tell whether binding ip listens on every address of the host."""
    return ip in WILDCARDS


def family_of(ip: str) -> socket.AddressFamily:
    """Return the socket family for a literal address (IPv6 when it has a colon)."""
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def join_host_port(host: str, port: int) -> str:
    """Write host and port as host:port, bracketing an IPv6 address: [fd77::10]:80."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(text: str, default_port: int | None = None) -> Endpoint:
    """Parse HOST, HOST:PORT, [IPV6] or [IPV6]:PORT (a bare IPv6 address has no port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            raise ValueError(f"{text!r}: expected [IPV6] or [IPV6]:PORT")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None
    if not host:
        raise ValueError(f"{text!r}: no host")
    if port_text is None or port_text == "":
        if default_port is None:
            raise ValueError(f"{text!r}: no port")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def parse_location(text: str, default_port: int) -> list[Endpoint]:
    """Parse --location HOST[:PORT][,HOST2[:PORT2]...]; a missing port is default_port."""
    endpoints = []
    for part in text.split(","):
        if not part.strip():
            continue
        host, port = split_host_port(part, default_port)
        if is_wildcard(host):
            raise ValueError(f"--location {host}: a wildcard cannot be dialled; "
                             "give an address or name other hosts can reach")
        endpoints.append((host, port))
    if not endpoints:
        raise ValueError(f"--location {text!r} names no host")
    return endpoints


def _usable(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    # Link-local IPv6 needs an interface scope that means nothing to another host.
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast)


def psutil_addresses() -> list[str]:
    """Return every address of every interface of this host (psutil)."""
    import psutil

    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family in (socket.AF_INET, socket.AF_INET6)]


def host_addresses(ip: str = "::",
                   addresses: Callable[[], list[str]] = psutil_addresses) -> list[str]:
    """Return the non-loopback addresses a socket bound to wildcard ip accepts on.

    ``0.0.0.0`` accepts IPv4 only; ``::`` accepts both (Linux's dual stack).
    IPv4 comes first: more networks route it.
    """
    found = [a for a in dict.fromkeys(addresses()) if _usable(a)]
    v4 = [a for a in found if ":" not in a]
    v6 = [a for a in found if ":" in a]
    return v4 if ip == "0.0.0.0" else v4 + v6


def advertised(ip: str, port: int, location: str | None = None,
               addresses: Callable[[], list[str]] = psutil_addresses) -> list[Endpoint]:
    """Return the endpoints a controller bound to ip:port puts in its FURLs.

    An explicit location wins; a specific ip is advertised as itself; a
    wildcard becomes every usable address of the host (loopback when it has none).
    """
    if location:
        return parse_location(location, port)
    if not is_wildcard(ip):
        return [(ip, port)]
    found = host_addresses(ip or "::", addresses)
    return [(a, port) for a in found] or [("127.0.0.1", port)]


def location_hints(endpoints: list[Endpoint]) -> str:
    """Write endpoints as Foolscap's location: tcp:HOST:PORT,tcp:[IPV6]:PORT."""
    return ",".join(f"tcp:{join_host_port(host, port)}" for host, port in endpoints)


def furl_endpoints(furl: str) -> list[str]:
    """Return the host:port hints of a FURL, for messages ("tcp:" dropped)."""
    try:
        hints = furl.split("@", 1)[1].split("/", 1)[0]
    except IndexError:
        return []
    return [h[4:] if h.startswith("tcp:") else h for h in hints.split(",") if h]


def listen_endpoint(ip: str, port: int) -> str:
    """Return a Twisted endpoint string listening on ip:port (colons escaped)."""
    interface = (ip or "::").replace(":", "\\:")
    return f"tcp:{port}:interface={interface}"


def bind_address(ip: str | None, location: str | None) -> str:
    """Return the address to bind: --ip, else a wildcard when --location is given.

    Advertising an address to other hosts while listening on loopback would
    never work, so --location alone listens everywhere (IPv6 too if it names IPv6).
    """
    if ip is not None:
        return ip
    if not location:
        return "127.0.0.1"
    try:
        hosts = [h for h, _ in parse_location(location, 1)]
    except ValueError:
        return "0.0.0.0"
    return "::" if any(":" in h for h in hosts) else "0.0.0.0"


def unreachable_advice(furl: str, hostname: str) -> str:
    """Say which addresses an engine or client tried and what to check."""
    hints = furl_endpoints(furl)
    ports = sorted({h.rsplit(":", 1)[-1] for h in hints})
    loopback = [h for h in hints if h.startswith(("127.", "[::1]", "localhost"))]
    advice = (f"tried {', '.join(hints) or furl} from host {hostname}. Check that the "
              "controller is running and that this host can reach one of these addresses"
              f" and TCP port {', '.join(ports)} (firewall, routing)")
    if loopback:
        advice += ("; a 127.x or ::1 address only works on the controller's own host: "
                   "start the controller with --ip 0.0.0.0, or --location HOST naming an "
                   "address or name this host can reach")
    else:
        advice += ("; if the controller is known here by another name or address, "
                   "restart it with --location HOST")
    return advice
