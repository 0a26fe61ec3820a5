"""Handing messages on: ``put_encoded(items, ack=deliveries)`` and the batched solo processor.

On redis, a push and the ack of the deliveries it answers run as one script when both queues
are on one server, so the messages are queued and the deliveries settled together or not at
all. The solo processor takes the deliveries already waiting (up to ``RECEIVE_BATCH``), sends
their outcomes with one call per output queue and acks them with the last call. Real Redis
(DB 15, a prefix of its own), real sqlite projectdb files; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
import redis
from conftest import require_service

from spiderflow.exceptions import QueueFull
from spiderflow.fetcher import Fetcher
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


# -- offer_encoded: what there is room for now, each page with its own delivery -------------------

def offered(dest, source, n: int):
    """Put n tasks on *source*, take them as deliveries and offer them to *dest*."""
    source.put_many([task(i) for i in range(n)])
    deliveries = source.receive_many(n, timeout=2)
    assert len(deliveries) == n
    return deliveries, dest.offer_encoded([dest.encode(d.message) for d in deliveries], deliveries)


def test_offer_on_a_memory_queue_takes_a_prefix_and_acks_only_that():
    source, dest = connect_queue("memory://", "in", 10), connect_queue("memory://", "out", 3)
    deliveries, queued = offered(dest, source, 5)
    assert queued == [True, True, True, False, False]
    assert [d._settled for d in deliveries] == queued
    assert [m.url for m in dest.get_many(10)] == [f"http://127.0.0.1/{i}" for i in range(3)]


def test_offer_on_redis_is_all_or_nothing(redis_env):
    make, _url, client = redis_env
    source, dest = make("in", maxsize=100), make("out", maxsize=6)
    deliveries, queued = offered(dest, source, 4)
    assert queued == [True] * 4 and all(d._settled for d in deliveries)
    assert client.llen(source._consumer.inflight) == 0
    deliveries, queued = offered(dest, source, 3)            # room for 2 of 3: none of them
    assert queued == [False] * 3 and not any(d._settled for d in deliveries)
    assert client.llen(source._consumer.inflight) == 3 and dest.qsize() == 4


def test_offer_on_amqp_acks_each_page_the_broker_took(amqp_env):
    make, _url, _ch = amqp_env
    source, dest = make("in", maxsize=100), make("out", maxsize=3)
    dest.put(task(100))
    deliveries, queued = offered(dest, source, 4)
    assert queued == [True, True, False, False]              # the broker refused what found no room
    assert [d._settled for d in deliveries] == queued
    for d in deliveries:
        d.hand_back()                                        # only the refused ones go back
    assert sorted(m.url for m in source.get_many(10, timeout=2)) == ["http://127.0.0.1/2", "http://127.0.0.1/3"]
    assert sorted(m.url for m in dest.get_many(10, timeout=2)) == [
        "http://127.0.0.1/0", "http://127.0.0.1/1", "http://127.0.0.1/100"]


def _hand_over_together(fetcher, deliveries, cancel: int | None = None):
    """Hand the deliveries' tasks over from one slot each, all in the same turn of the loop."""
    async def main():
        fetcher._loop = asyncio.get_running_loop()
        slots = [asyncio.ensure_future(fetcher._hand_over((d.message, FetchResult(200, d.message.url, d.message.url)),
                                                          d)) for d in deliveries]
        if cancel is not None:
            await asyncio.sleep(0)       # the slots have put their pages in the outbox
            slots[cancel].cancel()
        return await asyncio.gather(*slots, return_exceptions=True)
    return asyncio.run(main())


def test_fetcher_hands_a_turn_of_pages_over_in_one_offer(amqp_env, monkeypatch):
    make, _url, _ch = amqp_env
    source, dest = make("in", maxsize=100), make("out", maxsize=100)
    calls = []
    offer = dest.offer_encoded
    monkeypatch.setattr(dest, "offer_encoded", lambda items, acks: calls.append(len(items)) or offer(items, acks))
    source.put_many([task(i) for i in range(8)])
    deliveries = source.receive_many(8, timeout=2)
    fetcher = Fetcher(source, dest, Settings())
    assert _hand_over_together(fetcher, deliveries) == [True] * 8
    assert calls == [8]                                       # one publish-and-confirm for the turn
    assert all(d._settled for d in deliveries) and not source._unacked
    assert sorted(t.url for t, _r in dest.get_many(20, timeout=2)) == sorted(d.message.url for d in deliveries)


def test_fetcher_page_whose_slot_is_cancelled_is_not_sent(amqp_env):
    make, _url, _ch = amqp_env
    source, dest = make("in", maxsize=100), make("out", maxsize=100)
    source.put_many([task(i) for i in range(3)])
    deliveries = source.receive_many(3, timeout=2)
    got = _hand_over_together(Fetcher(source, dest, Settings()), deliveries, cancel=1)
    assert got[0] is True and got[2] is True and isinstance(got[1], asyncio.CancelledError)
    assert [d._settled for d in deliveries] == [True, False, True]
    assert [t.url for t, _r in dest.get_many(20, timeout=2)] == ["http://127.0.0.1/0", "http://127.0.0.1/2"]


def test_fetcher_offer_that_fails_reaches_every_slot(monkeypatch):
    from spiderflow.exceptions import QueueClosed
    source, dest = connect_queue("memory://", "in", 10), connect_queue("memory://", "out", 10)
    source.put_many([task(i) for i in range(2)])
    deliveries = source.receive_many(2)
    dest.close()
    got = _hand_over_together(Fetcher(source, dest, Settings()), deliveries)
    assert [type(g) for g in got] == [QueueClosed, QueueClosed]
    assert not any(d._settled for d in deliveries)
