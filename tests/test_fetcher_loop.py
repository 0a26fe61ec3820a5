"""Fetcher.run: the queue loop (burst, backpressure, ack after put, warm/cold stop), counters, fetch_sync."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from spiderflow.exceptions import ConfigError
from spiderflow.fetcher import FetchCounters, Fetcher
from spiderflow.message import Fetch, FetchResult, Task, special_task
from spiderflow.queues import connect_queue
from spiderflow.queues.memory import MemoryQueue
from spiderflow.settings import Settings

SETTINGS = Settings(poolsize=4, timeout=10.0, connect_timeout=5.0)


def task(url: str, **options) -> Task:
    return Task.create("test", url, fetch=Fetch(**options))


def queues(maxsize_in: int = 0, maxsize_out: int = 0):
    return (connect_queue("memory://", "scheduler2fetcher", maxsize_in),
            connect_queue("memory://", "fetcher2processor", maxsize_out))


def drain(queue) -> list:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def test_burst_fetches_everything_and_exits(httpbin):
    inq, outq = queues()
    tasks = [task(f"{httpbin.url}/anything/{i}") for i in range(10)]
    tasks += [special_task("test", "on_start"), task(httpbin.url + "/status/404"), task("http://127.0.0.1:9/")]
    for t in tasks:
        inq.put(t)
    fetcher = Fetcher(inq, outq, SETTINGS)
    asyncio.run(asyncio.wait_for(fetcher.run(burst=True), 20))
    results = drain(outq)
    assert len(results) == len(tasks) and inq.empty()
    by_id = {t.taskid: r for t, r in results}
    assert all(isinstance(t, Task) and isinstance(r, FetchResult) for t, r in results)
    assert [by_id[t.taskid].status_code for t in tasks] == [200] * 10 + [200, 404, 599]
    assert by_id["on_start"].content == b"on_start"
    counters = fetcher.counters
    assert counters["5m"]["2xx"] == 11 and counters["5m"]["4xx"] == 1 and counters["5m"]["599"] == 1
    assert counters["1h"]["total"] == 13 and counters["5m"]["bytes"] > 0 and counters["5m"]["bytes/s"] > 0
    assert counters["in_flight"] == 0
    assert fetcher._transport is None  # the client is closed on exit


def test_burst_on_empty_queue_returns():
    inq, outq = queues()
    asyncio.run(asyncio.wait_for(Fetcher(inq, outq, SETTINGS).run(burst=True), 5))


def test_run_needs_queues():
    with pytest.raises(ConfigError):
        asyncio.run(Fetcher(None, None, SETTINGS).run())


def test_backpressure_when_outqueue_is_full(httpbin):
    inq, outq = queues(maxsize_out=1)
    for i in range(10):
        inq.put(task(f"{httpbin.url}/anything/{i}"))
    fetcher = Fetcher(inq, outq, SETTINGS.replace(poolsize=2))

    async def scenario():
        runner = asyncio.create_task(fetcher.run())
        await asyncio.sleep(0.5)
        # two were taken (the pool), one result went out, one waits for room: nothing more is pulled
        assert (inq.qsize(), outq.qsize(), fetcher.in_flight) == (8, 1, 1)
        await asyncio.sleep(0.3)
        assert inq.qsize() == 8
        fetcher.stop()
        first = await outq.aget(timeout=2)   # make room: the waiting result goes out, run() ends
        await asyncio.wait_for(runner, 5)
        return [first, *drain(outq)]

    results = asyncio.run(scenario())
    assert len(results) == 2 and inq.qsize() == 8


class AckRecordingQueue(MemoryQueue):
    """A memory queue whose deliveries carry the task id, recording when each is acked."""

    def __init__(self, name, outqueue):
        super().__init__(name)
        self.outqueue = outqueue
        self.acks: list[tuple[str, bool]] = []

    def _get(self, timeout):
        item, _ = super()._get(timeout)
        return item, item.taskid

    def _ack(self, tag):
        delivered = any(t.taskid == tag for t, _ in list(self.outqueue._items))
        self.acks.append((tag, delivered))


def test_delivery_acked_only_after_the_result_is_out(httpbin):
    outq = connect_queue("memory://", "fetcher2processor")
    inq = AckRecordingQueue("scheduler2fetcher", outq)
    tasks = [task(f"{httpbin.url}/anything/{i}") for i in range(5)]
    for t in tasks:
        inq.put(t)
    asyncio.run(Fetcher(inq, outq, SETTINGS).run(burst=True))
    assert sorted(inq.acks) == sorted((t.taskid, True) for t in tasks)


def test_messages_that_are_not_tasks(httpbin):
    inq, outq = queues()
    inq.put({"project": "test", "url": httpbin.url + "/get"})   # a task dict is accepted
    inq.put({"not": "a task"})                                   # dropped with an error log
    inq.put({"project": "bad name!", "url": httpbin.url + "/get"})  # dropped too
    asyncio.run(Fetcher(inq, outq, SETTINGS).run(burst=True))
    results = drain(outq)
    assert len(results) == 1 and results[0][1].status_code == 200


def test_warm_stop_finishes_in_flight(httpbin):
    inq, outq = queues()
    for i in range(10):
        inq.put(task(f"{httpbin.url}/delay/0.5?i={i}"))
    fetcher = Fetcher(inq, outq, SETTINGS.replace(poolsize=3))

    async def scenario():
        runner = asyncio.create_task(fetcher.run())
        await asyncio.sleep(0.2)
        fetcher.stop()
        await asyncio.wait_for(runner, 5)

    asyncio.run(scenario())
    results = drain(outq)
    assert len(results) == 3 and all(r.status_code == 200 for _, r in results)
    assert inq.qsize() == 7


def test_second_stop_is_cold(httpbin, caplog):
    inq, outq = queues()
    for i in range(4):
        inq.put(task(f"{httpbin.url}/delay/5?i={i}"))
    fetcher = Fetcher(inq, outq, SETTINGS)

    async def scenario():
        runner = asyncio.create_task(fetcher.run())
        await asyncio.sleep(0.2)
        fetcher.stop()
        fetcher.stop()
        started = time.monotonic()
        await asyncio.wait_for(runner, 3)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1
    assert outq.empty() and fetcher.in_flight == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # closing mid-transfer is quiet


def test_stop_from_another_thread():
    inq, outq = queues()
    fetcher = Fetcher(inq, outq, SETTINGS)
    timer = threading.Timer(0.2, fetcher.stop)
    timer.start()
    started = time.monotonic()
    asyncio.run(asyncio.wait_for(fetcher.run(), 5))
    assert time.monotonic() - started < 2


def test_in_flight_is_counted(httpbin):
    fetcher = Fetcher(None, None, SETTINGS)

    async def scenario():
        pending = asyncio.gather(*(fetcher.fetch(task(f"{httpbin.url}/delay/0.3?{i}")) for i in range(3)))
        await asyncio.sleep(0.1)
        during = fetcher.counters["in_flight"]
        await pending
        fetcher.close()
        return during

    assert asyncio.run(scenario()) == 3
    assert fetcher.in_flight == 0


# -- fetch_sync --------------------------------------------------------------------------------

def test_fetch_sync_without_a_loop(httpbin):
    fetcher = Fetcher(None, None, SETTINGS)
    assert fetcher.fetch_sync(task(httpbin.url + "/cookies/set?a=1")).cookies == {"a": "1"}
    results = []
    thread = threading.Thread(target=lambda: results.append(fetcher.fetch_sync(task(httpbin.url + "/get"))))
    thread.start()
    thread.join(10)
    assert results[0].status_code == 200


def test_fetch_sync_inside_a_running_loop(httpbin):
    fetcher = Fetcher(None, None, SETTINGS)

    async def caller():
        return fetcher.fetch_sync(task(httpbin.url + "/get"))

    assert asyncio.run(caller()).status_code == 200


def test_fetch_sync_while_run_loop_runs_in_another_thread(httpbin):
    inq, outq = queues()
    fetcher = Fetcher(inq, outq, SETTINGS)
    thread = threading.Thread(target=lambda: asyncio.run(fetcher.run()))
    thread.start()
    try:
        inq.put(task(httpbin.url + "/anything/queued"))
        assert fetcher.fetch_sync(task(httpbin.url + "/anything/sync")).status_code == 200
        queued = outq.get(timeout=5)
        assert queued[1].status_code == 200
    finally:
        fetcher.stop()
        thread.join(5)
    assert not thread.is_alive()


# -- counters ------------------------------------------------------------------------------------

def test_counters_windows_with_a_fake_clock():
    now = [10_000.0]
    counters = FetchCounters(clock=lambda: now[0])
    counters.record(200, 1000)
    counters.record(302, 0)
    now[0] += 400  # out of the 5-minute window, inside the hour
    counters.record(404, 10)
    counters.record(599, 0)
    counters.record(503, 0)
    snap = counters.snapshot(in_flight=2)
    assert {k: snap["5m"][k] for k in ("2xx", "3xx", "4xx", "5xx", "599")} == {
        "2xx": 0, "3xx": 0, "4xx": 1, "5xx": 1, "599": 1}
    assert snap["1h"]["2xx"] == 1 and snap["1h"]["total"] == 5 and snap["1h"]["bytes"] == 1010
    assert snap["5m"]["bytes/s"] == pytest.approx(10 / 300)
    assert snap["1h"]["bytes/s"] == pytest.approx(1010 / 400)
    assert snap["in_flight"] == 2
    now[0] += 3600
    assert counters.snapshot()["1h"]["total"] == 0 and counters.snapshot()["all"]["total"] == 5
