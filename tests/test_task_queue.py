"""TaskQueue: time queue, priority queue (priority, then exetime, then FIFO), leases, eviction."""

from __future__ import annotations

from spiderflow.message import Schedule, Task
from spiderflow.scheduler.task_queue import TaskQueue, order_key


def task(taskid: str, priority: int = 0, exetime: float = 0.0) -> Task:
    return Task(taskid=taskid, project="p", url=f"http://x/{taskid}",
                schedule=Schedule(priority=priority, exetime=exetime))


def ids(tasks):
    return [t.taskid for t in tasks]


def test_priority_then_exetime_then_fifo():
    q = TaskQueue()
    for t in [task("a"), task("b", priority=5), task("c"), task("d", priority=5), task("e", exetime=-1)]:
        q.put(t, now=100)
    assert q.ready_count == 5
    assert ids(q.pop(10)) == ["b", "d", "e", "a", "c"]
    assert len(q) == 0


def test_time_queue_promotes_when_due():
    q = TaskQueue()
    q.put(task("later", exetime=200), now=100)
    q.put(task("soon", exetime=150), now=100)
    q.put(task("now"), now=100)
    assert (q.ready_count, q.waiting_count) == (1, 2)
    q.promote(149)
    assert ids(q.pop(10)) == ["now"]
    q.promote(150)
    assert ids(q.pop(10)) == ["soon"]
    assert q.next_exetime() == 200
    q.promote(1000)
    assert ids(q.pop(10)) == ["later"]


def test_put_replaces_and_remove():
    q = TaskQueue()
    q.put(task("a", priority=1), now=0)
    q.put(task("b", priority=2), now=0)
    q.put(task("a", priority=3), now=0)       # replaces, moves up
    assert len(q) == 2 and q.ready_count == 2
    q.put(task("b", exetime=50), now=0)       # from the priority queue to the time queue
    assert (q.ready_count, q.waiting_count) == (1, 1)
    assert q.remove("a").schedule.priority == 3
    assert q.remove("a") is None
    assert q.pop(10) == []
    q.promote(60)
    assert ids(q.pop(10)) == ["b"]


def test_processing_and_leases():
    q = TaskQueue()
    a, b = task("a"), task("b")
    q.start(a, deadline=10)
    q.start(b, deadline=20)
    assert "a" in q and q.is_processing("a") and len(q) == 0 and q.processing_count == 2
    assert q.get("a") is a
    assert q.expired(9) == []
    assert ids(q.expired(10)) == ["a"]
    assert q.done("a") is None                # already expired
    assert q.done("b") is b
    assert q.expired(100) == []
    q.start(a, deadline=5)
    q.done("a")
    q.start(a, deadline=50)                   # a stale lease entry must not expire the new one
    assert q.expired(10) == []
    assert ids(q.expired(50)) == ["a"]


def test_evict_keeps_the_start_of_scheduling_order():
    q = TaskQueue()
    tasks = [task(f"t{i:02d}", priority=i % 3, exetime=float(i)) for i in range(12)]
    for t in tasks:
        q.put(t, now=100)
    evicted = q.evict(5)
    assert len(evicted) == 7 and len(q) == 5
    kept = sorted(q.queued(), key=order_key)
    assert max(map(order_key, kept)) < min(map(order_key, evicted))
    assert q.evict(5) == []


def test_many_replacements_compact_heaps():
    q = TaskQueue()
    for i in range(5000):
        q.put(task("same", priority=i % 7), now=0)
    assert len(q) == 1
    assert len(q._ready) < 3000
    assert ids(q.pop(5)) == ["same"]


def test_clear_keeps_in_flight():
    q = TaskQueue()
    q.put(task("a"), now=0)
    q.start(task("b"), deadline=10)
    assert ids(q.clear()) == ["a"]
    assert len(q) == 0 and q.is_processing("b")
