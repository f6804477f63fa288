"""Pure logic of issue 20: engine properties, property depends in the scheduler,
TaskRejectError, view targets, mappers, @interactive, ids for ipcluster engines."""

from __future__ import annotations

import pickle

import pytest

from ipython1.client import parallel
from ipython1.client.blocking import resolve
from ipython1.client.interactive import InteractiveFunction, interactive
from ipython1.client.results import ExecuteResult
from ipython1.client.taskspec import MapTask, StringTask
from ipython1.cluster.resize import parse_ids
from ipython1.common import properties as P
from ipython1.common.errors import KernelError, TaskRejectError, error_from_wire, error_to_wire
from ipython1.common.serialize import deserialize, serialize
from ipython1.controller import task as T
from tests.unit.test_task_scheduler import PAYLOAD, Clock, err, ok

# -- properties --------------------------------------------------------------------------


def test_properties_update_select_and_check():
    props: dict = {}
    P.update(props, "set", {"a": 5, "b": "asdf", "c": True, "d": None, "e": [1, (2, {"x": b""})]})
    assert P.select(props, ["c", "d"]) == {"c": True, "d": None}
    assert P.select(props, None) == props and P.select(props, None) is not props
    P.update(props, "del", ["b", "e"])
    assert sorted(props) == ["a", "c", "d"]
    with pytest.raises(KernelError, match="no property 'zz'"):
        P.select(props, "zz")
    with pytest.raises(KernelError, match="no property"):
        P.update(props, "del", ["a", "zz"])
    assert "a" in props  # nothing removed when one name is missing
    P.update(props, "clear", None)
    assert props == {}
    for bad in ({"f": object()}, {"f": {1: 2}}, {"f": lambda: 0}):
        with pytest.raises(KernelError):
            P.update(props, "set", bad)
    with pytest.raises(KernelError):
        P.update(props, "set", ["not", "a", "dict"])
    with pytest.raises(KernelError, match="unknown"):
        P.update(props, "explode", None)
    deep: list = []
    for _ in range(P.MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(KernelError, match="deeply"):
        P.check_plain(deep)


def test_which_depends_are_property_depends():
    assert P.takes_properties(lambda props: props["gpu"])
    assert P.takes_properties(lambda props, strict=True: props)
    assert not P.takes_properties(lambda: True)  # engine-side, as before
    assert not P.takes_properties((lambda pid: True, 42))  # engine-side with args
    assert not P.takes_properties(lambda a, b: True)
    assert not P.takes_properties(None)
    assert P.unmet_reason(lambda p: p.get("gpu"), {"gpu": 1}) == ""
    assert "returned False" in P.unmet_reason(lambda p: p.get("gpu"), {})
    assert "KeyError" in P.unmet_reason(lambda p: p["gpu"], {})
    props = {"n": 1}
    P.unmet_reason(lambda p: p.pop("n"), props)
    assert props == {"n": 1}  # a depend cannot change the engine's properties
    import sys

    assert "SystemExit" in P.unmet_reason(lambda p: sys.exit(3), props)  # never stops it


def test_tasks_put_property_depends_in_meta_and_engine_depends_in_the_payload():
    meta, payload = MapTask(abs, (1,), depend=lambda p: p.get("gpu")).to_wire()
    assert deserialize(meta["depend"])({"gpu": 1}) == 1
    assert "depend" not in deserialize(payload)
    meta, payload = StringTask("x", depend=(lambda pid: True, 4)).to_wire()
    assert "depend" not in meta and deserialize(payload)["depend"][1] == (4,)
    recovery = StringTask("y", depend=lambda p: True)
    meta, _ = MapTask(abs, (1,), recovery_task=recovery).to_wire()
    assert "depend" in meta["recovery"][0] and T._has_property_depend(meta)
    assert not T._has_property_depend({"retries": 1})
    with pytest.raises(KernelError, match="frames"):
        T.validate_spec({"depend": ["not bytes"]}, PAYLOAD)


# -- the scheduler -------------------------------------------------------------------------


def _scheduler(engines, properties):
    finished: list[int] = []

    def check(spec, engine_id):
        return P.unmet_reason(deserialize(spec["depend"]), properties[engine_id])

    s = T.Scheduler(Clock(), finished.append, check_depend=check)
    for e in engines:
        s.add_engine(e)
    return s, finished


def _depend_spec(f):
    return T.validate_spec({"depend": serialize(f)}, PAYLOAD)


def test_property_depends_choose_engines_before_sending():
    props = {0: {}, 1: {"gpu": True}, 2: {}}
    s, finished = _scheduler((0, 1, 2), props)
    gpu = [s.submit(_depend_spec(lambda p: p.get("gpu"))) for _ in range(5)]
    anywhere = s.submit(T.validate_spec({}, PAYLOAD))
    nowhere = s.submit(_depend_spec(lambda p: p["fpga"]))
    sent: dict[int, int] = {}
    while len(finished) < 7:
        batches = s.assign()
        assert batches or len(finished) == 7
        for b in batches:
            for tid, _ in b.tasks:
                sent[tid] = b.engine_id
            s.batch_done(b.engine_id, b.id, [ok(tid) for tid, _ in b.tasks])
    assert {sent[t] for t in gpu} == {1} and anywhere in sent
    assert nowhere not in sent  # never reached an engine
    error = error_from_wire(s.result(nowhere)["error"])
    assert type(error).__name__ == "UnmetDependency" and "KeyError" in str(error)
    assert "engine 0" in str(error) and "engine 2" in str(error)


def test_a_changed_property_releases_a_waiting_task():
    props = {0: {"ready": False}, 1: {"ready": False}}
    s, finished = _scheduler((0, 1), props)
    busy = s.submit(T.validate_spec({"timeout": 100.0}, PAYLOAD))  # runs alone on one engine
    (b_busy,) = s.assign()
    waiting = s.submit(_depend_spec(lambda p: p["ready"]))
    assert s.assign() == []  # the idle engine said no; the busy one is not asked yet
    other = 1 - b_busy.engine_id
    assert other in s.tasks[waiting].unmet_on
    props[other]["ready"] = True
    s.properties_changed(other)
    (b,) = s.assign()
    assert b.engine_id == other and b.tasks[0][0] == waiting
    s.batch_done(other, b.id, [ok(waiting)])
    s.batch_done(b_busy.engine_id, b_busy.id, [ok(busy)])
    assert sorted(finished) == sorted([busy, waiting])


def test_task_reject_error_moves_the_task_without_charging_an_attempt():
    s, finished = _scheduler((0, 1), {0: {}, 1: {}})
    tid = s.submit(T.validate_spec({}, PAYLOAD))
    (b,) = s.assign()
    first = b.engine_id
    s.batch_done(first, b.id, [err(tid, "TaskRejectError")])
    (b,) = s.assign()
    assert b.engine_id == 1 - first
    s.batch_done(b.engine_id, b.id, [ok(tid)])
    assert s.result(tid)["attempts"] == 1 and s.result(tid)["engine_id"] == 1 - first
    again = s.submit(T.validate_spec({"retries": 5}, PAYLOAD))
    for _ in range(2):
        (b,) = s.assign()
        s.batch_done(b.engine_id, b.id, [err(again, "TaskRejectError")])
    error = error_from_wire(s.result(again)["error"])
    assert type(error).__name__ == "UnmetDependency" and "TaskRejectError" in str(error)
    assert s.assign() == [] and again in finished


def test_task_reject_error_crosses_the_wire_as_itself():
    wire = error_to_wire(TaskRejectError("not here"), 3)
    back = error_from_wire(wire)
    assert isinstance(back, TaskRejectError) and back.engine_id == 3  # type: ignore[attr-defined]


# -- client-side helpers -----------------------------------------------------------------


def test_view_targets():
    ids = lambda: [0, 1, 2, 3, 5]  # noqa: E731
    assert resolve(3, ids) == 3
    assert resolve(slice(0, 4), ids) == [0, 1, 2, 3]
    assert resolve(slice(None, None, 2), ids) == [0, 2, 5]
    assert resolve(slice(-1, None), ids) == [5]
    assert resolve([5, 1], ids) == [5, 1] and resolve(range(2), ids) == [0, 1]
    for bad in (True, "a", 1.5, [1, "2"]):
        with pytest.raises(TypeError):
            resolve(bad, ids)


class FakeClient:
    def __init__(self):
        self.calls = []

    def map(self, func, *seqs, **kwargs):
        self.calls.append((seqs, kwargs))
        return [func(*args) for args in zip(*seqs, strict=False)]


def test_mapper_parallel_and_raw_map():
    c = FakeClient()
    m = parallel.Mapper(c, targets=[1], block=False)
    assert m.map(abs, [-1, 2]) == [1, 2] and c.calls[-1][1] == {"targets": [1], "block": False}
    f = parallel.Parallel(m)(lambda x, y: x * y)
    assert f([1, 2], [3, 4]) == [3, 8]
    assert parallel.raw_map(c, max, [[1, 5], [4, 2]]) == [4, 5] and c.calls[-1][1] == {}
    assert parallel.raw_map(c, abs, [[-1]], targets=0, block=True) == [1]
    assert c.calls[-1][1] == {"targets": 0, "block": True}
    with pytest.raises(ValueError):
        parallel.Mapper(c, dist="r")
    with pytest.raises(TypeError):
        parallel.raw_map(c, abs, "abc")
    with pytest.raises(TypeError):
        parallel.Parallel(m)(42)
    t = parallel.TaskMapper(c, retries=2, timeout=5)
    t.map(abs, [1])
    assert c.calls[-1][1]["retries"] == 2 and c.calls[-1][1]["timeout"] == 5


def test_execute_results_answer_0_10_keys():
    r = ExecuteResult({"engine_id": 2, "execution_count": 7, "input": "a=1", "stdout": "x"})
    assert (r["id"], r["number"], r["input"], r["stdout"]) == (2, 7, "a=1", "x")


def _global_reader():
    return some_engine_global  # type: ignore[name-defined]  # noqa: F821


def test_interactive_rebinds_globals_where_an_ipython_shell_runs(monkeypatch):
    f = interactive(_global_reader)
    assert isinstance(f, InteractiveFunction) and interactive(f) is f
    assert f.__name__ == "_global_reader"
    with pytest.raises(TypeError):
        interactive(len)
    import IPython

    # No shell here: it comes back as itself, its own globals.
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    back = pickle.loads(pickle.dumps(f))
    assert isinstance(back, InteractiveFunction)

    class Shell:
        user_ns = {"some_engine_global": 41}

    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell)
    on_engine = deserialize(serialize(f))
    assert on_engine() == 41


