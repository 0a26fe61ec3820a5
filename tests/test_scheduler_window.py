"""Scale past RAM: a bounded window per project, paged in from taskdb in scheduling order.

No task may be lost or dispatched twice at the window boundary, whatever order new tasks,
retries, far-future tasks and restarts come in.
"""

from __future__ import annotations

import random

import pytest
from test_scheduler import Harness, urls

from spiderflow.message import Schedule, Task, TaskStatus

SMALL = {"task_window": 8, "task_load_page": 3, "loop_limit": 4}


def window_harness(tmp_path, **settings):
    return Harness(tmp_path, scheduler_kwargs={"time_horizon": 100.0, "finished_delay": 0.0},
                   **{**SMALL, **settings})


def fill_taskdb(h, n, project="p", **schedule):
    tasks = [Task(taskid=f"t{i:05d}", project=project, url=f"http://a/{i}",
                  schedule=Schedule(**{"exetime": h.clock() - 1000 + i, **schedule})) for i in range(n)]
    h.taskdb.insert_many(tasks)
    return tasks


def bound(h, project="p"):
    return len(h.scheduler.projects[project].queue)


def test_window_pages_tasks_in_order_and_stays_bounded(tmp_path):
    h = window_harness(tmp_path)
    fill_taskdb(h, 50)
    h.add_project()
    h.start("p")
    got = []
    for _ in range(40):
        h.run()
        assert bound(h) <= 8 + 3
        sent = h.sent_normal()
        h.answer_all(sent)
        got += sent
    assert [t.taskid for t in got if t.taskid.startswith("t")] == [f"t{i:05d}" for i in range(50)]
    assert h.taskdb.count("p", TaskStatus.ACTIVE) == 0
    h.close()


def test_new_tasks_behind_and_ahead_of_the_window(tmp_path):
    h = window_harness(tmp_path)
    fill_taskdb(h, 30)
    h.add_project(rate=1, burst=1)
    h.start("p")
    first = h.sent_normal()
    assert [t.taskid for t in first] == ["t00000"]
    h.answer_all(first)
    for i in range(20):                            # low priority: after the window, taskdb only
        h.new(f"http://new/{i}")
    h.run()
    assert bound(h) <= 11
    h.new("http://urgent/1", priority=5)           # ahead of everything in the window
    h.clock.advance(1)
    h.run()
    assert urls(h.sent_normal()) == ["http://urgent/1"]
    assert bound(h) <= 11
    got = []
    for _ in range(80):
        h.clock.advance(1)
        h.run()
        sent = h.sent_normal()
        h.answer_all(sent)
        got += sent
    # tasks accepted in one pass share their exetime; taskdb orders those by taskid
    expected = [f"t{i:05d}" for i in range(1, 30)] + sorted(Task.create("p", f"http://new/{i}").taskid
                                                           for i in range(20))
    assert [t.taskid for t in got if t.taskid != "on_finished"] == expected
    h.close()


def test_far_future_tasks_stay_in_taskdb_until_due(tmp_path):
    h = window_harness(tmp_path)
    h.add_project()
    h.start("p")
    now = h.clock()
    h.taskdb.insert_many([Task(taskid=f"f{i}", project="p", url=f"http://f/{i}",
                               schedule=Schedule(priority=1, exetime=now + 1000 + i)) for i in range(20)])
    fill_taskdb(h, 5)
    h.scheduler.projects["p"].reset_loader()
    h.run(2)
    p = h.scheduler.projects["p"]
    assert p.queue.waiting_count == 0               # beyond the horizon: not held in memory
    sent = h.sent_normal()
    assert sorted(t.taskid for t in sent) == [f"t{i:05d}" for i in range(5)]
    h.answer_all(sent)
    h.clock.advance(900)
    h.run()
    assert h.sent_normal() == []
    h.clock.advance(100)
    got = []
    for _ in range(30):
        h.run()
        got += h.sent_normal()
        h.clock.advance(1)
    assert sorted(t.taskid for t in got) == sorted(f"f{i}" for i in range(20))
    h.close()


