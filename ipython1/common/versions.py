"""Versions at connect: each side says what it runs, and a mismatch is named plainly.

Engines send ``local_versions()`` when they register and clients when they
connect. A different wire ``PROTOCOL`` is an error (the two sides cannot talk
correctly); a different Python minor version or cloudpickle major version is a
warning (functions and pickled values may fail to cross: cloudpickle pickles
code objects, which change with Python's minor version). Every message names
both sides' versions.
"""

from __future__ import annotations

import sys
from typing import Any

from ipython1 import __version__
from ipython1.common.errors import VersionMismatch

# Bump when the wire changes incompatibly (3: msgpack task results, issue 13; 4: a direct
# transfer starts with the client's mode byte and seal offer inside TLS, issue 17).
PROTOCOL = 4


def _module_version(name: str) -> str:
    try:
        module = __import__(name)
    except ImportError:
        return "missing"
    return str(getattr(module, "__version__", "unknown"))


def local_versions() -> dict[str, Any]:
    """Describe what this process runs, for the other side's check."""
    return {
        "protocol": PROTOCOL,
        "python": ".".join(map(str, sys.version_info[:3])),
        "ipython1": __version__,
        "cloudpickle": _module_version("cloudpickle"),
        "numpy": _module_version("numpy"),
    }


def _major_minor(version: Any) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:2])


def _major(version: Any) -> str:
    return str(version).split(".")[0]


def compare(mine: dict[str, Any], theirs: Any, me: str, them: str
            ) -> tuple[list[str], list[str]]:
    """Return (errors, warnings) about talking to `them` from `me`; each names both sides."""
    if not isinstance(theirs, dict) or "protocol" not in theirs:
        return ([f"{them} sent no versions: it runs an ipython1 older than {me}'s "
                 f"{mine['ipython1']} (protocol {mine['protocol']}); install the same "
                 "ipython1 on both sides"], [])
    errors: list[str] = []
    warnings: list[str] = []
    if theirs.get("protocol") != mine["protocol"]:
        errors.append(
            f"{me} speaks ipython1 protocol {mine['protocol']} (ipython1 {mine['ipython1']}) "
            f"but {them} speaks protocol {theirs.get('protocol')} (ipython1 "
            f"{theirs.get('ipython1')}): install the same ipython1 on both sides")
    if _major_minor(theirs.get("python")) != _major_minor(mine["python"]):
        warnings.append(
            f"{me} runs Python {mine['python']} but {them} runs Python {theirs.get('python')}: "
            "functions and pickled values may fail to cross; use the same Python minor version")
    if _major(theirs.get("cloudpickle")) != _major(mine["cloudpickle"]):
        warnings.append(
            f"{me} has cloudpickle {mine['cloudpickle']} but {them} has cloudpickle "
            f"{theirs.get('cloudpickle')}: functions may fail to cross; use the same major "
            "version")
    return errors, warnings


def refusal(failure: Any) -> Any:
    """Errback: raise the other side's VersionMismatch here, with its message."""
    if failure.check(VersionMismatch):
        raise VersionMismatch(failure.getErrorMessage())
    return failure
