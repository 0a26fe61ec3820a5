"""Scheduler semantics, driven with memory queues, real sqlite databases and a test clock.

:class:`Harness` is shared by the other scheduler test modules.
"""

from __future__ import annotations

import logging

import pytest

from spiderflow.message import Fetch, ProjectStatus, Schedule, StatusPack, Task, Track
from spiderflow.queues import connect_queue
from spiderflow.scheduler import Scheduler
from spiderflow.settings import Settings
from spiderflow.storage import connect_projectdb, connect_resultdb, connect_taskdb

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Harness:
    """A scheduler on sqlite files in *tmp_path*, memory queues and a clock the test moves."""

    def __init__(self, tmp_path, out_maxsize: int = 0, cls=Scheduler, scheduler_kwargs=None, **settings):
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.projectdb = connect_projectdb(f"sqlite:///{tmp_path}/project.db")
        self.taskdb = connect_taskdb(f"sqlite:///{tmp_path}/task.db")
        self.resultdb = connect_resultdb(f"sqlite:///{tmp_path}/result.db")
        self.newtask_queue = connect_queue("memory://", "newtask_queue")
        self.status_queue = connect_queue("memory://", "status_queue")
        self.out_queue = connect_queue("memory://", "scheduler2fetcher", out_maxsize)
        settings.setdefault("data_dir", str(tmp_path / "data"))
        self.settings = Settings(**settings)
        self.cls = cls
        self.scheduler_kwargs = scheduler_kwargs or {}
        self.scheduler = self.new_scheduler()

    def new_scheduler(self) -> Scheduler:
        self.scheduler = self.cls(
            projectdb=self.projectdb, taskdb=self.taskdb, resultdb=self.resultdb,
            newtask_queue=self.newtask_queue, status_queue=self.status_queue, out_queue=self.out_queue,
            settings=self.settings, clock=self.clock, **self.scheduler_kwargs)
        return self.scheduler

    def close(self) -> None:
        for db in (self.projectdb, self.taskdb, self.resultdb):
            db.close()

    # -- projects ---------------------------------------------------------------
    def add_project(self, name: str = "p", status: str = "RUNNING", rate: float = 1000, burst: float = 1000,
                    group: str = "", script: str = "script v1") -> None:
        self.projectdb.insert(name, group=group, status=status, script=script, comments="", rate=rate,
                              burst=burst, updatetime=self.clock())

    def update_project(self, name: str, **fields) -> None:
        self._bump = getattr(self, "_bump", 0) + 1e-3     # projectdb's updatetime always moves on
        fields.setdefault("updatetime", self.clock() + self._bump)
        self.projectdb.update(name, **fields)
        self.scheduler.update_project()

    def start(self, *names: str, info: dict | None = None) -> None:
        """Load the projects and answer their _on_get_info."""
        self.run()
        infos = [t for t in self.sent() if t.taskid == "_on_get_info"]
        assert sorted(t.project for t in infos) == sorted(names)
        for t in infos:
            self.answer_info(t.project, info)
        self.run()

    def answer_info(self, project: str, info: dict | None = None) -> None:
        self.status_queue.put(StatusPack(taskid="_on_get_info", project=project, url="data:,_on_get_info",
                                         track=Track(process={"ok": True, "save": info or {}})))

    # -- driving ------------------------------------------------------------------
    def run(self, times: int = 1) -> None:
        for _ in range(times):
            self.scheduler.run_once()

    def new(self, url: str, project: str = "p", taskid: str | None = None, **schedule) -> Task:
        task = Task.create(project, url, taskid=taskid, schedule=Schedule(**schedule))
        self.newtask_queue.put(task)
        return task

    def sent(self) -> list[Task]:
        return self.out_queue.get_many(10 ** 6)

    def sent_normal(self) -> list[Task]:
        return [t for t in self.sent() if t.taskid not in ("_on_get_info", "_on_cronjob", "_on_message")]

    def answer(self, task: Task, ok: bool = True, **process) -> None:
        track = Track(fetch={"ok": ok, "status_code": 200 if ok else 500, "time": 0.5},
                      process={"ok": ok, "time": 0.1, **process})
        self.status_queue.put(StatusPack(taskid=task.taskid, project=task.project, url=task.url, track=track))

    def answer_all(self, tasks, ok: bool = True) -> None:
        for t in tasks:
            self.answer(t, ok)

    def crawl(self, url: str, **schedule) -> Task:
        """Send a new task through: accepted, dispatched, answered with success."""
        task = self.new(url, **schedule)
        self.run()
        sent = self.sent_normal()
        assert task.taskid in [t.taskid for t in sent]
        self.answer_all(sent)
        self.run()
        return task

    def db(self, taskid: str, project: str = "p") -> dict | None:
        return self.taskdb.get(project, taskid)

    def status(self, taskid: str, project: str = "p") -> str | None:
        row = self.db(taskid, project)
        return row and row["status"]


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def urls(tasks) -> list[str]:
    return [t.url for t in tasks]


