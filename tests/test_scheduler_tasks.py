"""Scheduler semantics of new requests, status packs and pausing (dedupe, restarts, retries)."""

from __future__ import annotations

import logging

import pytest
from test_scheduler import Harness, urls

from spiderflow.exceptions import StorageError, StorageUnavailable
from spiderflow.message import Fetch, Process, Schedule, StatusPack, Task, TaskStatus, Track


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()

# ---------------------------------------------------------------------------------
# new requests

def test_dedupe_by_taskid(h):
    h.add_project()
    h.start("p")
    for _ in range(3):
        h.new("http://a/1")
    h.new("http://a/2")
    h.run()
    assert sorted(urls(h.sent_normal())) == ["http://a/1", "http://a/2"]
    h.new("http://a/1")                            # in flight
    h.run()
    h.answer_all([Task.create("p", "http://a/1"), Task.create("p", "http://a/2")])
    h.run()
    h.new("http://a/1")                            # done: ignored (age -1 means never recrawl)
    h.run()
    assert h.sent_normal() == []
    assert h.taskdb.count("p") == 2
    assert h.scheduler.counters("p")["p"]["all"]["pending"] == 0


def test_itag_change_restarts(h):
    h.add_project()
    h.start("p")
    task = h.crawl("http://a/1", itag="v1")
    h.new("http://a/1", itag="v1")
    h.run()
    assert h.sent_normal() == []
    h.new("http://a/1", itag="v2")
    h.run()
    (again,) = h.sent_normal()
    assert again.schedule.itag == "v2"
    row = h.db(task.taskid)
    assert row["schedule"]["itag"] == "v2" and row["track"]["process"]["ok"] is True   # track kept
    counters = h.scheduler.counters("p")["p"]["all"]
    assert counters["pending"] == 1 and counters["success"] == 0


def test_itag_change_replaces_a_queued_task(h):
    h.add_project(rate=1, burst=1)
    h.start("p")
    h.new("http://a/0")
    h.new("http://a/1", itag="v1")
    h.run()
    assert urls(h.sent_normal()) == ["http://a/0"]
    h.newtask_queue.put(Task.create("p", "http://a/1", schedule=Schedule(itag="v2"),
                                    process=Process(callback="detail")))
    h.clock.advance(1)
    h.run()
    (task,) = h.sent_normal()
    assert task.schedule.itag == "v2" and task.process.callback == "detail"
    assert h.db(task.taskid)["schedule"]["itag"] == "v2"


def test_age_expiry_restarts(h):
    h.add_project()
    h.start("p")
    h.crawl("http://a/1", age=100)
    h.clock.advance(50)
    h.new("http://a/1", age=100)
    h.run()
    assert h.sent_normal() == []
    h.clock.advance(51)
    h.new("http://a/1", age=100)
    h.run()
    assert "http://a/1" in urls(h.sent_normal())


def test_age_does_not_restart_a_task_never_crawled(h, caplog):
    h.add_project(rate=1, burst=1)
    h.start("p")
    h.new("http://a/0", age=100)
    h.new("http://a/1", age=100)
    h.run()
    (inflight,) = h.sent_normal()
    with caplog.at_level(logging.INFO):
        h.new("http://a/0", age=100)               # in flight, never crawled
        h.new("http://a/1", age=100)               # queued, never crawled
        h.run()
    assert "restart" not in caplog.text and "postponed" not in caplog.text
    h.answer(inflight)
    h.clock.advance(1)
    h.run()
    assert urls(h.sent_normal()) == ["http://a/1"]


def test_requests_see_batched_writes(h):
    """OneScheduler handles a status pack and new requests in one batch, before any flush."""
    h.add_project()
    h.start("p")
    task = h.crawl("http://a/1")
    h.clock.advance(200)
    h.new("http://a/1", force_update=True)
    h.run()
    (again,) = h.sent_normal()
    now = h.clock()
    sched = h.scheduler
    pack = StatusPack(taskid=again.taskid, project="p", url=again.url, track=Track(process={"ok": True}))
    sched._on_status_msgs([pack], now)             # SUCCESS now, still in the write batch
    assert h.db(task.taskid)["lastcrawltime"] == now - 200
    sched._on_request_msgs([Task.create("p", "http://a/1", schedule=Schedule(age=100))], now)
    sched._flush()
    h.run()
    assert h.sent_normal() == []                   # crawled just now: no restart
    assert h.db(task.taskid)["status"] == "SUCCESS" and h.db(task.taskid)["lastcrawltime"] == now