def test_engine_ids_for_ipcluster_engines_remove():
    assert parse_ids(["3", "4"]) == [3, 4]
    assert parse_ids(["3,4", "1-2"]) == [1, 2, 3, 4]
    for bad in ([], ["x"], ["1-"], ["-2"]):
        with pytest.raises(ValueError):
            parse_ids(bad)


def test_call_with_stdout_keeps_and_passes_on_what_is_printed(capsys):
    from ipython1.client.asyncpending import call_with_stdout

    def loud(x, *, end="!"):
        print("value", x, end=end)
        return x * 2

    assert call_with_stdout(loud, 3, end="?") == (6, "value 3?")
    assert capsys.readouterr().out == "value 3?"  # still written where it went (streamed)
    import sys

    before = sys.stdout
    with pytest.raises(ZeroDivisionError):
        call_with_stdout(lambda: 1 / 0)
    assert sys.stdout is before


def test_stdout_pending_splits_values_from_output():
    from twisted.internet import defer

    from ipython1.client.asyncpending import AsyncPendingResult, _StdoutPending
    from ipython1.common.errors import CompositeError

    class Inner(AsyncPendingResult):
        def __init__(self, outcome):
            super().__init__(None, 7, lambda r: r)
            self.outcome = outcome

        def get_result(self, block=True):
            if isinstance(self.outcome, Exception):
                return defer.fail(self.outcome)
            return defer.succeed(self.outcome)

    many = _StdoutPending(Inner([(1, "a"), (2, "b")]), single=False)
    got = []
    many.get_result().addCallback(got.append)
    assert got == [[1, 2]] and many.stdout == ["a", "b"] and many.id == 7
    one = _StdoutPending(Inner((5, "x\n")), single=True)
    one.get_result().addCallback(got.append)
    assert got[-1] == 5 and one.stdout == "x\n"
    joined = _StdoutPending(Inner([([1, 2], ""), ([3], "c")]), single=False, join=True)
    joined.get_result().addCallback(got.append)
    assert got[-1] == [1, 2, 3] and joined.stdout == ["", "c"]
    error = CompositeError("boom", [], [(1, "out")])
    failed = _StdoutPending(Inner(error), single=False)
    failures = []
    failed.get_result().addErrback(failures.append)
    assert failures[0].value.results == [1]
