"""The task farm's scheduling policy, with no reactor, no sockets and a fake clock."""

from __future__ import annotations

import pytest

from ipython1.common.errors import KernelError, error_from_wire
from ipython1.controller import task as T

PAYLOAD = [b"opaque"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(engines=(0,), **kw):
    finished: list[int] = []
    s = T.Scheduler(Clock(), finished.append, **kw)
    for e in engines:
        s.add_engine(e)
    return s, finished


def spec(**meta):
    return T.validate_spec(meta, PAYLOAD)


def ok(tid, duration=0.001):
    return [tid, "ok", duration, [b"value-frames"]]


def err(tid, ename="ValueError"):
    return [tid, "error", 0.001, {"error": {"kind": "remote", "engine_id": 0, "ename": ename,
                                            "evalue": "boom", "traceback": ""}}]


def run_all(s, reply=ok):
    """Answer every batch until nothing is left to assign."""
    while True:
        batches = s.assign()
        if not batches:
            return
        for b in batches:
            s.batch_done(b.engine_id, b.id, [reply(tid) for tid, _ in b.tasks])


def error_of(s, tid):
    return error_from_wire(s.result(tid)["error"])


def test_priority_first_then_fifo():
    s, _ = make()
    low = [s.submit(spec()) for _ in range(3)]
    high = s.submit(spec(priority=5))
    order = []
    while True:
        batches = s.assign()
        if not batches:
            break
        for b in batches:
            order += [tid for tid, _ in b.tasks]
            s.batch_done(b.engine_id, b.id, [ok(t, duration=1.0) for t, _ in b.tasks])
    assert order == [high, *low]


def test_tiny_tasks_are_batched_and_in_flight_work_is_bounded():
    s, finished = make(engines=(0, 1))
    first = s.submit(spec())
    run_all(s, lambda tid: ok(tid, duration=1e-5))  # learn that tasks are tiny
    tids = [s.submit(spec()) for _ in range(5000)]
    batches = s.assign()
    # two batches per engine at most, each at most MAX_BATCH tasks
    assert len(batches) == 4
    assert all(1 < len(b.tasks) <= T.MAX_BATCH for b in batches)
    assert s.assign() == []  # no more room until replies come
    for b in batches:
        s.batch_done(b.engine_id, b.id, [ok(t, 1e-5) for t, _ in b.tasks])
    run_all(s, lambda tid: ok(tid, 1e-5))
    assert sorted(finished) == sorted([first, *tids])


def test_long_tasks_go_one_at_a_time_to_each_engine():
    s, _ = make(engines=(0, 1, 2))
    s.estimate = 2.0
    for _ in range(10):
        s.submit(spec())
    batches = s.assign()
    assert sorted(b.engine_id for b in batches) == [0, 1, 2]
    assert all(len(b.tasks) == 1 for b in batches)


def test_engine_death_without_retries_fails_the_running_task_with_engine_error():
    s, finished = make(engines=(0, 1))
    a, b = s.submit(spec()), s.submit(spec())
    batches = {x.engine_id: x for x in s.assign()}
    on0 = batches[0].tasks[0][0]
    on1 = batches[1].tasks[0][0]
    assert {on0, on1} == {a, b}
    s.remove_engine(0, "engine 0 died")
    assert finished == [on0]
    e = error_of(s, on0)
    assert type(e).__name__ == "EngineError" and e.engine_id == 0
    assert s.tasks[on1].state == T.RUNNING


def test_engine_death_with_retries_moves_the_task_elsewhere():
    s, finished = make(engines=(0, 1))
    tid = s.submit(spec(retries=1))
    (batch,) = s.assign()
    s.remove_engine(batch.engine_id, "died")
    (again,) = s.assign()
    assert again.engine_id != batch.engine_id
    # a late reply from the dead engine's batch is ignored: never done twice
    s.batch_done(batch.engine_id, batch.id, [err(tid)])
    s.batch_done(again.engine_id, again.id, [ok(tid)])
    assert finished == [tid] and s.result(tid)["status"] == T.SUCCEEDED
    assert s.result(tid)["attempts"] == 2


def test_a_lost_multi_task_batch_reruns_each_task_alone_without_charging_it():
    s, finished = make(engines=(0, 1))
    s.estimate = 1e-5
    tids = [s.submit(spec()) for _ in range(40)]
    batches = s.assign()
    running = next(b for b in batches if b.engine_id == 0)
    queued = next(b for b in batches if b.engine_id == 0 and b is not running)
    assert len(running.tasks) > 1 and len(queued.tasks) > 1
    s.batch_lost(0, running.id, started=True, reason="engine 0 died")
    s.batch_lost(0, queued.id, started=False, reason="engine 0 died")
    s.remove_engine(0)
    assert not finished
    assert all(s.tasks[t].solo for t, _ in running.tasks)
    assert not any(s.tasks[t].solo for t, _ in queued.tasks)  # never reached the engine
    for b in batches:
        if b.engine_id == 1:
            s.batch_done(1, b.id, [ok(t) for t, _ in b.tasks])
    while len(finished) < 40:
        for b in s.assign():
            if any(s.tasks[t].solo for t, _ in b.tasks):
                assert len(b.tasks) == 1
            s.batch_done(b.engine_id, b.id, [ok(t) for t, _ in b.tasks])
    assert all(s.result(t)["status"] == T.SUCCEEDED for t in tids)
    assert all(s.result(t)["attempts"] == 1 for t in tids)


def test_retries_then_recovery_task_then_the_original_error():
    s, finished = make()
    recovery = [{"retries": 1}, [b"recovery"]]
    tid = s.submit(T.validate_spec({"retries": 2, "recovery": recovery}, PAYLOAD))
    payloads = []
    while tid not in finished:
        for b in s.assign():
            payloads += [spec_[2] for spec_ in b.specs]
            s.batch_done(b.engine_id, b.id, [err(t, "Original" if s.tasks[t].current[
                "payload"] == PAYLOAD else "RecoveryFailed") for t, _ in b.tasks])
    assert payloads == [PAYLOAD] * 3 + [[b"recovery"]] * 2
    e = error_of(s, tid)
    assert e.ename == "Original"
    assert s.result(tid)["recovered"] is True


def test_recovery_task_success_is_the_result():
    s, _ = make()
    tid = s.submit(T.validate_spec({"recovery": [{}, [b"r"]]}, PAYLOAD))
    (b,) = s.assign()
    s.batch_done(0, b.id, [err(tid)])
    (b,) = s.assign()
    assert b.specs[0][2] == [b"r"]
    s.batch_done(0, b.id, [ok(tid)])
    assert s.result(tid)["status"] == T.SUCCEEDED and s.result(tid)["recovered"]


def test_after_waits_for_success_and_fails_when_a_dependency_fails():
    s, finished = make()
    a = s.submit(spec())
    b = s.submit(spec(after=[a]))
    c = s.submit(spec(after=[b]))
    bad = s.submit(spec())
    d = s.submit(spec(after=[bad]))
    e = s.submit(spec(after=[d]))
    unknown = s.submit(spec(after=[12345]))
    assert type(error_of(s, unknown)).__name__ == "UnmetDependency"
    assert s.tasks[b].state == T.BLOCKED and s.tasks[c].state == T.BLOCKED
    run_all(s, lambda tid: err(tid) if tid == bad else ok(tid))
    assert s.result(c)["status"] == T.SUCCEEDED
    for t in (d, e):
        error = error_of(s, t)
        assert type(error).__name__ == "UnmetDependency" and "failed" in str(error)
    assert sorted(finished) == sorted([a, b, c, bad, d, e, unknown])


def test_depend_unmet_everywhere_fails_and_met_somewhere_runs_there():
    s, _ = make(engines=(0, 1))
    never = s.submit(spec())
    only1 = s.submit(spec())
    for _ in range(3):
        for b in s.assign():
            replies = []
            for tid, _ in b.tasks:
                if tid == never or (tid == only1 and b.engine_id == 0):
                    replies.append([tid, "unmet", 0.0, "depend returned False"])
                else:
                    replies.append(ok(tid))
            s.batch_done(b.engine_id, b.id, replies)
    error = error_of(s, never)
    assert type(error).__name__ == "UnmetDependency"
    assert "engine 0" in str(error) and "engine 1" in str(error)
    assert s.result(only1)["engine_id"] == 1


def test_abort_pending_and_blocked_tasks_but_not_running_or_finished_ones():
    s, finished = make()
    running = s.submit(spec())
    (b,) = s.assign()
    queued = s.submit(spec())
    blocked = s.submit(spec(after=[running]))
    s.abort(queued)
    s.abort(blocked)
    assert type(error_of(s, queued)).__name__ == "TaskAborted"
    with pytest.raises(KernelError, match="already running"):
        s.abort(running)
    s.batch_done(0, b.id, [ok(running)])
    with pytest.raises(KernelError, match="already finished"):
        s.abort(running)
    assert s.assign() == []  # the aborted task is never sent
    assert finished == [queued, blocked, running]


def test_timeout_backstop_finishes_once_and_the_late_reply_is_ignored():
    s, finished = make()
    tid = s.submit(spec(timeout=1.0))
    other = s.submit(spec())
    (b,) = s.assign()
    assert b.tasks[0][0] == tid and len(b.tasks) == 1 and b.timeout == 1.0  # alone
    assert s.timed_out(tid, b.tasks[0][1])
    assert not s.timed_out(tid, b.tasks[0][1])
    assert s.assign() == []  # the engine is still busy with it
    s.batch_done(0, b.id, [ok(tid)])
    assert type(error_of(s, tid)).__name__ == "TaskTimeout"
    run_all(s)
    assert finished == [tid, other]


def test_engines_that_join_take_queued_tasks_at_once():
    s, _ = make(engines=())
    tids = [s.submit(spec()) for _ in range(3)]
    assert s.assign() == []
    s.add_engine(7)
    (b,) = s.assign()
    assert b.engine_id == 7 and b.tasks[0][0] == tids[0]


def test_memory_budget_drops_fetched_results_first_then_refuses_new_tasks():
    s, _ = make(max_results=3)
    tids = [s.submit(spec()) for _ in range(3)]
    run_all(s)
    refused = s.submit(spec())  # three unfetched results: the budget is full
    assert type(error_of(s, refused)).__name__ == "KernelError"
    assert "budget" in s.result(refused)["error"]["evalue"]
    s.clear([refused])
    s.result(tids[0])  # fetched: it may now be dropped to make room
    later = s.submit(spec())
    run_all(s)
    assert s.result(later)["status"] == T.SUCCEEDED
    assert tids[0] not in s.tasks and s.dropped == 1
    assert s.clear() == 3


def test_clear_and_unknown_ids():
    s, _ = make()
    tid = s.submit(spec())
    run_all(s)
    assert s.clear([tid]) == 1
    with pytest.raises(KernelError, match="no task with id"):
        s.result(tid)
    with pytest.raises(KernelError, match="not reserved"):
        s.submit(spec(), tid=10**6)
    # after= naming a succeeded-then-cleared task is refused, not guessed (docs/tasks.md)
    later = s.submit(spec(after=[tid]))
    assert "cleared" in str(error_of(s, later))


def test_abort_waiting_aborts_only_that_users_unstarted_tasks():
    s, _ = make(engines=())
    mine = [s.submit(spec(), user="hank") for _ in range(2)]
    other = s.submit(spec(), user="ivy")
    assert s.abort_waiting("hank") == 2
    assert all(type(error_of(s, t)).__name__ == "TaskAborted" for t in mine)
    assert s.tasks[other].state == T.PENDING


@pytest.mark.parametrize("meta, payload, message", [
    ("x", PAYLOAD, "must be a dict"),
    ({"bogus": 1}, PAYLOAD, "unknown task field"),
    ({"retries": -1}, PAYLOAD, "retries must be >= 0"),
    ({"retries": True}, PAYLOAD, "wrong type"),
    ({"timeout": 0}, PAYLOAD, "positive"),
    ({"after": ["a"]}, PAYLOAD, "list of task ids"),
    ({}, [], "payload"),
    ({}, ["text"], "payload"),
    ({"recovery": [{}]}, PAYLOAD, "recovery"),
])
def test_bad_specs_get_a_specific_error(meta, payload, message):
    with pytest.raises(KernelError, match=message):
        T.validate_spec(meta, payload)


def test_status_counts():
    s, _ = make(engines=(0, 1))
    for _ in range(3):
        s.submit(spec())
    s.assign()
    st = s.status(verbose=True)
    assert st["pending"] == 1 and sum(st["running"].values()) == 2
    assert st["succeeded"] == 0 and len(st["pending_ids"]) == 1