def _record_writes(h, monkeypatch, fail_combined: bool = False) -> list[tuple[int, int]]:
    """Log each taskdb write (insert_many and update_many use write_many) as (inserts, updates).

    With *fail_combined*, a batch of both fails.
    """
    calls: list[tuple[int, int]] = []
    write_many = h.taskdb.write_many

    def logged(inserts=(), updates=()):
        inserts, updates = list(inserts), list(updates)
        calls.append((len(inserts), len(updates)))
        if fail_combined and inserts and updates:
            raise StorageError("combined batch refused by the test")
        return write_many(inserts=inserts, updates=updates)

    monkeypatch.setattr(h.taskdb, "write_many", logged)
    return calls


def _page_done_with_links(h):
    """Dispatch one task; answer it with two new links and its status pack, as a processor would."""
    h.new("http://a/1")
    h.run()
    (task,) = h.sent_normal()
    h.new("http://a/2")
    h.new("http://a/3")
    h.answer(task)
    return task


def test_status_updates_and_new_tasks_are_one_transaction(h, monkeypatch):
    h.add_project()
    h.start("p")
    task = _page_done_with_links(h)
    calls = _record_writes(h, monkeypatch)
    h.run()
    assert calls == [(2, 1)]
    assert h.status(task.taskid) == "SUCCESS" and h.taskdb.count("p") == 3
    assert sorted(urls(h.sent_normal())) == ["http://a/2", "http://a/3"]


def _page_done_with_follows(h) -> Task:
    """Dispatch one task; answer it as a processor does: ``(StatusPack, Task, Task)``, two links."""
    h.add_project()
    h.start("p")
    h.new("http://a/1")
    h.run()
    (task,) = h.sent_normal()
    track = Track(fetch={"ok": True, "status_code": 200}, process={"ok": True})
    pack = StatusPack(taskid=task.taskid, project="p", url=task.url, track=track)
    h.status_queue.put((pack, Task.create("p", "http://a/2"), Task.create("p", "http://a/3")))
    return task


def test_follows_in_a_status_message_are_stored_before_its_status(h, monkeypatch):
    """A processor sends ``(StatusPack, Task, ...)``: the task is SUCCESS only once its follows are stored."""
    task = _page_done_with_follows(h)
    calls = _record_writes(h, monkeypatch)
    h.run()
    assert calls == [(2, 0), (0, 1)]          # the follows' insert, then the status update
    assert h.status(task.taskid) == "SUCCESS" and h.taskdb.count("p") == 3
    assert sorted(urls(h.sent_normal())) == ["http://a/2", "http://a/3"]


def _outage(h, monkeypatch, passes: int) -> dict[str, int]:
    """taskdb writes and reads fail as if the database were down, for the next *passes* scheduler passes."""
    state = {"left": passes, "failed": 0}
    run_once = h.scheduler.run_once

    def down(*_args, **_kwargs):
        state["failed"] += 1
        raise StorageUnavailable("taskdb write_many failed: OperationalError: connection refused (test)")

    real = {name: getattr(h.taskdb, name) for name in ("write_many", "get_many", "load_active", "count")}

    def pass_():
        if state["left"] > 0:
            state["left"] -= 1
            for name in real:
                monkeypatch.setattr(h.taskdb, name, down)
        else:
            for name, fn in real.items():
                monkeypatch.setattr(h.taskdb, name, fn)
        run_once()

    monkeypatch.setattr(h.scheduler, "run_once", pass_)
    return state


