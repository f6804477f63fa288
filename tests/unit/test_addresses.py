"""What a controller binds and advertises: --ip, --location, never a wildcard."""

from __future__ import annotations

import pytest

from ipython1.common import addresses

HOST = ["127.0.0.1", "10.1.2.3", "::1", "fe80::1%eth0", "fd77::10", "192.168.0.7", "10.1.2.3"]


def host() -> list[str]:
    return HOST


@pytest.mark.parametrize("text,expected", [
    ("node1", [("node1", 5000)]),
    ("node1:6000", [("node1", 6000)]),
    ("10.0.0.1,node2:7000", [("10.0.0.1", 5000), ("node2", 7000)]),
    ("fd77::10", [("fd77::10", 5000)]),
    ("[fd77::10]", [("fd77::10", 5000)]),
    ("[fd77::10]:6000, 10.0.0.1", [("fd77::10", 6000), ("10.0.0.1", 5000)]),
])
def test_location_parses_hosts_ports_and_ipv6(text: str, expected: list) -> None:
    assert addresses.parse_location(text, 5000) == expected


@pytest.mark.parametrize("text", ["0.0.0.0", "::", "[::]:80", "", ",", "h:0", "h:x",
                                  "h:70000", "[fd77::1]x", ":80"])
def test_location_refuses_wildcards_and_bad_ports(text: str) -> None:
    with pytest.raises(ValueError):
        addresses.parse_location(text, 5000)


def test_wildcard_advertises_every_non_loopback_address_never_itself() -> None:
    assert addresses.advertised("0.0.0.0", 80, addresses=host) == [
        ("10.1.2.3", 80), ("192.168.0.7", 80)]
    assert addresses.advertised("::", 80, addresses=host) == [
        ("10.1.2.3", 80), ("192.168.0.7", 80), ("fd77::10", 80)]


def test_wildcard_on_a_host_with_only_loopback_advertises_loopback() -> None:
    assert addresses.advertised("0.0.0.0", 80, addresses=lambda: ["127.0.0.1", "::1"]) == [
        ("127.0.0.1", 80)]


def test_specific_ip_and_location() -> None:
    assert addresses.advertised("10.1.2.3", 80, addresses=host) == [("10.1.2.3", 80)]
    assert addresses.advertised("0.0.0.0", 80, "gw:9000,node", addresses=host) == [
        ("gw", 9000), ("node", 80)]


def test_location_hints_are_foolscap_hints() -> None:
    hints = addresses.location_hints([("10.1.2.3", 80), ("fd77::10", 81), ("node", 82)])
    assert hints == "tcp:10.1.2.3:80,tcp:[fd77::10]:81,tcp:node:82"
    furl = f"pb://tubid@{hints}/swiss"
    assert addresses.furl_endpoints(furl) == ["10.1.2.3:80", "[fd77::10]:81", "node:82"]


def test_host_port_round_trip() -> None:
    for host_, port in [("10.1.2.3", 80), ("fd77::10", 443), ("node", 1)]:
        assert addresses.split_host_port(addresses.join_host_port(host_, port)) == (host_, port)


def test_listen_endpoint_escapes_ipv6() -> None:
    assert addresses.listen_endpoint("::", 80) == "tcp:80:interface=\\:\\:"
    assert addresses.listen_endpoint("10.1.2.3", 0) == "tcp:0:interface=10.1.2.3"


def test_location_alone_binds_every_interface() -> None:
    assert addresses.bind_address(None, None) == "127.0.0.1"
    assert addresses.bind_address(None, "node1") == "0.0.0.0"
    assert addresses.bind_address(None, "fd77::10") == "::"
    assert addresses.bind_address("10.1.2.3", "node1") == "10.1.2.3"


def test_unreachable_advice_names_addresses_port_and_loopback_trap() -> None:
    advice = addresses.unreachable_advice("pb://t@tcp:127.0.0.1:4000/s", "node7")
    assert "127.0.0.1:4000" in advice and "node7" in advice and "4000" in advice
    assert "--ip 0.0.0.0" in advice and "--location" in advice
    advice = addresses.unreachable_advice("pb://t@tcp:10.0.0.1:4000,tcp:[fd77::1]:4000/s", "n")
    assert "10.0.0.1:4000, [fd77::1]:4000" in advice and "--location HOST" in advice
