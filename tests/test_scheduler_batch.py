"""Batched dispatch: one pass sends its tasks with one ``put_many``; a batch the queue takes
only in part leaves the scheduler's state exact (what was not sent stays queued, not in flight)."""

from __future__ import annotations

from spiderflow.exceptions import QueueFull, SerializationError
from spiderflow.queues.memory import MemoryQueue
from spiderflow.scheduler.scheduler import _put_many_kind

from test_scheduler import Harness


class CountingQueue(MemoryQueue):
    """A memory queue counting put_many/put calls; *room* caps what it takes, whatever maxsize says."""

    def __init__(self, name: str, maxsize: int = 0):
        super().__init__(name, maxsize)
        self.put_many_calls = 0
        self.put_calls = 0
        self.room: int | None = None

    def put(self, msg, timeout=None):
        self.put_calls += 1
        if self.room is not None:
            if self.room <= 0:
                raise QueueFull("full")
            self.room -= 1
        super().put(msg, timeout)


def counting(q):
    """Count put_many calls on *q* (an instance attribute: its class's put_many stays known)."""
    real = q.put_many

    def put_many(msgs, timeout=None):
        q.put_many_calls += 1
        return real(msgs, timeout)

    q.put_many = put_many
    return q


def harness(tmp_path) -> Harness:
    h = Harness(tmp_path)
    h.out_queue = counting(CountingQueue("scheduler2fetcher"))
    h.new_scheduler()
    h.add_project()
    h.start("p")
    h.sent()
    return h


def test_a_pass_sends_its_tasks_with_one_put_many(tmp_path):
    h = harness(tmp_path)
    q = h.out_queue
    for i in range(50):
        h.new(f"http://a/{i}")
    q.put_many_calls = 0
    h.run()
    assert q.put_many_calls == 1
    sent = h.sent_normal()
    assert len(sent) == 50
    p = h.scheduler.projects["p"]
    assert p.queue.processing_count == 50 and len(p.queue) == 0
    assert sum(1 for e in p.active if e[1] == "dispatched") == 50
    h.close()


def test_a_batch_taken_in_part_leaves_the_rest_queued_and_none_twice(tmp_path):
    h = harness(tmp_path)
    q = h.out_queue
    tasks = [h.new(f"http://a/{i}", priority=100 - i) for i in range(20)]
    q.room = 7          # the queue fills up part-way through the batch
    h.run()
    p = h.scheduler.projects["p"]
    first = h.sent_normal()
    assert [t.taskid for t in first] == [t.taskid for t in tasks[:7]]       # in order, a prefix
    assert p.queue.processing_count == 7
    assert len(p.queue) == 13 and p.queue.ready_count == 13                  # back in the queue
    assert all(not p.queue.is_processing(t.taskid) for t in tasks[7:])
    assert sum(1 for e in p.active if e[1] == "dispatched") == 7
    q.room = None
    h.run()
    second = h.sent_normal()
    assert [t.taskid for t in second] == [t.taskid for t in tasks[7:]]
    assert p.queue.processing_count == 20 and len(p.queue) == 0
    h.answer_all(first + second)
    h.run()
    assert all(h.status(t.taskid) == "SUCCESS" for t in tasks)
    h.close()


def test_a_task_that_cannot_be_packed_is_bad_and_the_rest_go(tmp_path, monkeypatch):
    h = harness(tmp_path)
    tasks = [h.new(f"http://a/{i}", priority=100 - i) for i in range(6)]
    real = MemoryQueue.put

    def put(self, msg, timeout=None):
        if getattr(msg, "taskid", None) == tasks[2].taskid:
            raise SerializationError("cannot pack")
        real(self, msg, timeout)

    monkeypatch.setattr(MemoryQueue, "put", put)
    h.run()
    monkeypatch.setattr(MemoryQueue, "put", real)
    sent = h.sent_normal()
    assert [t.taskid for t in sent] == [t.taskid for i, t in enumerate(tasks) if i != 2]
    h.run()
    assert h.status(tasks[2].taskid) == "BAD"
    p = h.scheduler.projects["p"]
    assert p.queue.processing_count == 5 and len(p.queue) == 0
    h.close()


