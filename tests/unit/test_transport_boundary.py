"""Above ipython1/transport, nothing calls callRemote (issue 13).

Every call to a peer goes through a transport interface (IEngineConnection,
ISessionConnection, IRegistrationConnection) or transport.foolscap.call, so
a second transport, a schema check or a fake for tests has one place to go.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ipython1"
TRANSPORT = PACKAGE / "transport"


def calls_to_call_remote(source: str) -> list[int]:
    """Return the lines that use callRemote: an attribute, or its name as a string
    (getattr, hasattr)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "callRemote":
            lines.append(node.lineno)
        elif isinstance(node, ast.Constant) and node.value == "callRemote":
            lines.append(node.lineno)
    return sorted(lines)


def test_the_scan_finds_every_form() -> None:
    source = ('ref.callRemote("x")\n'
              'getattr(ref, "callRemote")("x")\n'
              'f = ref.callRemote\n'
              'call(ref, "x")\n')
    assert calls_to_call_remote(source) == [1, 2, 3]


def test_nothing_outside_transport_calls_call_remote() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if TRANSPORT in path.parents:
            continue
        for line in calls_to_call_remote(path.read_text()):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    assert found == [], ("call peers through ipython1.transport (a connection, or "
                         f"transport.foolscap.call), not callRemote: {found}")
