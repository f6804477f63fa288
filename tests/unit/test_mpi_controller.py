"""The controller's MPI rules with stand-in engines: requested ids, dying jobs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed

from ipython1.common.errors import EngineError
from ipython1.controller.queue import Command
from ipython1.controller.registry import Controller


class FakeEngine:
    """A RemoteReference stand-in: calls wait until answered; disconnects on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Deferred[Any]]] = []
        self._on_disconnect: list[tuple[Any, tuple[Any, ...]]] = []
        self.killed = False

    def callRemote(self, op: str, *args: Any) -> Deferred[Any]:  # noqa: N802 - Foolscap's name
        if op == "kill":
            self.killed = True
            return succeed(None)
        if op == "subscribe_output":
            return succeed(None)
        d: Deferred[Any] = Deferred()
        self.calls.append((op, d))
        return d

    def notifyOnDisconnect(self, callback: Any, *args: Any) -> None:  # noqa: N802
        self._on_disconnect.append((callback, args))

    def disconnect(self) -> None:
        for callback, args in self._on_disconnect:
            callback(*args)


def mpi_info(rank: int, size: int, job: str = "job1") -> dict[str, Any]:
    return {"mpi_rank": rank, "mpi_size": size, "mpi_job": job, "requested_id": rank}


def test_ranks_get_their_ids_in_any_order_and_others_skip_the_reserve() -> None:
    controller = Controller(reserve_ids=3)
    assert controller.register_engine(FakeEngine(), {}) == 3  # a plain engine, early
    for rank in (2, 0, 1):
        assert controller.register_engine(FakeEngine(), mpi_info(rank, 3)) == rank
    assert controller.register_engine(FakeEngine(), {}) == 4


def test_a_taken_or_invalid_request_gets_a_fresh_id() -> None:
    controller = Controller()
    assert controller.register_engine(FakeEngine(), {}) == 0
    assert controller.register_engine(FakeEngine(), {"requested_id": 0}) == 1
    assert controller.register_engine(FakeEngine(), {"requested_id": -1}) == 2
    assert controller.register_engine(FakeEngine(), {"requested_id": True}) == 3
    assert controller.register_engine(FakeEngine(), {"requested_id": "0"}) == 4
    # An id is never given twice, even after its engine has gone.
    controller.unregister_engine(0)
    assert controller.register_engine(FakeEngine(), {"requested_id": 0}) == 5


@given(st.lists(st.one_of(st.none(), st.integers(-2, 8)), max_size=30), st.integers(0, 5))
def test_ids_are_always_unique(requests: list[int | None], reserve: int) -> None:
    controller = Controller(reserve_ids=reserve)
    ids = [controller.register_engine(FakeEngine(), {"requested_id": r}) for r in requests]
    assert len(set(ids)) == len(ids)
    for r, engine_id in zip(requests, ids, strict=True):
        if r is None:
            assert engine_id >= reserve


def test_losing_one_rank_fails_every_engine_of_its_job_and_no_other() -> None:
    controller = Controller(reserve_ids=3)
    ranks = [FakeEngine() for _ in range(3)]
    for rank, engine in enumerate(ranks):
        controller.register_engine(engine, mpi_info(rank, 3))
    other_job = FakeEngine()
    controller.register_engine(other_job, mpi_info(0, 1, job="job2"))
    plain = FakeEngine()
    controller.register_engine(plain, {})
    failures: dict[int, Any] = {}
    for engine_id in (0, 1, 2, 3, 4):
        d = controller.submit(engine_id, Command("execute", ("x",)))
        d.addErrback(lambda f, e=engine_id: failures.__setitem__(e, f))
    ranks[1].disconnect()
    assert sorted(failures) == [0, 1, 2]
    assert all(f.check(EngineError) for f in failures.values())
    assert str(failures[1].value) == "engine 1 (MPI rank 1 of 3) died (connection lost)"
    assert str(failures[0].value) == (
        "engine 0 (MPI rank 0 of 3) was ended: its MPI job job1 lost engine 1 (MPI rank 1 of 3)")
    assert ranks[0].killed and ranks[2].killed and not other_job.killed and not plain.killed
    assert controller.ids() == [3, 4]
    # The peers' own disconnects, when the launcher ends them, change nothing.
    ranks[0].disconnect()
    assert controller.ids() == [3, 4]


def test_queue_status_and_engine_info_show_ranks() -> None:
    controller = Controller(reserve_ids=2)
    controller.register_engine(FakeEngine(), mpi_info(1, 2))
    controller.register_engine(FakeEngine(), {"pid": 7})
    assert [s.get("mpi_rank") for s in controller.queue_status([1, 2])] == [1, None]
    info = controller.engine_info([1, 2])
    assert info[0]["engine_id"] == 1 and info[0]["mpi_size"] == 2
    assert info[1] == {"engine_id": 2, "pid": 7, "command_channel": False,
                       "command_transport": "foolscap"}


@pytest.mark.parametrize("info", [{}, mpi_info(0, 1)])
def test_relaxed_disconnect_timeout_only_for_mpi_engines(info: dict[str, Any]) -> None:
    from types import SimpleNamespace

    from ipython1.common import wire

    engine = FakeEngine()
    engine.tracker = SimpleNamespace(broker=SimpleNamespace(disconnectTimeout=120))  # type: ignore[attr-defined]
    Controller().register_engine(engine, info)
    expected = wire.MPI_DISCONNECT_TIMEOUT if info else 120
    assert engine.tracker.broker.disconnectTimeout == expected  # type: ignore[attr-defined]
