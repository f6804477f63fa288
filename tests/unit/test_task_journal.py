"""The task journal: tasks outlive the controller (SQLite, no reactor, no sockets)."""

from __future__ import annotations

from ipython1.controller import task as T
from ipython1.controller.journal import FILE_NAME, TaskJournal
from tests.unit.test_task_scheduler import Clock, err, error_of, ok, spec


def scheduler(path, engines=(0,), **kw):
    journal = TaskJournal(path / FILE_NAME, **kw)
    s = T.Scheduler(Clock(), journal=journal)
    s.restore(journal.load(), journal.next_tid())
    for e in engines:
        s.add_engine(e)
    return s, journal


def restart(s, journal, path, engines=(0,), **kw):
    """Drop the scheduler as a crash would (after its last commit); load a new one."""
    journal._db.close()
    journal._reader.close()
    return scheduler(path, engines, **kw)


def answer(s, batches, reply=ok):
    for b in batches:
        s.batch_done(b.engine_id, b.id, [reply(tid) for tid, _ in b.tasks])


def test_finished_results_survive_and_ids_are_never_reused(tmp_path):
    s, j = scheduler(tmp_path)
    tids = [s.submit(spec()) for _ in range(3)]
    answer(s, s.assign())
    j.commit()
    s2, _ = restart(s, j, tmp_path)
    assert s2.result(tids[0])["value"] == [b"value-frames"]
    assert s2.result(tids[0])["status"] == T.SUCCEEDED
    assert s2.submit(spec()) == 3
    s2.reserve(10)
    j2 = s2.journal
    j2.commit()
    s3, _ = restart(s2, j2, tmp_path)
    assert s3.reserve(1) == 14  # past every id handed out, submitted or not


def test_unfinished_tasks_run_again_with_their_retry_policy(tmp_path):
    s, j = scheduler(tmp_path, engines=())
    a = s.submit(spec(retries=1))
    b = s.submit(spec(priority=3))
    c = s.submit(spec(after=[a]))
    s.add_engine(0)
    batch = s.assign()[0]  # b (priority) is dispatched
    assert [t for t, _ in batch.tasks] == [b]
    s.batch_done(0, batch.id, [err(b)])  # b failed its only attempt
    j.commit()
    s2, j2 = restart(s, j, tmp_path)
    assert s2.tasks[b].state == T.FAILED
    assert s2.tasks[a].state == T.PENDING and s2.tasks[a].retries_left == 1
    assert s2.tasks[c].state == T.BLOCKED
    answer(s2, s2.assign(), reply=err)  # a fails once: retried
    answer(s2, s2.assign())  # a succeeds: c runs
    answer(s2, s2.assign())
    assert s2.result(a)["attempts"] == 2
    assert s2.result(c)["status"] == T.SUCCEEDED


def test_running_tasks_wait_for_their_engine_and_are_reported_once(tmp_path):
    s, j = scheduler(tmp_path, engines=(0, 1))
    a, b = s.submit(spec()), s.submit(spec(retries=1))
    batches = s.assign()
    assert {bt.engine_id for bt in batches} == {0, 1}
    j.commit()
    s2, j2 = restart(s, j, tmp_path, engines=())
    assert s2.held == {0: [a], 1: [b]} or s2.held == {0: [b], 1: [a]}
    engine_of = {tid: e for e, tids in s2.held.items() for tid in tids}
    # Engine of a rejoins with a's result: finished, never dispatched again.
    s2.deliver_late(engine_of[a], [ok(a)])
    s2.add_engine(engine_of[a])
    assert s2.result(a)["status"] == T.SUCCEEDED
    # b's engine never comes back: it runs again (its retry), and the lost run counts.
    s2.release_held(None, "engine did not rejoin")
    batch = s2.assign()[0]
    assert [t for t, _ in batch.tasks] == [b]
    s2.batch_done(batch.engine_id, batch.id, [ok(b)])
    assert s2.result(b)["attempts"] == 2
    # A late copy of b's result (the old run) is not reported a second time.
    done = s2.counts[T.SUCCEEDED]
    s2.deliver_late(1, [ok(b)])
    assert s2.counts[T.SUCCEEDED] == done


