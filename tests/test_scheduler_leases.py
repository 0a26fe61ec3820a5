"""Persisted leases: a restarted scheduler does not send again the tasks still in flight.

A scheduler on the local Redis (reliable queues) and a sqlite taskdb file dispatches tasks,
then is dropped without any shutdown (as kill -9 leaves it: only what its passes wrote is
stored); a new scheduler on the same taskdb and queues takes the status packs of the
original dispatch and sends nothing again until the leases run out. On memory queues (not
reliable) what was in flight is sent again at once, as before, and no lease is written.
Then the ``spiderflow scheduler`` command itself, killed with SIGKILL and started again.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import sqlalchemy as sa
from conftest import require_service
from test_scheduler import Harness
from test_scheduler_lock import stop

from spiderflow.exceptions import StorageError, StorageUnavailable
from spiderflow.message import StatusPack, Task, Track
from spiderflow.queues import connect_queue
from spiderflow.storage import connect_projectdb
from spiderflow.storage.taskdb import LEASES

pytestmark = pytest.mark.timeout(120)

N = 20
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIAL = ("_on_get_info", "_on_cronjob", "_on_message")


@pytest.fixture
def redis_url():
    """This test's redis queue URL (a key prefix of its own, deleted afterwards)."""
    import redis
    base = require_service("redis")
    prefix = f"sftest-{uuid.uuid4().hex[:10]}"
    yield f"{base}?prefix={prefix}"
    client = redis.Redis.from_url(base)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def on_redis(h: Harness, url: str) -> Harness:
    """*h* with redis queues, and a scheduler on them."""
    h.newtask_queue = connect_queue(url, "newtask_queue")
    h.status_queue = connect_queue(url, "status_queue")
    h.out_queue = connect_queue(url, "scheduler2fetcher")
    h.new_scheduler()
    return h


def restart(h: Harness):
    """Drop the scheduler as kill -9 would (no shutdown, nothing flushed) and make a new one."""
    old = h.scheduler
    old._stopping.set()
    return h.new_scheduler()


def start_project(h: Harness) -> None:
    h.add_project()
    h.start("p")
    assert not h.sent()


def dispatch(h: Harness, n: int = N) -> list[Task]:
    tasks = [h.new(f"http://a/{i}") for i in range(n)]
    h.run()
    assert h.out_queue.qsize() == n
    return tasks


def take(h: Harness) -> tuple[list[Task], list[Task]]:
    """Everything in the out queue (as fetchers would take it): (normal tasks, special tasks)."""
    got = h.out_queue.get_many(10 ** 6, 0.5 if h.out_queue.qsize() else 0)
    return [t for t in got if t.taskid not in SPECIAL], [t for t in got if t.taskid in SPECIAL]


def restart_and_answer_info(h: Harness) -> None:
    """Restart the scheduler (as after kill -9) and answer the _on_get_info it sends first."""
    restart(h)
    h.run()
    _, specials = take(h)
    answer_infos(h, specials)
    h.run(2)


def answer_infos(h: Harness, specials: list[Task]) -> None:
    for t in specials:
        if t.taskid == "_on_get_info":
            h.answer_info(t.project)


def lease_count(h: Harness) -> int:
    with h.taskdb.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(LEASES)).scalar_one()


def done_lines(caplog, taskid: str) -> int:
    return sum(1 for r in caplog.records if r.getMessage().startswith(f"task done p:{taskid} "))


def ignored(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "ignored status pack" in r.getMessage()]


def test_restarted_scheduler_waits_for_the_tasks_in_flight(tmp_path, redis_url, caplog):
    caplog.set_level(logging.INFO, logger="spiderflow")
    h = on_redis(Harness(tmp_path), redis_url)
    start_project(h)
    tasks = dispatch(h)
    assert lease_count(h) == N             # stored by the pass that sent them
    h.clock.advance(5)
    restart(h)
    h.run(3)
    h.clock.advance(1)
    h.run()
    sent, specials = take(h)
    # exactly the N of the first dispatch: none was sent again
    assert sorted(t.taskid for t in sent) == sorted(t.taskid for t in tasks)
    assert [t.taskid for t in specials] == ["_on_get_info"]
    assert "project p: 20 tasks still in flight under a lease" in caplog.text
    answer_infos(h, specials)
    h.run()
    # the processors answer the original dispatch
    h.clock.advance(1)
    h.answer_all(sent)
    h.run(2)
    for t in tasks:
        assert h.db(t.taskid)["status"] == "SUCCESS"
        assert done_lines(caplog, t.taskid) == 1
    assert not ignored(caplog)
    h.clock.advance(700)
    h.run(3)
    assert take(h) == ([], [])             # nothing is sent again, even once the leases ran out
    h.close()