def test_a_database_outage_is_waited_out_and_loses_nothing(h, monkeypatch, caplog):
    task = _page_done_with_follows(h)
    h.new("http://a/4")
    state = _outage(h, monkeypatch, passes=3)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            h.scheduler._loop_step()
            assert h.scheduler._retry_in > 0            # run() waits this long before the next pass
            h.scheduler._retry_in = 0.0
    assert state["failed"] >= 3 and "database is unavailable" in caplog.text
    assert h.status(task.taskid) == "ACTIVE"             # nothing half-done reached taskdb
    assert h.status_queue.qsize() == 0 and h.scheduler._status_held     # taken, and held in hand
    h.scheduler._loop_step()
    h.scheduler._loop_step()
    assert "database is back" in caplog.text
    assert h.status(task.taskid) == "SUCCESS" and h.taskdb.count("p") == 4
    assert sorted(urls(h.sent_normal())) == ["http://a/2", "http://a/3", "http://a/4"]


def test_a_commit_that_succeeds_but_reports_a_lost_connection_strands_no_task(h, monkeypatch):
    """The connection drops while COMMIT is answered: the server has the follows, the scheduler
    sees an outage and takes the status message again. The follows it then finds stored must
    still be crawled, and on_finished must wait for them (it once left one ACTIVE)."""
    task = _page_done_with_follows(h)
    real = h.taskdb.write_many
    state = {"lied": 0}

    def commit_then_fail(*args, **kwargs):
        out = real(*args, **kwargs)
        if not state["lied"]:
            state["lied"] += 1
            raise StorageUnavailable("taskdb write_many failed: consuming input failed (test)")
        return out

    monkeypatch.setattr(h.taskdb, "write_many", commit_then_fail)
    h.scheduler._loop_step()                          # the follows are committed; the pass is held
    assert state["lied"] == 1 and h.scheduler._status_held
    h.scheduler._retry_in = 0.0
    for _ in range(5):
        h.scheduler._loop_step()
        h.scheduler._retry_in = 0.0
    assert h.status(task.taskid) == "SUCCESS"
    crawled, finished = [], []
    for _ in range(20):
        sent = h.sent()
        finished += [t for t in sent if t.taskid == "on_finished"]
        follows = [t for t in sent if t.url in ("http://a/2", "http://a/3")]
        assert not (finished and follows), "on_finished was sent before every follow was crawled"
        crawled += follows
        h.answer_all(follows + [t for t in sent if t.taskid == "on_finished"])
        h.clock.advance(0.5)
        h.run()
    assert sorted(urls(crawled)) == ["http://a/2", "http://a/3"]          # both crawled, once
    assert h.taskdb.count("p", TaskStatus.ACTIVE) == 0 and len(finished) == 1


def test_on_finished_stored_by_a_commit_that_reported_a_lost_connection_is_still_sent(h, monkeypatch):
    """The same lost answer to a COMMIT, on the insert of on_finished: the scheduler must send it
    again, not leave it ACTIVE in taskdb and nowhere else (a long PostgreSQL outage test once
    ended with exactly that task ACTIVE)."""
    h.add_project()
    h.start("p")
    task = h.crawl("http://a/1")
    real = h.taskdb.insert_many
    state = {"lied": 0}

    def commit_then_fail(tasks, *args, **kwargs):
        out = real(tasks, *args, **kwargs)
        if not state["lied"] and any(t.taskid == "on_finished" for t in tasks):
            state["lied"] += 1
            raise StorageUnavailable("taskdb insert_many failed: consuming input failed (test)")
        return out

    monkeypatch.setattr(h.taskdb, "insert_many", commit_then_fail)
    finished = []
    for _ in range(20):
        h.scheduler._loop_step()
        h.scheduler._retry_in = 0.0
        h.clock.advance(0.5)
        sent = [t for t in h.sent() if t.taskid == "on_finished"]
        finished += sent
        h.answer_all(sent)
    assert state["lied"] == 1 and h.status(task.taskid) == "SUCCESS"
    assert len(finished) == 1, "on_finished was never sent (it stayed ACTIVE in taskdb only)"
    for _ in range(3):
        h.run()
    assert h.taskdb.count("p", TaskStatus.ACTIVE) == 0