def test_put_many_kinds():
    assert _put_many_kind(MemoryQueue("q")) == "prefix"
    assert _put_many_kind(CountingQueue("q")) == "prefix"

    class Own(MemoryQueue):
        def put_many(self, msgs, timeout=None):
            super().put_many(msgs, timeout)

    assert _put_many_kind(Own("q")) is None        # a put_many not known: one at a time
    assert _put_many_kind(object()) is None


def test_put_many_kind_of_the_broker_backends():
    from spiderflow.queues.amqp import AmqpQueue
    from spiderflow.queues.redis import RedisQueue
    assert _put_many_kind(RedisQueue.__new__(RedisQueue)) == "eager"
    assert _put_many_kind(AmqpQueue.__new__(AmqpQueue)) == "eager"


class EagerQueue(MemoryQueue):
    """Packs the batch first, then takes *room* of it and fails (as redis/amqp may when the
    queue fills past the room measured)."""

    room: int | None = None
    error: type = QueueFull

    def put_many(self, msgs, timeout=None):
        msgs = list(msgs)
        take = len(msgs) if self.room is None else self.room
        for m in msgs[:take]:
            self.put(m)
        if take < len(msgs):
            raise self.error("part-way")


def test_an_eager_backend_failing_part_way_sends_none_twice_and_loses_none(tmp_path, monkeypatch):
    from spiderflow.scheduler import scheduler as mod
    monkeypatch.setitem(mod._PUT_MANY_KINDS, EagerQueue, "eager")
    monkeypatch.setattr(mod, "_EAGER_WAIT", 0)
    h = Harness(tmp_path, lease_time=60)
    h.out_queue = EagerQueue("scheduler2fetcher")
    h.new_scheduler()
    h.add_project()
    h.start("p")
    h.sent()
    tasks = [h.new(f"http://a/{i}") for i in range(10)]
    h.out_queue.room = 4
    h.run()
    p = h.scheduler.projects["p"]
    first = h.sent_normal()
    assert len(first) == 4
    assert p.queue.processing_count == 10 and len(p.queue) == 0     # which went is unknown: none again now
    h.out_queue.room = None
    h.run()
    assert h.sent_normal() == []
    h.answer_all(first)
    h.run()
    h.clock.advance(61)                                             # the lease sends the rest, once
    h.run()
    again = h.sent_normal()
    assert sorted(t.taskid for t in again) == sorted(t.taskid for t in tasks if t not in first)
    h.close()


def test_an_eager_backend_losing_the_broker_part_way_resends_what_is_in_flight(tmp_path, monkeypatch):
    from spiderflow.exceptions import QueueError
    from spiderflow.scheduler import scheduler as mod
    monkeypatch.setitem(mod._PUT_MANY_KINDS, EagerQueue, "eager")
    monkeypatch.setattr(mod, "_EAGER_WAIT", 0)
    h = Harness(tmp_path)
    h.out_queue = EagerQueue("scheduler2fetcher")
    h.new_scheduler()
    h.add_project()
    h.start("p")
    h.sent()
    for i in range(10):
        h.new(f"http://a/{i}")
    h.out_queue.room, h.out_queue.error = 3, QueueError
    h.scheduler._loop_step()
    assert len(h.sent_normal()) == 3
    assert h.scheduler._retry_in > 0                                # the broker outage path
    p = h.scheduler.projects["p"]
    assert p.queue.processing_count == 10
    h.out_queue.room = None
    h.scheduler._loop_step()                                        # back: every task in flight again
    h.scheduler._loop_step()
    assert len(h.sent_normal()) == 10
    h.close()