def test_large_results_go_to_files_and_clear_removes_them(tmp_path):
    s, j = scheduler(tmp_path, large_result=1000)
    tid = s.submit(spec())
    batch = s.assign()[0]
    s.batch_done(0, batch.id, [[tid, "ok", 0.1, [b"x" * 5000]]])
    j.commit()
    files = list((tmp_path / "task-results").iterdir())
    assert [f.name for f in files] == [str(tid)]
    s2, j2 = restart(s, j, tmp_path)
    assert s2.result(tid)["value"] == [b"x" * 5000]
    s2.clear([tid])
    j2.commit()
    assert not files[0].exists()
    s3, _ = restart(s2, j2, tmp_path)
    assert tid not in s3.tasks


def test_recovery_task_in_progress_is_restored(tmp_path):
    s, j = scheduler(tmp_path)
    recovery = T.validate_spec({}, [b"recover"])
    tid = s.submit(T.validate_spec({"recovery": [{}, [b"recover"]]}, [b"main"]))
    answer(s, s.assign(), reply=err)  # main failed: the recovery task is next
    j.commit()
    s2, _ = restart(s, j, tmp_path)
    assert s2.tasks[tid].current["payload"] == recovery["payload"]
    batch = s2.assign()[0]
    assert batch.specs[0][2] == [b"recover"]


def test_one_commit_writes_a_whole_burst(tmp_path):
    s, j = scheduler(tmp_path)
    for _ in range(100):
        s.submit(spec())
    answer(s, s.assign())
    before = j.commits
    j.commit()
    assert j.commits == before + 1
    assert not j.pending()
    j.commit()
    assert j.commits == before + 1  # nothing to write: no transaction, no fsync


def test_a_task_that_is_not_idempotent_never_runs_twice(tmp_path):
    s, j = scheduler(tmp_path, engines=(0, 1, 2))
    once = [s.submit(spec(retries=3, idempotent=False)) for _ in range(3)]
    again = s.submit(spec(retries=3))
    batches = s.assign()
    assert all(len(b.tasks) == 1 for b in batches if b.tasks[0][0] in once)  # run alone
    j.commit()
    s2, _ = restart(s, j, tmp_path, engines=())
    engine_of = {tid: e for e, tids in s2.held.items() for tid in tids}
    ran, never, gone = once
    # Its engine rejoins saying it ran it, without the result: failed, not run again.
    s2.add_engine(engine_of[ran], done=[ran])
    assert s2.tasks[ran].state == T.FAILED
    assert "not idempotent" in str(error_of(s2, ran))
    # Rejoins without it (it never reached the engine): run again, at no cost.
    s2.add_engine(engine_of[never], done=[])
    assert s2.tasks[never].state == T.PENDING and s2.tasks[never].attempts == 0
    # Its engine never comes back: failed, whatever its retries, unlike the idempotent one.
    s2.release_held(None, "engine did not rejoin")
    assert s2.tasks[gone].state == T.FAILED and "may or may not have run" in str(
        error_of(s2, gone))
    assert s2.tasks[again].state == T.PENDING  # at least once: its retry


def test_an_engine_death_fails_a_task_that_is_not_idempotent_despite_retries(tmp_path):
    s, _ = scheduler(tmp_path, engines=(0,))
    once = s.submit(spec(retries=2, idempotent=False))
    s.assign()
    s.remove_engine(0, "engine 0 died")
    assert s.tasks[once].state == T.FAILED
    assert "not idempotent" in str(error_of(s, once))
    retried = s.submit(spec(retries=2))
    s.add_engine(1)
    s.assign()
    s.remove_engine(1, "engine 1 died")
    assert s.tasks[retried].state == T.PENDING  # at least once: it runs again