def test_a_failed_combined_batch_is_stored_apart(h, monkeypatch, caplog):
    h.add_project()
    h.start("p")
    task = _page_done_with_links(h)
    calls = _record_writes(h, monkeypatch, fail_combined=True)
    with caplog.at_level(logging.WARNING):
        h.run()
    assert calls == [(2, 1), (0, 1), (2, 0)]
    assert "storing them apart" in caplog.text
    assert h.status(task.taskid) == "SUCCESS" and h.taskdb.count("p") == 3
    assert sorted(urls(h.sent_normal())) == ["http://a/2", "http://a/3"]


def test_plain_repeats_of_known_tasks_stop_before_the_dedupe(h, monkeypatch):
    """Only a plain request (no force_update, cancel, itag or age) for a known taskid stops early."""
    h.add_project()
    h.start("p")
    done = h.crawl("http://a/1")
    assert done.taskid in h.scheduler.projects["p"].known
    seen: list[tuple[str, Schedule]] = []
    on_requests = h.scheduler._on_requests

    def recording(p, tasks, now):
        seen.extend((t.url, t.schedule) for t in tasks)
        return on_requests(p, tasks, now)

    monkeypatch.setattr(h.scheduler, "_on_requests", recording)
    h.clock.advance(10)
    for schedule in ({}, {"priority": 5, "retries": 1, "exetime": 3.0, "auto_recrawl": True}, {"force_update": True},
                     {"itag": "v2"}, {"age": 5}, {"cancel": True}):
        h.new("http://a/1", **schedule)
    h.new("http://a/2")
    h.run()
    assert [url for url, _ in seen] == ["http://a/1"] * 4 + ["http://a/2"]
    assert [bool(s.force_update or s.itag or s.age >= 0 or s.cancel) for _, s in seen[:4]] == [True] * 4
    assert h.status(done.taskid) == "BAD"               # the cancel came last
    assert urls(h.sent_normal()) == ["http://a/2"]


def test_known_taskids_forgotten_mid_batch_are_not_crawled_again(tmp_path):
    """The known set may be emptied while a batch is checked; a plain repeat it held stays ignored."""
    h = Harness(tmp_path, known_taskids=2)
    try:
        h.add_project()
        h.start("p")
        a, b = h.crawl("http://a/"), h.crawl("http://b/")
        c = h.crawl("http://c/")                        # three known: the set was emptied
        d = h.crawl("http://d/")
        known = h.scheduler.projects["p"].known
        assert d.taskid in known and a.taskid not in known and b.taskid not in known
        now = h.clock()
        repeats = [Task.create("p", t.url) for t in (a, b, d)]
        h.scheduler._on_requests(h.scheduler.projects["p"], repeats, now)   # a, b looked up: the set fills up
        h.scheduler._flush()
        h.run()
        assert h.sent_normal() == []
        assert [h.status(t.taskid) for t in (a, b, c, d)] == ["SUCCESS"] * 4
        assert h.scheduler.counters("p")["p"]["all"]["pending"] == 0
    finally:
        h.close()


def test_force_update_restarts_and_is_postponed_while_in_flight(h, caplog):
    h.add_project()
    h.start("p")
    task = h.crawl("http://a/1")
    h.newtask_queue.put(Task.create("p", "http://a/1", fetch=Fetch(headers={"v": "2"}),
                                    schedule=Schedule(force_update=True)))
    h.run()
    (inflight,) = h.sent_normal()
    assert inflight.fetch.headers == {"v": "2"}
    h.newtask_queue.put(Task.create("p", "http://a/1", fetch=Fetch(headers={"v": "3"}),
                                    schedule=Schedule(force_update=True)))
    with caplog.at_level(logging.INFO):
        h.run()
    assert "postponed" in caplog.text
    assert h.sent_normal() == []
    assert h.db(task.taskid)["fetch"]["headers"] == {"v": "3"}     # stored at once: see the restart test
    h.answer(inflight)
    h.run()
    (again,) = h.sent_normal()
    assert again.fetch.headers == {"v": "3"}
    h.answer(again)
    h.run()
    assert h.status(task.taskid) == "SUCCESS" and h.sent_normal() == []