# ---------------------------------------------------------------------------------
# the basic cycle

def test_new_task_is_stored_dispatched_and_done(h):
    h.add_project()
    h.start("p")
    task = h.new("http://a/1")
    h.run()
    row = h.db(task.taskid)
    assert row["status"] == "ACTIVE"                 # written before it is dispatched
    sent = h.sent_normal()
    assert urls(sent) == ["http://a/1"]
    assert h.scheduler.projects["p"].queue.is_processing(task.taskid)
    h.answer(sent[0])
    h.run()
    row = h.db(task.taskid)
    assert row["status"] == "SUCCESS" and row["lastcrawltime"] == h.clock()
    assert row["track"]["process"]["ok"] is True
    counters = h.scheduler.counters("p")["p"]
    assert counters["5m"]["success"] == 1 and counters["all"]["pending"] == 0
    assert counters["5m"]["fetch_time"] == 0.5


def test_only_debug_and_running_projects_are_scheduled(h):
    for name, status in [("todo", "TODO"), ("stop", "STOP"), ("check", "CHECKING"), ("debug", "DEBUG"),
                         ("run", "RUNNING")]:
        h.add_project(name, status=status)
    h.start("debug", "run")                        # only scheduled projects are asked for their info
    for name in ("todo", "stop", "check", "debug", "run"):
        h.new(f"http://{name}/1", project=name)
    h.run()
    assert sorted(t.project for t in h.sent_normal()) == ["debug", "run"]
    assert h.status(Task.create("stop", "http://stop/1").taskid, "stop") == "ACTIVE"   # stored all the same
    h.update_project("stop", status=ProjectStatus.RUNNING)
    h.run()
    assert [t.taskid for t in h.sent()] == ["_on_get_info"]
    h.answer_info("stop")
    h.run()
    assert urls(h.sent_normal()) == ["http://stop/1"]
    h.update_project("run", status=ProjectStatus.STOP)
    h.new("http://run/2", project="run")
    h.run()
    assert h.sent_normal() == []


def test_normal_tasks_wait_for_get_info_and_crawl_config_is_joined(h):
    h.add_project()
    h.run()
    (info,) = h.sent()
    assert info.taskid == "_on_get_info" and info.fetch.save == ["min_tick", "retry_delay", "crawl_config"]
    h.new("http://a/1")
    h.run()
    assert h.sent() == []                          # waiting for the script's info
    h.answer_info("p", {"min_tick": 0, "crawl_config": {"headers": {"X-A": "1", "X-B": "config"},
                                                        "timeout": 7, "validate_cert": False,
                                                        "time_limit": 3}})
    h.run()
    (task,) = h.sent()
    assert task.fetch.timeout == 7 and task.fetch.validate_cert is False and task.process.time_limit == 3
    assert task.fetch.headers == {"X-A": "1", "X-B": "config"}
    # the task's own values win
    t2 = Task.create("p", "http://a/2", fetch=Fetch(headers={"X-B": "task"}, timeout=1))
    h.newtask_queue.put(t2)
    h.run()
    (task,) = h.sent()
    assert task.fetch.headers == {"X-A": "1", "X-B": "task"} and task.fetch.timeout == 1
    assert h.taskdb.get_task("p", t2.taskid).fetch.headers == {"X-B": "task"}   # joined only when sent


def test_script_change_asks_for_info_again_and_bad_config_is_ignored(h, caplog):
    h.add_project()
    h.start("p")
    h.update_project("p", script="script v2")
    h.run()
    (info,) = h.sent()
    assert info.taskid == "_on_get_info"
    assert h.scheduler.projects["p"].waiting_info
    with caplog.at_level(logging.ERROR):
        h.answer_info("p", {"crawl_config": {"timeout": "soon"}, "retry_delay": "never", "min_tick": "x"})
        h.run()
    assert "crawl_config ignored" in caplog.text and "retry_delay" in caplog.text
    assert not h.scheduler.projects["p"].waiting_info
    h.update_project("p", comments="no script change")
    h.run()
    assert h.sent() == []


