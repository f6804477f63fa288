"""The op table: every command has what it needs on every role, or this fails."""

from __future__ import annotations

import pytest
from foolscap.api import Violation

from ipython1.client.blocking import MultiEngineClient, TaskClient
from ipython1.client.multiengine import AsyncMultiEngineClient
from ipython1.common import ops
from ipython1.common.interfaces import RIEngine, RIMultiEngineSession, RITaskFarmSession
from ipython1.controller.multienginesession import OBSERVER_ALLOWED
from ipython1.engine.kernel import EngineKernel

# Ops a session reaches another way: (session method, client method, client class).
INDIRECT = {"apply": (RIMultiEngineSession, "apply_each", MultiEngineClient, "apply"),
            "run_tasks": (RITaskFarmSession, "submit", TaskClient, "run")}


@pytest.mark.parametrize("name", sorted(ops.OPS))
def test_every_op_has_a_kernel_method_a_session_schema_and_a_client_method(name: str) -> None:
    entry = ops.OPS[name]
    assert callable(getattr(EngineKernel, entry.kernel_method(name), None)), "kernel method"
    if entry.session:
        schema = RIMultiEngineSession[name]
        assert schema.argumentNames == [a for a, _ in entry.args] + ["targets", "block", "call"]
        assert callable(getattr(AsyncMultiEngineClient, name, None)), "async client method"
        assert callable(getattr(MultiEngineClient, name, None)), "client method"
    else:
        interface, method, client, client_method = INDIRECT[name]
        assert method in interface.names() and callable(getattr(client, client_method))


def test_the_engine_has_one_queued_entry_and_checks_each_op_there() -> None:
    assert "run" in RIEngine.names()
    assert not set(ops.OPS) & set(RIEngine.names())  # no forwarder per op
    ops.check_args("execute", ["x = 1"])
    with pytest.raises(Violation):
        ops.check_args("execute", [b"bytes are not code"])
    with pytest.raises(Violation):
        ops.check_args("keys", ["unexpected"])
    with pytest.raises(ops.UnknownOp):
        ops.check_args("no_such_op", [])


def test_observers_may_call_only_what_the_table_allows() -> None:
    allowed = {name for name, entry in ops.OPS.items() if entry.observer}
    assert OBSERVER_ALLOWED == ops.SESSION_OBSERVER_ALLOWED | allowed
    assert "execute" not in OBSERVER_ALLOWED and "get_ids" in OBSERVER_ALLOWED