def test_a_postponed_request_survives_a_scheduler_restart(h):
    h.add_project()
    h.start("p")
    task = h.crawl("http://a/1")
    h.newtask_queue.put(Task.create("p", "http://a/1", fetch=Fetch(headers={"v": "2"}),
                                    schedule=Schedule(force_update=True)))
    h.run()
    (inflight,) = h.sent_normal()
    h.newtask_queue.put(Task.create("p", "http://a/1", fetch=Fetch(headers={"v": "3"}),
                                    schedule=Schedule(force_update=True)))
    h.run()
    assert h.sent_normal() == []
    h.scheduler.shutdown()
    h.new_scheduler()             # the scheduler restarts; the fetch in flight is answered to no one
    h.start("p")
    h.clock.advance(1)
    h.run()
    (again,) = h.sent_normal()
    assert again.taskid == task.taskid and again.fetch.headers == {"v": "3"}
    h.answer(inflight)            # the old fetch's answer reaches the new scheduler: ignored
    h.answer(again)
    h.run()
    assert h.status(task.taskid) == "SUCCESS" and h.taskdb.count("p") == 1


def test_cancel_marks_bad(h):
    h.add_project(rate=1, burst=1)
    h.start("p")
    h.new("http://a/1")
    h.new("http://a/2")
    h.run()
    assert len(h.sent_normal()) == 1
    queued = Task.create("p", "http://a/2")
    h.new("http://a/2", cancel=True)
    h.new("http://a/never-seen", cancel=True)
    h.run()
    assert h.status(queued.taskid) == "BAD"
    assert h.db(Task.create("p", "http://a/never-seen").taskid) is None
    h.clock.advance(10)
    h.run()
    assert h.sent_normal() == []                   # the cancelled task left the queue
    assert h.scheduler.counters("p")["p"]["all"]["pending"] == 1


def test_cancel_of_task_in_flight_waits_for_it(h):
    h.add_project()
    h.start("p")
    h.new("http://a/1")
    h.run()
    (inflight,) = h.sent_normal()
    h.new("http://a/1", cancel=True)
    h.run()
    assert h.status(inflight.taskid) == "ACTIVE"
    h.answer(inflight, ok=False)
    h.run()
    assert h.status(inflight.taskid) == "BAD"
    h.clock.advance(10_000)
    h.run()
    assert h.sent_normal() == []


def test_inqueue_limit(tmp_path, caplog):
    h = Harness(tmp_path, inqueue_limit=3)
    h.add_project(rate=1, burst=1)
    h.start("p")
    for i in range(5):
        h.new(f"http://a/{i}")
    with caplog.at_level(logging.WARNING):
        h.run()
    assert "inqueue limit" in caplog.text
    assert h.taskdb.count("p") == 3
    (sent,) = h.sent_normal()
    h.answer(sent)
    h.run()
    h.new("http://a/9")
    h.run()
    assert h.taskdb.count("p") == 4
    h.close()


# ---------------------------------------------------------------------------------
# status packs

def test_auto_recrawl_requeues_at_age(h):
    h.add_project()
    h.start("p")
    task = h.crawl("http://a/1", auto_recrawl=True, age=60)
    row = h.db(task.taskid)
    assert row["status"] == "ACTIVE" and row["schedule"]["exetime"] == h.clock() + 60
    h.clock.advance(59)
    h.run()
    assert h.sent_normal() == []
    h.clock.advance(1)
    h.run()
    assert urls(h.sent_normal()) == ["http://a/1"]
    assert h.scheduler.counters("p")["p"]["all"]["pending"] == 1