def test_restarted_scheduler_sends_again_what_was_answered_only_in_part(tmp_path, redis_url, caplog):
    """Answered before the kill: done (not ACTIVE), or retried (a later updatetime voids the
    lease): only the rest is waited for."""
    caplog.set_level(logging.INFO, logger="spiderflow")
    h = on_redis(Harness(tmp_path, retry_delay=((0, 30.0),)), redis_url)
    start_project(h)
    tasks = dispatch(h, 4)
    sent, _ = take(h)
    h.clock.advance(1)
    h.answer(sent[0], ok=True)
    h.answer(sent[1], ok=False)            # a retry in 30s: still ACTIVE, written after the dispatch
    h.run()
    restart(h)
    h.run()
    _, specials = take(h)
    answer_infos(h, specials)
    h.run()
    assert "project p: 2 tasks still in flight under a lease" in caplog.text
    h.clock.advance(31)
    h.run(2)
    again, _ = take(h)
    assert [t.taskid for t in again] == [sent[1].taskid]     # the retry, when it is due
    h.clock.advance(1)
    h.answer_all([again[0], sent[2], sent[3]])
    h.run(2)
    assert all(h.db(t.taskid)["status"] == "SUCCESS" for t in tasks)
    assert not ignored(caplog)
    h.close()


def test_leases_that_ran_out_are_sent_again(tmp_path, redis_url):
    h = on_redis(Harness(tmp_path, lease_time=60), redis_url)
    start_project(h)
    tasks = dispatch(h)
    take(h)                                # the fetchers took them, and died with them
    # the scheduler restarts after the leases ended: every ACTIVE task is loaded and sent
    h.clock.advance(61)
    restart_and_answer_info(h)
    again, _ = take(h)
    assert sorted(t.taskid for t in again) == sorted(t.taskid for t in tasks)
    # restarted within the leases: they are sent again when the leases end, not before
    h.clock.advance(1)
    restart_and_answer_info(h)
    assert take(h) == ([], [])
    h.clock.advance(59)
    h.run(2)
    again, _ = take(h)
    assert sorted(t.taskid for t in again) == sorted(t.taskid for t in tasks)
    assert lease_count(h) == N             # the new leases overwrote the old
    h.close()


def test_memory_queues_send_the_tasks_in_flight_again_at_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="spiderflow")
    h = Harness(tmp_path)
    assert not h.scheduler._leases_on
    start_project(h)
    tasks = dispatch(h)
    sent, _ = take(h)
    assert lease_count(h) == 0             # nothing written on the hot path
    h.clock.advance(1)
    restart_and_answer_info(h)
    again, _ = take(h)
    assert sorted(t.taskid for t in again) == sorted(t.taskid for t in tasks)
    assert "under a lease" not in caplog.text
    h.close()


def test_lease_write_failures(tmp_path, redis_url, monkeypatch, caplog):
    """An outage keeps the leases for the next pass; any other failure drops them, and logs it."""
    h = on_redis(Harness(tmp_path), redis_url)
    start_project(h)
    real = h.taskdb.save_leases
    calls = []

    def away(rows):
        calls.append(len(rows))
        raise StorageUnavailable("taskdb save_leases failed: the server is away")

    monkeypatch.setattr(h.taskdb, "save_leases", away)
    for i in range(3):
        h.new(f"http://a/{i}")
    h.scheduler._loop_step()               # a pass of run(): the outage stops it, with a backoff
    assert h.out_queue.qsize() == 3 and calls == [3]
    assert h.scheduler._retry_in > 0
    assert len(h.scheduler._leases) == 3    # kept for the retry
    monkeypatch.setattr(h.taskdb, "save_leases", real)
    h.clock.advance(1)
    h.run()
    assert not h.scheduler._leases and lease_count(h) == 3

    def bad(rows):
        raise StorageError("taskdb save_leases failed: bad data")

    monkeypatch.setattr(h.taskdb, "save_leases", bad)
    caplog.set_level(logging.ERROR, logger="spiderflow")
    h.new("http://b/1")
    h.run()
    assert len(h.scheduler._leases) == 1   # stored at most once a second
    h.clock.advance(1)
    h.run()
    assert not h.scheduler._leases
    assert "cannot store the leases of 1 tasks in flight" in caplog.text
    h.close()