def test_long_retry_leaves_memory_and_comes_back(tmp_path):
    h = window_harness(tmp_path)
    h.add_project()
    h.start("p")
    task = h.new("http://a/1")
    h.run()
    h.answer_all(h.sent_normal(), ok=False)
    h.run()
    h.clock.advance(30)
    h.run()
    (retry,) = h.sent_normal()
    h.answer(retry, ok=False)                      # next retry in 1 h: beyond the horizon
    h.run()
    p = h.scheduler.projects["p"]
    assert task.taskid not in p.queue and h.status(task.taskid) == "ACTIVE"
    h.clock.advance(3599)
    h.run()
    assert h.sent_normal() == []
    h.clock.advance(2)
    h.run()
    assert [t.taskid for t in h.sent_normal()] == [task.taskid]
    h.close()


def test_restart_with_window_recovers_everything(tmp_path):
    h = window_harness(tmp_path)
    fill_taskdb(h, 25)
    h.add_project()
    h.start("p")
    h.run()
    h.sent_normal()                                # in flight when the scheduler dies
    h.new_scheduler()
    h.start("p")
    got = []
    for _ in range(20):
        h.run()
        sent = h.sent_normal()
        h.answer_all(sent)
        got += sent
    assert sorted(t.taskid for t in got if t.taskid != "on_finished") == [f"t{i:05d}" for i in range(25)]
    h.close()


@pytest.mark.parametrize("seed", range(6))
def test_random_traffic_loses_and_duplicates_nothing(tmp_path, seed):
    rng = random.Random(seed)
    h = window_harness(tmp_path, loop_limit=rng.choice([2, 5, 9]),
                       retry_delay=((0, 5.0), (1, 250.0), (-1, 20.0)))
    h.add_project(rate=1000, burst=1000)
    h.start("p")
    inflight: dict[str, Task] = {}
    created: set[str] = set()
    dispatched: set[str] = set()
    n = 0

    def dispatch_round():
        h.run()
        for t in h.sent_normal():
            assert t.taskid not in inflight, f"{t.taskid} dispatched twice"
            inflight[t.taskid] = t
            dispatched.add(t.taskid)
        p = h.scheduler.projects["p"]
        assert len(p.queue) <= SMALL["task_window"] + SMALL["task_load_page"]

    for step in range(120):
        for _ in range(rng.randrange(0, 8)):
            if created and rng.random() < 0.2:
                url = f"http://r/{rng.randrange(n)}"          # a duplicate
                kwargs = {"force_update": True} if rng.random() < 0.3 else {}
            else:
                url = f"http://r/{n}"
                n += 1
                kwargs = {}
            if rng.random() < 0.2:
                kwargs["priority"] = rng.randrange(1, 4)
            if rng.random() < 0.1:
                kwargs["exetime"] = h.clock() + rng.choice([10, 300])
            kwargs["retries"] = 2
            created.add(h.new(url, **kwargs).taskid)
        dispatch_round()
        for taskid in list(inflight):
            if rng.random() < 0.6:
                t = inflight.pop(taskid)
                h.answer(t, ok=rng.random() < 0.7)
        h.clock.advance(rng.choice([0.5, 1, 3]))
    for _ in range(400):                                       # drain
        dispatch_round()
        for taskid in list(inflight):
            h.answer(inflight.pop(taskid), ok=True)
        h.clock.advance(5)
        if not inflight and h.taskdb.count("p", TaskStatus.ACTIVE) == 0:
            break
    assert h.taskdb.count("p", TaskStatus.ACTIVE) == 0
    assert created <= dispatched
    statuses = {row["taskid"]: row["status"] for row in h.taskdb.select("p", limit=10_000)}
    assert set(statuses) - {"on_finished"} == created
    assert set(statuses.values()) <= {"SUCCESS", "FAILED"}
    h.close()