def test_retries_follow_the_delay_table_then_fail(h):
    h.add_project()
    h.start("p")
    task = h.new("http://a/1", retries=3)
    delays = []
    for attempt in range(4):
        h.run()
        (sent,) = h.sent_normal()
        h.answer(sent, ok=False, exception="boom")
        h.run()
        row = h.db(task.taskid)
        if attempt < 3:
            assert row["status"] == "ACTIVE" and row["schedule"]["retried"] == attempt + 1
            delay = row["schedule"]["exetime"] - h.clock()
            delays.append(delay)
            h.clock.advance(delay - 1)
            h.run()
            assert h.sent_normal() == []
            h.clock.advance(1)
    assert delays == [30.0, 3600.0, 6 * 3600.0]
    assert h.status(task.taskid) == "FAILED"
    counters = h.scheduler.counters("p")["p"]
    assert counters["1d"]["retry"] == 3 and counters["1d"]["failed"] == 1 and counters["all"]["pending"] == 0


def test_script_retry_delay_and_age_cap(h):
    h.add_project()
    h.start("p", info={"retry_delay": {"0": 5, "": 7}})
    task = h.new("http://a/1", retries=5)
    h.run()
    h.answer_all(h.sent_normal(), ok=False)
    h.run()
    assert h.db(task.taskid)["schedule"]["exetime"] == h.clock() + 5
    h.clock.advance(5)
    h.run()
    h.answer_all(h.sent_normal(), ok=False)
    h.run()
    assert h.db(task.taskid)["schedule"]["exetime"] == h.clock() + 7
    t2 = h.new("http://a/2", age=3, retries=5)
    h.clock.advance(10)
    h.run()
    h.answer_all(h.sent_normal(), ok=False)
    h.run()
    assert h.db(t2.taskid)["schedule"]["exetime"] == h.clock() + 3


def test_special_task_without_retries_fails_at_once(h):
    h.add_project()
    h.start("p")
    h.scheduler.run_project("p")
    h.run()
    (start,) = h.sent_normal()
    assert start.taskid == "on_start" and start.schedule.priority == 9
    h.answer(start, ok=False)
    h.run()
    assert h.status("on_start") == "FAILED"


# ---------------------------------------------------------------------------------
# pause

def test_pause_after_failures_then_trial(tmp_path):
    h = Harness(tmp_path, fail_pause_num=4, pause_time=300, unpause_check_num=2, loop_limit=10)
    h.add_project()
    h.start("p")
    for i in range(40):
        h.new(f"http://a/{i}", retries=0)
    h.run()
    first = h.sent_normal()
    h.answer_all(first[:4], ok=False)
    h.run()
    assert h.scheduler.paused("p")
    assert h.sent_normal() == []
    h.answer_all(first[4:], ok=True)               # late results of tasks sent before the pause
    h.run()
    assert not h.scheduler.paused("p")
    batch = h.sent_normal()
    assert len(batch) == 10
    h.answer_all(batch[:4], ok=False)
    h.run()
    assert h.scheduler.paused("p")
    h.answer_all(batch[4:], ok=False)
    h.clock.advance(299)
    h.run()
    assert h.sent_normal() == [] and h.scheduler.pause_status()["p"]["state"] == "paused"
    h.clock.advance(2)
    h.run()
    trial = h.sent_normal()
    assert len(trial) == 2 and h.scheduler.pause_status()["p"]["state"] == "checking"
    h.run()
    assert h.sent_normal() == []
    h.answer_all(trial, ok=False)                  # the trial fails: paused again
    h.run()
    assert h.scheduler.pause_status()["p"]["state"] == "paused"
    h.clock.advance(301)
    h.run()
    trial = h.sent_normal()
    assert len(trial) == 2
    h.answer(trial[0], ok=True)
    h.run()
    assert not h.scheduler.paused("p")
    assert len(h.sent_normal()) > 2
    h.close()


def test_script_change_unpauses(tmp_path):
    h = Harness(tmp_path, fail_pause_num=2)
    h.add_project()
    h.start("p")
    for i in range(5):
        h.new(f"http://a/{i}", retries=0)
    h.run()
    h.answer_all(h.sent_normal()[:2], ok=False)
    h.run()
    assert h.scheduler.paused("p")
    h.update_project("p", script="fixed")
    h.run()
    h.answer_info("p")
    h.run()
    assert not h.scheduler.paused("p")
    h.close()