def test_get_info_failure_and_lost_answer_are_retried(h):
    h.add_project()
    h.run()
    (info,) = h.sent()
    h.status_queue.put(StatusPack(taskid="_on_get_info", project="p", url=info.url,
                                  track=Track(process={"ok": False, "exception": "SyntaxError"})))
    h.run()
    h.clock.advance(61)
    h.run()
    assert [t.taskid for t in h.sent()] == ["_on_get_info"]
    h.clock.advance(h.settings.lease_time + 1)      # no answer at all
    h.run()
    assert [t.taskid for t in h.sent()] == ["_on_get_info"]


def test_rate_and_burst_gate_selection(h):
    h.add_project(rate=2, burst=3)
    h.start("p")
    for i in range(20):
        h.new(f"http://a/{i}")
    h.run()
    assert len(h.sent_normal()) == 3               # the burst
    h.run()
    assert h.sent_normal() == []
    h.clock.advance(1)
    h.run()
    assert len(h.sent_normal()) == 2               # the rate
    h.update_project("p", rate=10.0, burst=10.0)
    h.clock.advance(1)
    h.run()                                        # tokens earned so far were earned at the old rate
    assert len(h.sent_normal()) == 2
    h.clock.advance(10)
    h.run()
    assert len(h.sent_normal()) == 10


def test_selection_is_fair_across_projects(tmp_path):
    h = Harness(tmp_path, loop_limit=12)
    for name in ("a", "b", "c"):
        h.add_project(name)
    h.start("a", "b", "c")
    for i in range(50):
        h.new(f"http://a/{i}", project="a")
        h.new(f"http://b/{i}", project="b")
    h.new("http://c/0", project="c")
    h.run()
    sent = h.sent_normal()
    by = {name: sum(t.project == name for t in sent) for name in "abc"}
    assert by == {"a": 6, "b": 5, "c": 1} or by == {"a": 5, "b": 6, "c": 1}
    h.run()
    sent = h.sent_normal()
    by2 = {name: sum(t.project == name for t in sent) for name in "ab"}
    assert by2 == {"a": 6, "b": 6}
    h.close()


def test_out_queue_backpressure(tmp_path):
    h = Harness(tmp_path, out_maxsize=5)
    h.add_project()
    h.start("p")
    for i in range(12):
        h.new(f"http://a/{i}")
    h.run()
    assert h.out_queue.qsize() == 5
    h.run()
    assert h.out_queue.qsize() == 5
    assert len(h.sent_normal()) == 5
    h.run()
    assert len(h.sent_normal()) == 5
    h.run()
    assert len(h.sent_normal()) == 2
    h.close()


def test_priority_order_and_fifo_among_equals(h):
    h.add_project(rate=1, burst=1)
    h.start("p")
    h.new("http://a/low-1")
    h.clock.advance(1)
    h.new("http://a/high", priority=5)
    h.new("http://a/low-2")
    h.clock.advance(1)
    h.new("http://a/low-3")
    order = []
    for _ in range(6):
        h.run()
        order += urls(h.sent_normal())
        h.clock.advance(1)
    assert order == ["http://a/high", "http://a/low-1", "http://a/low-2", "http://a/low-3"]


def test_time_queue_holds_future_tasks(h):
    h.add_project()
    h.start("p")
    h.new("http://a/later", exetime=h.clock() + 100)
    h.new("http://a/now")
    h.run()
    assert urls(h.sent_normal()) == ["http://a/now"]
    h.clock.advance(99)
    h.run()
    assert h.sent_normal() == []
    h.clock.advance(1)
    h.run()
    assert urls(h.sent_normal()) == ["http://a/later"]


def test_lease_expiry_resends(h, caplog):
    h.add_project()
    h.start("p")
    h.new("http://a/1")
    h.run()
    (first,) = h.sent_normal()
    h.clock.advance(h.settings.lease_time - 1)
    h.run()
    assert h.sent_normal() == []
    h.clock.advance(2)
    with caplog.at_level(logging.WARNING):
        h.run()
    assert "expired" in caplog.text
    (again,) = h.sent_normal()
    assert again.taskid == first.taskid
    h.answer(again)
    h.run()
    assert h.status(first.taskid) == "SUCCESS"
    assert h.scheduler.counters("p")["p"]["all"]["retry"] == 0


def test_pack_for_task_not_in_flight_is_ignored(h, caplog):
    h.add_project()
    h.start("p")
    task = h.new("http://a/1")
    h.run()
    (sent,) = h.sent_normal()
    h.answer(sent)
    h.answer(sent)                                 # a duplicate
    h.answer(Task.create("p", "http://never/sent"))
    with caplog.at_level(logging.WARNING):
        h.run()
    assert caplog.text.count("not in flight") == 2
    assert h.status(task.taskid) == "SUCCESS"
    assert h.scheduler.counters("p")["p"]["5m"]["success"] == 1
