"""Jobs as the scheduler runs them: start, stamp, count, finish, cancel, max_proc, restart.

A real Scheduler on sqlite files with memory queues and a test clock (test_scheduler's
Harness), its JobRunner on the jobs table in the same projectdb file.
"""

from __future__ import annotations

import time

import pytest

from spiderflow.jobs import connect_jobdb
from spiderflow.jobs.runner import TICK, JobRunner
from spiderflow.jobs.watch import JobWatch
from spiderflow.message import ProjectStatus, TaskStatus

from test_scheduler import Harness


class JobHarness(Harness):
    def new_scheduler(self):
        scheduler = super().new_scheduler()
        if not hasattr(self, "jobdb"):
            self.jobdb = connect_jobdb(f"sqlite:///{self.tmp_path}/project.db")
        scheduler.jobs = JobRunner(scheduler, self.jobdb, self.clock)
        return scheduler

    def close(self):
        self.jobdb.close()
        super().close()

    def tick(self, times: int = 1) -> None:
        """Passes a tick apart, so the runner reads the job table each time."""
        for _ in range(times):
            self.clock.advance(TICK)
            self.run()

    def start_job_project(self, name: str = "p") -> list:
        """Run until the job's project asked for its info; answer it; return what was sent."""
        self.tick(2)
        sent = self.sent()
        for t in sent:
            if t.taskid == "_on_get_info":
                self.answer_info(t.project)
        self.tick()
        return [t for t in sent + self.sent() if t.taskid != "_on_get_info"]

    def drain(self, tasks, ok=True, **process) -> None:
        for t in tasks:
            self.answer(t, ok, **process)
        self.tick(3)


@pytest.fixture
def h(tmp_path):
    harness = JobHarness(tmp_path, finished_delay=0.0, max_proc=2)
    yield harness
    harness.close()


def test_a_job_runs_its_project_stamps_its_tasks_and_finishes_with_counts(h):
    h.add_project("p", status="TODO")
    job = h.jobdb.schedule("p", "Handler", args={"q": "books"})
    sent = h.start_job_project()
    row = h.jobdb.get(job["id"])
    assert row["status"] == "running" and row["pid"] and row["start_time"] == pytest.approx(h.clock(), abs=5)
    assert h.projectdb.get("p")["status"] == ProjectStatus.RUNNING
    (on_start,) = [t for t in sent if t.taskid == "on_start"]
    assert on_start.schedule.job == job["id"]

    h.answer(on_start, results=1)              # on_start's status: one result
    pages = [h.new(f"http://example.com/{i}") for i in range(3)]
    h.tick()
    dispatched = h.sent_normal()
    assert sorted(t.url for t in dispatched) == sorted(t.url for t in pages)
    assert {t.schedule.job for t in dispatched} == {job["id"]}
    h.answer(dispatched[0], ok=False)           # one failure (retried later), two successes with 2 results
    for t in dispatched[1:]:
        h.answer(t, results=2)
    h.tick()
    assert h.jobdb.get(job["id"])["pages"] == 4 and h.jobdb.get(job["id"])["results"] == 5

    h.clock.advance(3600 * 24)                  # the retry is due: answered, the crawl drains
    h.tick()
    (retry,) = h.sent_normal()
    h.drain([retry])
    row = h.jobdb.get(job["id"])
    assert (row["status"], row["outcome"]) == ("finished", "finished")
    assert (row["pages"], row["results"], row["errors"]) == (5, 5, 1)
    assert h.projectdb.get("p")["status"] == ProjectStatus.TODO     # back to what it was
    assert "set RUNNING (it was TODO)" in row["events"] and "finished: 5 pages" in row["events"]
    h.tick()
    assert all(t.schedule.job is None for t in h.sent())           # nothing is stamped after the job


def test_one_running_job_per_project_and_max_proc_in_the_cluster(h):
    for name in ("a", "b", "c"):
        h.add_project(name, status="STOP")
    first = h.jobdb.schedule("a", "Handler", now=h.clock())
    second = h.jobdb.schedule("a", "Handler", now=h.clock() + 1)   # the same project: waits for the first
    other = h.jobdb.schedule("b", "Handler", now=h.clock() + 2)
    third = h.jobdb.schedule("c", "Handler", now=h.clock() + 3)    # max_proc 2: waits for a slot
    h.start_job_project()
    states = {j["id"]: h.jobdb.get(j["id"])["status"] for j in (first, second, other, third)}
    assert states == {first["id"]: "running", second["id"]: "pending", other["id"]: "running",
                      third["id"]: "pending"}
    assert h.projectdb.get("c")["status"] == ProjectStatus.STOP


def test_cancel_stops_the_project_and_its_tasks_in_flight_and_the_watch_sees_it(h):
    h.add_project("p", status="RUNNING")
    job = h.jobdb.schedule("p", "Handler")
    sent = h.start_job_project()
    (on_start,) = [t for t in sent if t.taskid == "on_start"]
    h.answer(on_start)
    for i in range(5):
        h.new(f"http://example.com/{i}")
    h.tick()
    in_flight = h.sent_normal()
    assert len(in_flight) == 5

    watch = JobWatch(h.jobdb, clock=h.clock, refresh=0.05).start()
    assert h.jobdb.request_cancel(job["id"]) == "running"
    h.tick()
    row = h.jobdb.get(job["id"])
    assert (row["status"], row["outcome"]) == ("finished", "cancelled")
    assert "5 tasks in flight dropped" in row["events"]
    assert h.projectdb.get("p")["status"] == ProjectStatus.STOP
    p = h.scheduler.projects["p"]
    assert p.queue.processing_count == 0                           # not in flight: ACTIVE in taskdb
    assert h.taskdb.count("p", TaskStatus.ACTIVE) == 5
    h.tick(3)
    assert h.sent_normal() == []
    for _ in range(100):
        if watch.cancelled(job["id"]):
            break
        time.sleep(0.05)
    assert watch.cancelled(job["id"]) and not watch.cancelled("another")
    watch.stop()

    resumed = h.jobdb.schedule("p", "Handler")                     # the next job resumes the five
    h.tick(3)
    again = [t for t in h.sent_normal() if t.taskid != "on_start"]   # its on_start goes too
    assert sorted(t.url for t in again) == sorted(t.url for t in in_flight)
    assert {t.schedule.job for t in again} == {resumed["id"]}


def test_a_restarted_scheduler_takes_up_the_running_job_and_its_counts(h):
    h.add_project("p", status="TODO")
    job = h.jobdb.schedule("p", "Handler")
    sent = h.start_job_project()
    (on_start,) = [t for t in sent if t.taskid == "on_start"]
    h.answer(on_start, results=3)
    h.new("http://example.com/x")
    h.tick()
    (page,) = h.sent_normal()
    assert h.jobdb.get(job["id"])["results"] == 3

    h.new_scheduler()                                              # the old one is gone, as after kill -9
    h.clock.advance(h.settings.lease_time + 1)                     # its lease runs out: sent again
    sent = h.start_job_project()
    h.tick()
    (again,) = [t for t in sent + h.sent_normal() if t.url == page.url] or [None]
    assert again is not None and again.schedule.job == job["id"]
    h.drain([again], results=1)
    row = h.jobdb.get(job["id"])
    assert (row["status"], row["pages"], row["results"]) == ("finished", 2, 4)
    assert h.projectdb.get("p")["status"] == ProjectStatus.TODO
