"""Handing messages on: ``put_encoded(items, ack=deliveries)`` and the batched solo processor.

On redis, a push and the ack of the deliveries it answers run as one script when both queues
are on one server, so the messages are queued and the deliveries settled together or not at
all. The solo processor takes the deliveries already waiting (up to ``RECEIVE_BATCH``), sends
their outcomes with one call per output queue and acks them with the last call. Real Redis
(DB 15, a prefix of its own), real sqlite projectdb files; every wait is bounded.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis
from conftest import require_service

from spiderflow.exceptions import QueueFull
from spiderflow.message import FetchResult, Process, StatusPack, Task
from spiderflow.processor import Processor
from spiderflow.processor.processor import RECEIVE_BATCH
from spiderflow.queues import connect_queue
from spiderflow.settings import Settings
from spiderflow.storage import connect_projectdb

pytestmark = pytest.mark.timeout(60)

SCRIPT = '''
import time
from spiderflow import *


class Handler(BaseHandler):
    def page(self, response):
        if "slow" in response.url:
            time.sleep(0.3)
        if "bad" in response.url:
            return {"n": 2 ** 70}       # beyond 64 bits: cannot be sent
        self.crawl(response.url + "/next", callback=self.page)
        return {"url": response.url}
'''


def task(i: int, url: str | None = None) -> Task:
    return Task.create("handover", url or f"http://127.0.0.1/{i}", process=Process(callback="page"))


def test_redis_push_and_ack_are_one_step(redis_env):
    make, _url, client = redis_env
    source, dest = make("in", maxsize=100), make("out", maxsize=100)
    source.put_many([task(i) for i in range(5)])
    deliveries = source.receive_many(5, timeout=1)
    assert client.llen(source._consumer.inflight) == 5
    dest.put_encoded([dest.encode(d.message) for d in deliveries], ack=deliveries)
    assert client.llen(source._consumer.inflight) == 0      # settled in the same script call
    assert [m.url for m in dest.get_many(10, timeout=1)] == [f"http://127.0.0.1/{i}" for i in range(5)]
    assert not source._consumer.outstanding
    for d in deliveries:
        d.hand_back()                                       # settled: nothing comes back
    assert source.qsize() == 0


def test_redis_no_room_queues_nothing_and_acks_nothing(redis_env):
    make, _url, client = redis_env
    source, dest = make("in", maxsize=100), make("out", maxsize=2)
    dest.put(task(100))
    source.put_many([task(i) for i in range(2)])
    deliveries = source.receive_many(2, timeout=1)
    with pytest.raises(QueueFull):
        dest.put_encoded([dest.encode(d.message) for d in deliveries], timeout=0, ack=deliveries)
    # the single room left was not taken by a part of the batch, and nothing was acked
    assert dest.qsize() == 1
    assert client.llen(source._consumer.inflight) == 2
    for d in deliveries:
        d.hand_back()
    assert source.qsize() == 2


def test_redis_lost_reply_of_a_push_and_ack_duplicates_nothing(redis_env, monkeypatch):
    """The script ran but its reply was lost: the caller hands the deliveries back, and since
    they were settled by the same script, nothing is delivered twice."""
    make, _url, client = redis_env
    source, dest = make("in", maxsize=100), make("out", maxsize=100)
    source.put(task(1))
    [delivery] = source.receive_many(1, timeout=1)
    script = dest._push_ack_script

    def ran_then_lost(*args, **kwargs):
        script(*args, **kwargs)
        raise redis.ConnectionError("connection reset while reading the reply")

    monkeypatch.setattr(dest, "_push_ack_script", ran_then_lost)
    with pytest.raises(Exception, match="cannot reach"):
        dest.put_encoded([dest.encode(delivery.message)], ack=[delivery])
    delivery.hand_back()
    assert dest.qsize() == 1 and source.qsize() == 0
    assert client.llen(source._consumer.inflight) == 0


def test_redis_deliveries_of_another_server_are_acked_after_the_push(redis_env):
    make, _url, client = redis_env
    base = require_service("redis")
    other_db = base.rsplit("/", 1)[0] + "/14"
    source = connect_queue(f"{other_db}?prefix=sftest-{uuid.uuid4().hex[:10]}", "in", 10)
    memory = connect_queue("memory://", "mem", 10)
    dest = make("out", maxsize=100)
    source.put(task(1))
    memory.put(task(2))
    deliveries = source.receive_many(1, timeout=1) + memory.receive_many(1, timeout=1)
    dest.put_encoded([dest.encode(d.message) for d in deliveries], ack=deliveries)
    assert dest.qsize() == 2
    assert client.connection_pool.connection_kwargs["db"] != 14
    assert redis.Redis.from_url(other_db).llen(source._consumer.inflight) == 0
    assert all(d._settled for d in deliveries)
    source.close()


def test_redis_full_is_answered_by_the_last_push(redis_env):
    make, _url, client = redis_env
    source, dest = make("in", maxsize=100), make("out", maxsize=2)
    source.put_many([task(i) for i in range(2)])
    for d in source.receive_many(2, timeout=1):
        dest.put_encoded([dest.encode(d.message)], timeout=0, ack=[d])
    assert dest.full()
    client.lpop(dest.key)                   # another consumer takes one
    time.sleep(0.02)                        # past the few milliseconds a pushed length is trusted
    assert not dest.full()


# -- the batched solo processor ------------------------------------------------------------------

@pytest.fixture
def projectdb(tmp_path):
    db = connect_projectdb(f"sqlite:///{tmp_path}/project.db")
    db.insert("handover", script=SCRIPT, status="RUNNING")
    yield db
    db.close()


def pair(i: int, url: str | None = None):
    t = task(i, url)
    return t, FetchResult(200, t.url, content=b"<html></html>", headers={"Content-Type": "text/html"})


def test_processor_batch_on_redis_sends_every_outcome_once_and_acks_all(redis_env, projectdb):
    make, _url, client = redis_env
    inq, status, result = make("f2p", maxsize=100), make("status", maxsize=100), make("p2r", maxsize=100)
    pairs = [pair(i) for i in range(RECEIVE_BATCH + 9)]           # more than one batch
    pairs[5] = pair(5, "http://127.0.0.1/bad")                      # its outcome cannot be sent
    inq.put_many(pairs)
    processor = Processor(inq, status, None, result, projectdb, Settings())
    processor.run(burst=True)

    got = result.get_many(100, timeout=1)
    assert sorted(m[0].taskid for m in got) == sorted(t.taskid for t, _ in pairs if "bad" not in t.url)
    assert all(m[0].track.process["ok"] and m[-1].url == m[0].url + "/next" for m in got)
    [failed] = status.get_many(100, timeout=1)       # the unsendable one fails alone, without its result
    assert isinstance(failed, StatusPack) and failed.url.endswith("/bad")
    assert "SerializationError" in failed.track.process["exception"]
    assert client.llen(inq._consumer.inflight) == 0 and inq.qsize() == 0
    assert processor.processed == len(pairs)


def test_processor_lists_its_batch_in_hand_and_stops_warm(redis_env, projectdb):
    make, _url, client = redis_env
    inq, result = make("f2p", maxsize=100), make("p2r", maxsize=100)
    pairs = [pair(i, f"http://127.0.0.1/slow/{i}") for i in range(4)]
    inq.put_many(pairs)
    processor = Processor(inq, make("status", maxsize=100), None, result, projectdb, Settings(), poll_interval=0.05)
    thread = threading.Thread(target=processor.run)
    thread.start()
    deadline = time.monotonic() + 5
    reserved = []
    while time.monotonic() < deadline and not reserved:
        reserved = processor.reserved_tasks()
        time.sleep(0.01)
    assert 1 <= len(reserved) <= 3 and {t.taskid for t in reserved} < {t.taskid for t, _ in pairs}
    processor.stop()                        # warm: the batch in hand is finished, nothing more taken
    thread.join(10)
    assert not thread.is_alive()
    done = result.get_many(10, timeout=1)
    assert len(done) >= 1 + len(reserved)
    assert len(done) + inq.qsize() == 4     # each either processed or still queued, never both
    assert client.llen(inq._consumer.inflight) == 0


def test_redis_put_many_that_fills_up_says_how_many_went(redis_env):
    make, _url, _client = redis_env
    dest = make("out", maxsize=3)
    dest.put(task(100))
    with pytest.raises(QueueFull) as caught:
        dest.put_many([task(i) for i in range(5)], timeout=0)
    assert caught.value.sent == 2
    assert [m.url for m in dest.get_many(10, timeout=1)][1:] == ["http://127.0.0.1/0", "http://127.0.0.1/1"]


def test_scheduler_batch_that_fills_a_redis_queue_keeps_the_rest_ready(tmp_path, redis_env, monkeypatch):
    """The scheduler's batch meets a redis queue that filled past the room it measured: the
    queue says how many it took, so the rest stay ready (not in flight until their lease)."""
    from test_scheduler import Harness

    from spiderflow.scheduler import scheduler as mod
    make, _url, _client = redis_env
    monkeypatch.setattr(mod, "_EAGER_WAIT", 0)
    h = Harness(tmp_path, lease_time=600)
    h.out_queue = make("scheduler2fetcher", maxsize=5)
    h.new_scheduler()
    h.add_project()
    h.start("p")
    h.sent()
    tasks = [h.new(f"http://a/{i}") for i in range(10)]
    monkeypatch.setattr(h.scheduler, "_room", lambda: 100)     # as if another producer filled it meanwhile
    h.run()
    p = h.scheduler.projects["p"]
    first = h.sent_normal()
    assert len(first) == 5
    assert (p.queue.processing_count, len(p.queue)) == (5, 5)   # the 5 it did not take are ready again
    h.run()
    second = h.sent_normal()
    assert sorted(t.taskid for t in first + second) == sorted(t.taskid for t in tasks)
    h.close()
