"""What the scheduler's and the processor's control panels do to real components.

The scheduler is the one of ``tests/test_scheduler.py``'s Harness (sqlite files, memory
queues, a test clock); the processor runs real scripts. A revoke marks the tasks the
scheduler holds BAD at once (queued, in flight, or only in taskdb), a revoked task it meets
later is marked BAD at dispatch and never sent, and a project-wide revoke spares the tasks
accepted after it. A processor drops a revoked task unrun, drops the outcome of a callback
revoked with terminate while it ran, and applies a runtime time limit.
"""

from __future__ import annotations

import threading
import time

import pytest
from test_scheduler import Harness

from spiderflow.control import ControlWatch, connect_controldb, revokes_for
from spiderflow.control.panels import ProcessorPanel, make_panel
from spiderflow.control.scheduler_panel import SchedulerPanel
from spiderflow.message import FetchResult, Process, Task
from spiderflow.processor import Processor, ProjectManager
from spiderflow.queues import connect_queue
from spiderflow.settings import Settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    db = connect_controldb(f"sqlite:///{tmp_path}/project.db")
    harness.panel = SchedulerPanel("scheduler", harness.scheduler, harness.settings, name="s", node_id="s",
                                   watch=ControlWatch(db, clock=harness.clock))
    yield harness
    harness.panel.close()
    db.close()
    harness.close()


def revoke(h, taskids, project="p", **kw):
    entries = revokes_for(taskids, project, now=h.clock(), **kw)
    return h.panel.do_revoke(ttl=1.0, revokes=[e.to_dict() for e in entries])


def test_the_scheduler_marks_revoked_tasks_bad_wherever_they_are(h):
    h.add_project()
    h.start("p")
    flying = h.new("http://a/flying")
    h.run()
    assert [t.taskid for t in h.sent_normal()] == [flying.taskid]
    h.update_project("p", rate=0)           # from here on tasks wait in the queue
    h.run()
    queued = [h.new(f"http://a/q{i}") for i in range(3)]
    h.run()
    assert h.scheduler.projects["p"].queue.ready_count == 3 and h.sent_normal() == []

    reply = revoke(h, [flying.taskid, queued[0].taskid])
    assert reply["marked_bad"] == 2 and reply["ok"].startswith("tasks p:")
    assert not h.scheduler.projects["p"].queue.is_processing(flying.taskid)
    h.answer(flying)                        # its late status changes nothing
    h.run()
    assert h.status(flying.taskid) == "BAD" and h.status(queued[0].taskid) == "BAD"
    assert h.scheduler.size() == 2

    # every task of the project accepted so far; a later one is spared
    reply = revoke(h, [])
    assert reply["marked_bad"] == 2 and reply["ok"] == "tasks every task of p flagged as revoked"
    h.clock.advance(1)
    later = h.new("http://a/later")
    h.update_project("p", rate=1000)
    h.run()
    assert [t.taskid for t in h.sent_normal()] == [later.taskid]
    assert [h.status(t.taskid) for t in queued[1:]] == ["BAD", "BAD"]
    assert h.scheduler.size() == 1


def test_a_task_revoked_before_it_exists_is_marked_bad_at_dispatch_and_never_sent(h):
    h.add_project()
    h.start("p")
    url = "http://a/revoked-early"
    from spiderflow.message import md5_taskid
    assert revoke(h, [md5_taskid(url)], project=None)["marked_bad"] == 0     # nothing to mark yet
    task = h.new(url)
    other = h.new("http://a/other")
    h.run()
    assert [t.taskid for t in h.sent_normal()] == [other.taskid]
    assert h.status(task.taskid) == "BAD"
    assert h.scheduler.projects["p"].bucket.available() > 0      # its token went back


def test_a_project_wide_revoke_reaches_tasks_only_in_taskdb(tmp_path):
    harness = Harness(tmp_path, task_window=10, task_load_page=5)
    db = connect_controldb(f"sqlite:///{tmp_path}/project.db")
    panel = SchedulerPanel("scheduler", harness.scheduler, harness.settings, name="s", node_id="s",
                           watch=ControlWatch(db, clock=harness.clock))
    try:
        harness.add_project(rate=0)
        harness.start("p")
        for i in range(40):
            harness.new(f"http://a/{i}")
        harness.run()
        held = len(harness.scheduler.projects["p"].queue)
        assert held < 40 and harness.taskdb.count("p", "ACTIVE") == 40
        entries = revokes_for([], "p", now=harness.clock())
        assert panel.do_revoke(ttl=1.0, revokes=[e.to_dict() for e in entries])["marked_bad"] == held
        harness.run()           # the sweep's writes are flushed with the next pass
        assert harness.taskdb.count("p", "ACTIVE") == 0 and harness.taskdb.count("p", "BAD") == 40
    finally:
        panel.close()
        db.close()
        harness.close()


SLOW = '''
import time
from spiderflow import *


class Handler(BaseHandler):
    def page(self, response):
        end = time.time() + float(response.save or 0)
        while time.time() < end:
            pass
        return {"url": response.url}
'''


@pytest.fixture
def processor(tmp_path):
    inqueue = connect_queue("memory://", "fetcher2processor", 10)
    results = connect_queue("memory://", "processor2result", 10)
    status = connect_queue("memory://", "status_queue", 10)
    projects = ProjectManager()
    projects.add("slow", SLOW)
    proc = Processor(inqueue, status, None, results, projects=projects, settings=Settings(process_time_limit=30),
                     poll_interval=0.05)
    db = connect_controldb(f"sqlite:///{tmp_path}/project.db")
    panel = make_panel("processor", proc, Settings(), name="p1", node_id="p1", watch=ControlWatch(db))
    assert proc.control is panel and isinstance(panel, ProcessorPanel)
    yield proc, panel, inqueue, results
    panel.close()
    db.close()


