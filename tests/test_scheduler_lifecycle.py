"""Scheduler lifecycle: special tasks, delete, counters file, restart, bad input, operations."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

import pytest
from test_scheduler import Harness, urls

from spiderflow.message import Fetch, ProjectStatus, ResultPack, StatusPack, Task, TaskStatus, Track, special_task
from spiderflow.queues import connect_queue
from spiderflow.scheduler import ThreadedScheduler


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()

# ---------------------------------------------------------------------------------
# special tasks

def test_on_finished_fires_once_when_drained(h):
    h.add_project()
    h.start("p")
    h.run(3)
    assert h.sent() == []                          # nothing ran yet: no on_finished
    h.scheduler.run_project("p")
    h.run()
    (start,) = h.sent_normal()
    h.new("http://a/1")                            # on_start's follow-up, sent before its status
    h.answer(start)
    h.run()
    (page,) = h.sent_normal()
    h.answer(page)
    h.run()
    assert h.sent_normal() == []                   # drained, but wait finished_delay
    h.clock.advance(1)
    h.run()
    h.run()
    (finished,) = h.sent_normal()
    assert finished.taskid == "on_finished" and finished.process.callback == "on_finished"
    h.answer(finished)
    h.clock.advance(10)
    h.run(3)
    assert h.sent_normal() == []                   # on_finished does not trigger itself
    h.new("http://a/2")
    h.run()
    h.answer_all(h.sent_normal())
    h.run()
    h.clock.advance(2)
    h.run(2)
    assert [t.taskid for t in h.sent_normal()] == ["on_finished"]


def test_on_finished_waits_for_retries(h):
    h.add_project()
    h.start("p")
    h.new("http://a/1")
    h.run()
    h.answer_all(h.sent_normal(), ok=False)
    h.run()
    h.clock.advance(5)
    h.run(2)
    assert h.sent_normal() == []
    h.clock.advance(30)
    h.run()
    h.answer_all(h.sent_normal(), ok=True)
    h.run()
    h.clock.advance(2)
    h.run(2)
    assert [t.taskid for t in h.sent_normal()] == ["on_finished"]


def test_cron_ticks_every_min_tick_catch_up_and_never_twice(h):
    h.add_project()
    h.clock.t = 1_700_000_000.0                    # a multiple of 10
    h.start("p", info={"min_tick": 10})

    def ticks():
        return [t.fetch.save["tick"] for t in h.sent() if t.taskid == "_on_cronjob"]

    h.clock.advance(9)
    h.run()
    assert ticks() == []
    h.clock.advance(1)
    h.run()
    h.run()
    assert ticks() == [1_700_000_010]
    h.clock.advance(35)                            # a stalled loop: 20, 30, 40 missed
    h.run()
    assert ticks() == [1_700_000_020, 1_700_000_030, 1_700_000_040]
    h.run()
    h.clock.advance(4)
    h.run()
    assert ticks() == []
    h.clock.advance(1)
    h.run()
    assert ticks() == [1_700_000_050]
    for t in h.sent():
        pass
    h.status_queue.put(StatusPack(taskid="_on_cronjob", project="p", url="data:,_on_cronjob",
                                  track=Track(process={"ok": True})))
    h.run()                                        # a cron answer is accepted quietly
    h.update_project("p", status=ProjectStatus.STOP)
    h.run()
    h.clock.advance(100)
    h.run()
    h.update_project("p", status=ProjectStatus.RUNNING)
    h.run()
    assert ticks() == []                           # no catch-up for time spent stopped


def test_send_message_from_control_and_from_newtask_queue(h):
    h.add_project()
    h.add_project("other")
    h.start("p", "other")
    h.scheduler.send_message("p", {"hello": 1})
    h.newtask_queue.put(special_task("other", "_on_message", save=["from", "script"]))
    h.run()
    msgs = {t.project: t.fetch.save for t in h.sent() if t.taskid == "_on_message"}
    assert msgs == {"p": {"hello": 1}, "other": ["from", "script"]}
    with pytest.raises(KeyError):
        h.scheduler.send_message("nope", 1)
    assert h.taskdb.get("p", "_on_message") is None     # messages are not stored


# ---------------------------------------------------------------------------------
# delete

def test_project_in_delete_group_is_dropped_after_delete_time(h):
    h.add_project("doomed", group="old delete", status="STOP")
    h.add_project("kept", group="delete", status="RUNNING")
    h.start("kept")
    h.new("http://d/1", project="doomed")
    h.run()
    h.resultdb.upsert(ResultPack(project="doomed", taskid="t", url="http://d/1", result={"a": 1}))
    h.clock.advance(h.settings.delete_time - 10)
    h.run()
    assert "doomed" in h.scheduler.projects
    h.clock.advance(20)
    h.run()
    assert "doomed" not in h.scheduler.projects and "kept" in h.scheduler.projects
    assert h.projectdb.get("doomed") is None
    assert h.taskdb.count("doomed") == 0 and h.resultdb.count("doomed") == 0
    assert "doomed" not in h.scheduler.counters()


# ---------------------------------------------------------------------------------
# counters file, restart

def test_counters_saved_reloaded_and_corrupt_file_replaced(tmp_path, caplog):
    h = Harness(tmp_path, counter_dump_interval=60)
    h.add_project()
    h.start("p")
    h.crawl("http://a/1")
    h.clock.advance(61)
    h.run()
    path = os.path.join(h.settings.data_dir, "scheduler.counters.json")
    assert json.load(open(path))["all"]["p"]["success"] == 1
    h.new_scheduler()
    assert h.scheduler.counters("p")["p"]["all"]["success"] == 1
    with open(path, "w") as fh:
        fh.write("{corrupt")
    with caplog.at_level(logging.ERROR):
        h.new_scheduler()
    assert "corrupt" in caplog.text
    assert json.load(open(path))["version"] == 1 and os.path.exists(path + ".corrupt")
    h.run()                                       # totals are rebuilt from taskdb
    assert h.scheduler.counters("p")["p"]["all"]["success"] == 1
    h.close()


def _assert_nested(counters: dict) -> None:
    for project, windows in counters.items():
        for event in ("pending", "success", "retry", "failed"):
            values = [windows[w][event] for w in ("all", "1d", "1h", "5m")]
            assert values == sorted(values, reverse=True), (project, event, values)


def test_a_fresh_crawl_shows_no_more_in_5m_than_in_all(h):
    h.add_project()
    h.start("p")
    for i in range(10):
        h.new(f"http://a/{i}", retries=1)
    h.run()
    sent = h.sent_normal()
    h.answer_all(sent[:8])
    h.answer(sent[8], ok=False)
    h.run()
    counters = h.scheduler.counters("p")
    _assert_nested(counters)
    from spiderflow.webui.dashboard import progress
    assert [progress(counters["p"][w])["total"] for w in ("all", "1d", "1h", "5m")] == [11] * 4   # the bars' numbers
    for w in ("5m", "all"):    # one task is one count, in every window
        c = counters["p"][w]
        assert (c["pending"], c["success"], c["retry"], c["failed"]) == (2, 8, 1, 0), w


def test_totals_come_from_taskdb_even_over_a_stale_counter_file(tmp_path):
    h = Harness(tmp_path, counter_dump_interval=60)
    h.add_project()
    h.start("p")
    for i in range(10):
        h.new(f"http://a/{i}")
    h.clock.advance(61)
    h.run()                                       # stored, dispatched; counters saved: 10 pending
    h.answer_all(h.sent_normal())
    h.run()                                       # all done, not saved yet
    h.new_scheduler()                             # a crash: the counter file is a minute behind taskdb
    h.run()
    counters = h.scheduler.counters("p")
    assert counters["p"]["all"]["pending"] == 0 and counters["p"]["all"]["success"] == 10
    _assert_nested(counters)
    h.close()


def test_counter_file_can_be_moved_or_turned_off(tmp_path):
    h = Harness(tmp_path, scheduler_kwargs={"counter_file": None})
    h.add_project()
    h.start("p")
    h.scheduler.shutdown()
    assert not os.path.exists(h.settings.data_dir)
    path = str(tmp_path / "elsewhere" / "c.json")
    h.scheduler_kwargs = {"counter_file": path}
    h.new_scheduler().shutdown()
    assert json.load(open(path))["version"] == 1
    h.close()


def test_restart_recovers_every_active_task(h):
    h.add_project(rate=3, burst=3)
    h.start("p")
    for i in range(10):
        h.new(f"http://a/{i}")
    h.new("http://a/later", exetime=h.clock() + 50)
    h.run()
    inflight = h.sent_normal()
    assert len(inflight) == 3
    h.answer(inflight[0])
    h.run()
    h.scheduler.shutdown()
    h.new_scheduler()                             # a crash: the in-flight tasks are in taskdb only
    h.add_project("q")
    h.start("p", "q")
    got = []
    for _ in range(20):
        h.clock.advance(5)
        h.run()
        got += h.sent_normal()
    assert sorted(urls(got)) == sorted(f"http://a/{i}" for i in range(1, 10)) + ["http://a/later"]
    assert h.scheduler.size() == 10


def test_stop_flushes_and_dumps(h):
    h.add_project()
    h.start("p")
    h.crawl("http://a/1")

    async def main():
        task = asyncio.create_task(h.scheduler.run())
        await asyncio.sleep(0.05)
        h.scheduler.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    path = os.path.join(h.settings.data_dir, "scheduler.counters.json")
    assert json.load(open(path))["all"]["p"]["success"] == 1


def test_burst_run_exits_when_idle(h):
    h.add_project()
    h.start("p")
    asyncio.run(asyncio.wait_for(h.scheduler.run(burst=True), 5))


# ---------------------------------------------------------------------------------
# bad input

def test_malformed_messages_are_logged_and_dropped(h, caplog):
    h.add_project()
    h.start("p")
    good = Task.create("p", "http://a/good")
    bad_types = Task.create("p", "http://a/x")
    bad_types.schedule.priority = "high"
    no_url = Task.create("p", "http://a/y")
    no_url.url = None
    huge_id = Task.create("p", "http://a/z", taskid="x" * 300)
    bad_name = Task(taskid="t", project="../etc", url="http://a/w")
    for msg in [
        {"project": "p"},                                  # missing url
        {"project": "p", "url": "http://a/1", "schedule": {"priority": "x"}},
        {"project": "nope", "url": "http://a/2"},          # unknown project
        {"project": "../etc", "url": "http://a/3"},        # invalid project name
        Task.create("p", "http://a/4").to_dict() | {"status": "WHATEVER"},
        "raw garbage", b"\x00\x01", 42, None, 3.5, {"a": object()},
        bad_types, no_url, huge_id, bad_name,
        [good, "junk in a list"],
    ]:
        h.newtask_queue.put(msg)
    for msg in ["garbage", None, {"taskid": "t"}, StatusPack(taskid="t", project="p", url="u", track=None),
                {"taskid": "t", "project": "p", "url": "u", "track": {"process": "ok"}}]:
        h.status_queue.put(msg)
    with caplog.at_level(logging.ERROR):
        h.run()
    assert caplog.text.count("dropping") >= 16
    assert urls(h.sent_normal()) == ["http://a/good"]
    assert h.taskdb.count("p") == 1
    h.new("http://a/after")
    h.run()
    assert urls(h.sent_normal()) == ["http://a/after"]


def test_unstorable_task_is_dropped_and_batch_goes_on(h, caplog):
    h.add_project()
    h.start("p")
    odd = Task.create("p", "http://a/odd", fetch=Fetch(save={1, 2}))   # a set cannot be stored
    h.newtask_queue.put(odd)
    h.new("http://a/ok")
    with caplog.at_level(logging.ERROR):
        h.run()
    assert "cannot store" in caplog.text
    assert urls(h.sent_normal()) == ["http://a/ok"]


def test_new_project_is_found_without_waiting(h):
    h.add_project()
    h.start("p")
    h.add_project("fresh")
    h.new("http://f/1", project="fresh")
    h.run()
    assert [t.taskid for t in h.sent()] == ["_on_get_info"]
    assert h.status(Task.create("fresh", "http://f/1").taskid, "fresh") == "ACTIVE"


# ---------------------------------------------------------------------------------
# operations

def test_operations(h):
    h.add_project(rate=1, burst=1)
    h.start("p")
    assert h.scheduler.newtask({"project": "p", "url": "http://a/1"}) == 1
    assert h.scheduler.newtask([Task.create("p", "http://a/2"), {"project": "p", "url": "http://a/3"}]) == 2
    with pytest.raises(KeyError):
        h.scheduler.newtask({"project": "nope", "url": "http://x"})
    with pytest.raises(ValueError):
        h.scheduler.newtask({"project": "p"})
    h.run()
    assert len(h.sent_normal()) == 1
    assert h.scheduler.size() == 3
    assert h.scheduler.send_task(Task.create("p", "http://a/3"))     # bypasses the bucket
    (now,) = h.sent_normal()
    assert now.url == "http://a/3"
    assert not h.scheduler.send_task(Task.create("p", "http://a/3"))  # already in flight
    assert h.scheduler.send_task({"project": "p", "url": "http://new/1"})
    assert h.status(Task.create("p", "http://new/1").taskid) == "ACTIVE"
    recent = h.scheduler.active_tasks("p", limit=2)
    assert [e["url"] for e in recent] == ["http://new/1", "http://a/3"]
    assert recent[0]["event"] == "dispatched"
    assert len(h.scheduler.active_tasks()) >= 3
    assert h.scheduler.paused("p") is False
    assert h.scheduler.pause_status() == {"p": {"paused": False, "state": "running", "fail_streak": 0}}
    (info,) = h.scheduler.projects_info()
    assert info["name"] == "p" and info["processing"] == 3
    with pytest.raises(KeyError):
        h.scheduler.paused("nope")
    with pytest.raises(KeyError):
        h.scheduler.run_project("nope")


def test_threaded_scheduler(tmp_path):
    h = Harness(tmp_path, cls=ThreadedScheduler, loop_interval=0.01)
    h.add_project()
    h.run()
    h.answer_info("p")
    h.scheduler.start()
    try:
        for i in range(100):
            h.scheduler.newtask({"project": "p", "url": f"http://a/{i}"})
        got = []
        for _ in range(500):
            got += h.out_queue.get_many(1000, timeout=0.01)
            if len([t for t in got if t.taskid != "_on_get_info"]) >= 100:
                break
        assert len({t.url for t in got if t.taskid != "_on_get_info"}) == 100
    finally:
        assert h.scheduler.stop_and_join()
    h.close()


def test_through_serialized_queues(tmp_path, caplog):
    h = Harness(tmp_path)
    h.newtask_queue = connect_queue("multiprocessing://", "newtask_queue", 100)
    h.status_queue = connect_queue("multiprocessing://", "status_queue", 100)
    h.out_queue = connect_queue("multiprocessing://", "scheduler2fetcher", 100)
    h.new_scheduler()
    h.add_project()
    h.run()
    (info,) = h.out_queue.get_many(10, timeout=2)
    h.answer_info(info.project)
    h.newtask_queue.put((Task.create("p", "http://a/1"), Task.create("p", "http://a/2")))   # a tuple packs
    h.newtask_queue._put(b"\x93garbage", None)                  # bytes that are not a message
    deadline = time.monotonic() + 5
    sent = []
    with caplog.at_level(logging.ERROR):
        while len(sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)                                   # the queue feeder thread
            h.run()
            sent += h.out_queue.get_many(10)
    assert "malformed" in caplog.text
    assert sorted(urls(sent)) == ["http://a/1", "http://a/2"]
    for t in sent:
        h.status_queue.put(StatusPack(taskid=t.taskid, project="p", url=t.url, track=Track(process={"ok": True})))
    while h.taskdb.status_count("p")[TaskStatus.SUCCESS] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)                                       # the queue feeder thread
        h.run()
    assert h.taskdb.status_count("p")[TaskStatus.SUCCESS] == 2
    for q in (h.newtask_queue, h.status_queue, h.out_queue):
        q.close()
    h.close()