def test_expired_leases_are_purged_and_a_deleted_project_loses_its_leases(tmp_path, redis_url):
    h = on_redis(Harness(tmp_path, lease_time=60, delete_time=10), redis_url)
    t0 = h.clock()
    h.taskdb.save_leases([("gone", "x", t0 - 1000, t0 - 900)])
    start_project(h)
    assert lease_count(h) == 0             # purged at the first pass
    dispatch(h, 5)
    h.taskdb.save_leases([("gone", "y", t0, t0 + 1)])
    h.clock.advance(30)
    h.run()
    assert lease_count(h) == 6             # the next purge is due 60 s after the first
    h.clock.advance(31)
    h.run()                                # the leases ran out: sent again, with new leases; then the purge
    assert lease_count(h) == 5 and len(take(h)[0]) == 10
    assert {row[1] for row in h.taskdb.leases("p", h.clock())} == {h.clock() + 60}
    h.update_project("p", group="delete", status="STOP")
    h.run()
    h.clock.advance(11)
    h.run()
    assert "p" not in h.scheduler.projects
    assert lease_count(h) == 0
    h.close()


# -- the command, killed with SIGKILL ---------------------------------------------------------

def _wait(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _scheduler(tmp_path, name: str, url: str) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "spiderflow.cli", "--data-dir", str(tmp_path / "data"),
                             "scheduler", "--queue", url, "--scheduler-port", "0"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_scheduler_command_killed_and_started_again_sends_nothing_twice(tmp_path, redis_url):
    (tmp_path / "data").mkdir()
    projectdb = connect_projectdb(f"sqlite:///{tmp_path}/data/project.db")
    projectdb.insert("p", group="", status="RUNNING", script="script", comments="", rate=1000, burst=1000,
                     updatetime=time.time())
    projectdb.close()
    newtask = connect_queue(redis_url, "newtask_queue")
    status = connect_queue(redis_url, "status_queue")
    out = connect_queue(redis_url, "scheduler2fetcher")
    log = tmp_path / "first.log"
    first = _scheduler(tmp_path, "first", redis_url)
    procs = [first]
    try:
        _wait(lambda: "scheduler started" in log.read_text(), 30, "the scheduler to start")
        infos = out.get_many(10, 20)
        assert [t.taskid for t in infos] == ["_on_get_info"]
        status.put(StatusPack(taskid="_on_get_info", project="p", url=infos[0].url,
                              track=Track(process={"ok": True, "save": {}})))
        newtask.put_many([Task.create("p", f"http://a/{i}") for i in range(N)])
        _wait(lambda: out.qsize() >= N, 30, "the dispatch")
        time.sleep(0.5)                      # its pass ends: the leases are stored
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        assert out.qsize() == N
        second = _scheduler(tmp_path, "second", redis_url)
        procs.append(second)
        log = tmp_path / "second.log"
        _wait(lambda: "under a lease" in log.read_text(), 60, "the restarted scheduler to load its leases")
        assert f"project p: {N} tasks still in flight under a lease" in log.read_text()
        time.sleep(2)                        # passes of the new scheduler (its loop interval is < 1 s)
        assert out.qsize() == N + 1          # the N of the first, and the new scheduler's _on_get_info
        got = out.get_many(10 ** 6, 1)
        tasks = [t for t in got if t.taskid not in SPECIAL]
        assert len(tasks) == len({t.taskid for t in tasks}) == N
        status.put(StatusPack(taskid="_on_get_info", project="p", url="data:,_on_get_info",
                              track=Track(process={"ok": True, "save": {}})))
        for t in tasks:
            status.put(StatusPack(taskid=t.taskid, project="p", url=t.url,
                                  track=Track(fetch={"ok": True}, process={"ok": True})))
        _wait(lambda: log.read_text().count("task done p:") >= N, 30, "the status packs")
        time.sleep(1)
        text = log.read_text()
        assert text.count("task done p:") == N and "ignored status pack" not in text
        assert out.qsize() == 0
    finally:
        for proc in procs:
            stop(proc)
        for q in (newtask, status, out):
            q.close()


def test_a_redis_that_lost_its_data_gets_the_tasks_in_flight_at_once(tmp_path, redis_url, caplog):
    """Redis restarted without its data while the scheduler was down: the out queue's mark is
    gone with the tasks, so the restarted scheduler does not wait for their leases."""
    import redis
    caplog.set_level(logging.INFO, logger="spiderflow")
    h = on_redis(Harness(tmp_path), redis_url)
    start_project(h)
    tasks = dispatch(h)
    assert h.out_queue.marked()
    client = redis.Redis.from_url(redis_url.split("?")[0])
    prefix = redis_url.split("prefix=")[1]
    client.delete(*client.scan_iter(match=f"{prefix}:*", count=1000))   # as a restart without data leaves it
    h.clock.advance(5)
    restart(h)
    h.run(3)
    sent, specials = take(h)
    answer_infos(h, specials)
    h.run(2)
    sent += take(h)[0]
    assert sorted(t.taskid for t in sent) == sorted(t.taskid for t in tasks)   # at once, not after 600 s
    assert "holds no mark of the earlier scheduler" in caplog.text
    assert h.out_queue.marked()             # the next restart may trust its leases again
    h.close()
