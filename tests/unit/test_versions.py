"""Version checks at connect: what is an error, what a warning, and that both sides are named."""

from __future__ import annotations

from ipython1.common.versions import PROTOCOL, compare, local_versions


def test_same_versions_are_fine():
    mine = local_versions()
    assert compare(mine, dict(mine), "the controller", "engine 3") == ([], [])


def test_other_protocol_is_an_error_naming_both_sides():
    mine = local_versions()
    errors, _ = compare(mine, dict(mine, protocol=PROTOCOL + 1, ipython1="9.9"),
                        "the controller", "engine pid 7 on h2")
    assert len(errors) == 1
    assert f"protocol {PROTOCOL}" in errors[0] and f"protocol {PROTOCOL + 1}" in errors[0]
    assert "ipython1 9.9" in errors[0] and "engine pid 7 on h2" in errors[0]


def test_python_minor_and_cloudpickle_major_are_warnings_naming_both():
    mine = dict(local_versions(), python="3.11.7", cloudpickle="3.1.0")
    errors, warnings = compare(mine, dict(mine, python="3.11.2"), "a", "b")
    assert (errors, warnings) == ([], [])  # a patch release does not matter
    errors, warnings = compare(mine, dict(mine, python="3.10.4", cloudpickle="2.2.1"),
                               "this client", "engine(s) 0, 1")
    assert errors == []
    assert any("3.11.7" in w and "3.10.4" in w for w in warnings)
    assert any("3.1.0" in w and "2.2.1" in w for w in warnings)


def test_a_peer_sending_no_versions_is_told_to_upgrade():
    errors, _ = compare(local_versions(), {"pid": 1}, "the controller", "engine x")
    assert errors and "older" in errors[0]