def page(n: int, seconds: float) -> tuple[Task, FetchResult]:
    url = f"http://example.com/{n}"
    task = Task(taskid=f"t{n}", project="slow", url=url, process=Process(callback="page"), updatetime=time.time())
    task.fetch.save = seconds
    return task, FetchResult(200, url, content=b"<html></html>", save=seconds)


def test_the_processor_drops_revoked_tasks_and_terminated_outcomes(processor):
    proc, panel, inqueue, results = processor
    revoked_task, fetched = page(1, 0)
    panel.do_revoke(ttl=1, revokes=[e.to_dict() for e in revokes_for(["t1"], "slow")])
    inqueue.put((revoked_task, fetched))
    running, fetched2 = page(2, 1.0)
    inqueue.put((running, fetched2))
    thread = threading.Thread(target=proc.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while panel.current is None:
            assert time.monotonic() < deadline, "the processor did not start the slow callback"
            time.sleep(0.01)
        assert panel.do_active(ttl=1)[0]["id"] == "t2"
        reply = panel.do_revoke(ttl=1, revokes=[e.to_dict() for e in revokes_for(["t2"], "slow", terminate=True)])
        assert reply["ok"] == "terminate: slow:t2"
        after, fetched3 = page(3, 0)
        inqueue.put((after, fetched3))
        message = results.get(timeout=10)
        assert message[0].taskid == "t3"            # t2's outcome was dropped, t1 never ran
        assert proc.processed == 2 and panel.watch.dropped == 1
    finally:
        proc.stop()
        thread.join(10)


def test_a_runtime_time_limit_applies_to_the_next_callbacks(processor):
    proc, panel, inqueue, results = processor
    assert panel.do_time_limit(ttl=1, project="slow", seconds=0.2)["ok"] == "time limits set successfully"
    task, fetched = page(4, 2.0)
    started = time.monotonic()
    proc.control.handle(task, fetched)
    status = proc.status_queue.get(timeout=5)
    assert status.taskid == "t4" and status.track.process["ok"] is False
    assert "0.2 s" in status.track.process["exception"] and time.monotonic() - started < 1.5
    assert panel.do_pool_grow(ttl=1, n=2)["error"].startswith("processor pool is fixed at 1 worker")
    panel.do_time_limit(ttl=1, project="slow", seconds=None)
    task, fetched = page(5, 0.3)
    proc.control.handle(task, fetched)
    assert results.get(timeout=5)[0].taskid == "t5"


def test_fetcher_autoscale_grows_while_the_queue_waits_and_shrinks_when_idle(tmp_path, httpbin, monkeypatch):
    import asyncio

    from spiderflow.control import panels
    from spiderflow.fetcher import Fetcher
    monkeypatch.setattr(panels, "SHRINK_AFTER", 0.3)
    inqueue = connect_queue("memory://", "scheduler2fetcher", 100)
    outqueue = connect_queue("memory://", "fetcher2processor", 100)
    fetcher = Fetcher(inqueue, outqueue, Settings(poolsize=2))
    db = connect_controldb(f"sqlite:///{tmp_path}/project.db")
    panel = make_panel("fetcher", fetcher, Settings(poolsize=2), name="f1", node_id="f1", watch=ControlWatch(db))
    for i in range(24):
        inqueue.put(Task(taskid=f"t{i}", project="p", url=f"{httpbin.url}/delay/0.5?n={i}"))
    thread = threading.Thread(target=lambda: asyncio.run(fetcher.run()), daemon=True)
    try:
        assert panel.do_autoscale(ttl=1, max=8, min=2)["ok"] == "autoscale now max=8 min=2"
        assert panel.do_pool_grow(ttl=1, n=1)["error"].startswith("pool_grow is not supported with autoscale")
        thread.start()
        most = biggest = 0
        deadline = time.monotonic() + 20
        while outqueue.qsize() < 24:
            assert time.monotonic() < deadline, f"fetched {outqueue.qsize()} of 24"
            panel.tick()
            most, biggest = max(most, fetcher.in_flight), max(biggest, fetcher.poolsize)
            time.sleep(0.1)
        assert biggest == 8 and most > 2, (biggest, most)
        deadline = time.monotonic() + 10
        while fetcher.poolsize > 2:
            assert time.monotonic() < deadline, f"the idle pool stayed at {fetcher.poolsize} slots"
            panel.tick()
            time.sleep(0.1)
        assert panel.pool()["autoscaler"] == {"max": 8, "min": 2}
    finally:
        fetcher.stop()
        thread.join(10)
        panel.close()
        db.close()


def test_reserved_lists_what_a_multiprocessing_queue_holds_untaken():
    from spiderflow.control.panels import reserved_messages
    q = connect_queue("multiprocessing://", "scheduler2fetcher", 100)
    try:
        assert reserved_messages(q) == []
        q.put_many([Task(taskid=f"t{i}", project="p", url=f"http://x/{i}") for i in range(5)])
        (taken,) = q.receive_many(1, 0)      # the rest of the batch stays in this process's buffer
        assert taken.message.taskid == "t0"
        assert [r["id"] for r in reserved_messages(q)] == ["t1", "t2", "t3", "t4"]
        assert reserved_messages(connect_queue("memory://", "x")) == []
    finally:
        q.close()
