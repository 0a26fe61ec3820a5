"""One queue suite, run against every queue backend: memory, multiprocessing, and redis and
amqp on the local servers (skipped, or failed under SPIDERFLOW_REQUIRE_SERVICES=1, when down).
Redis tests use their own key prefix in DB 15, amqp tests their own queue names; both are
removed afterwards."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
import uuid

import pytest
from conftest import require_service

from spiderflow.exceptions import ConfigError, QueueClosed, QueueEmpty, QueueFull, SerializationError, UnknownSchemeError
from spiderflow.message import FetchResult, ResultPack, Task
from spiderflow.queues import QUEUE_NAMES, connect_queue, connect_queues

BACKENDS = ["memory://", "multiprocessing://", "redis://", "amqp://"]

# how long a get waits for a message just put (a server's round trip, a multiprocessing
# background writer's turn)
SETTLE = 2.0


def service_queue_url(scheme: str, tag: str) -> str:
    """The local server's URL for *scheme* (redis gets the key prefix *tag*)."""
    url = require_service(scheme)
    return f"{url}{'&' if '?' in url else '?'}prefix={tag}" if scheme == "redis" else url


def cleanup_service(scheme: str, url: str, tag: str, names) -> None:
    """Delete what a test made: redis keys under prefix *tag*, amqp queues *names*."""
    if scheme == "redis":
        import redis
        client = redis.Redis.from_url(url.split("?", 1)[0])
        keys = list(client.scan_iter(match=f"{tag}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    elif scheme == "amqp" and names:
        import pika
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        for name in names:
            ch.queue_delete(name)
        conn.close()


@pytest.fixture(params=BACKENDS)
def make_queue(request):
    scheme = request.param.split(":", 1)[0]
    tag = f"sftest-{uuid.uuid4().hex[:10]}"
    url = service_queue_url(scheme, tag) if scheme in ("redis", "amqp") else request.param
    made = []

    def make(maxsize=10, name="q"):
        if scheme == "amqp":
            name = f"{tag}-{name}"
        q = connect_queue(url, name, maxsize)
        made.append(q)
        return q

    yield make
    for q in made:
        q.close()
    cleanup_service(scheme, url, tag, {getattr(q, "queue_name", q.name) for q in made})


def task(i: int) -> Task:
    return Task(taskid=f"t{i}", project="p", url=f"http://127.0.0.1/{i}", updatetime=float(i))


def test_fifo_round_trip_of_every_message_kind(make_queue):
    q = make_queue()
    msgs = [task(1), (task(2), FetchResult(200, "http://a/", content=b"x")), ResultPack("p", "t", "u", {"a": 1})]
    for m in msgs:
        q.put(m)
    assert [q.get(timeout=SETTLE) for _ in msgs] == msgs


def test_bounded_put_nowait_raises_full(make_queue):
    q = make_queue(maxsize=2)
    q.put_nowait(task(1))
    q.put_nowait(task(2))
    with pytest.raises(QueueFull):
        q.put_nowait(task(3))
    started = time.monotonic()
    with pytest.raises(QueueFull):
        q.put(task(3), timeout=0.2)
    assert 0.15 <= time.monotonic() - started < 2
    assert q.get(timeout=SETTLE) == task(1)  # nothing was dropped or reordered
    q.put(task(3), timeout=SETTLE)
    assert [q.get(timeout=SETTLE) for _ in range(2)] == [task(2), task(3)]


def test_get_nowait_and_timeout_raise_empty(make_queue):
    q = make_queue()
    with pytest.raises(QueueEmpty):
        q.get_nowait()
    started = time.monotonic()
    with pytest.raises(QueueEmpty):
        q.get(timeout=0.2)
    assert 0.15 <= time.monotonic() - started < 2


def test_qsize_full_empty(make_queue):
    q = make_queue(maxsize=3)
    assert q.empty() and q.qsize() == 0
    q.put_many([task(i) for i in range(3)])
    deadline = time.monotonic() + SETTLE
    while q.qsize() < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert q.qsize() == 3 and q.full()


def test_batch_helpers(make_queue):
    q = make_queue(maxsize=50)
    q.put_many([task(i) for i in range(20)])
    got = q.get_many(8, timeout=SETTLE)
    while len(got) < 20:
        more = q.get_many(20 - len(got), timeout=SETTLE)
        assert more, "messages went missing"
        got += more
    assert got == [task(i) for i in range(20)]
    assert q.get_many(5, timeout=0.05) == []


def test_put_many_times_out_when_full(make_queue):
    q = make_queue(maxsize=3)
    with pytest.raises(QueueFull):
        q.put_many([task(i) for i in range(5)], timeout=0.2)


def test_receive_and_ack(make_queue):
    q = make_queue()
    q.put(task(1))
    delivery = q.receive(timeout=SETTLE)
    assert delivery.message == task(1)
    delivery.ack()
    delivery.ack()  # idempotent


def test_blocking_get_wakes_on_put(make_queue):
    q = make_queue()
    threading.Timer(0.1, q.put, args=(task(7),)).start()
    assert q.get(timeout=5) == task(7)


def test_blocking_put_wakes_on_get(make_queue):
    q = make_queue(maxsize=1)
    q.put(task(1))
    threading.Timer(0.1, q.get, kwargs={"timeout": 5}).start()
    q.put(task(2), timeout=5)
    assert q.get(timeout=SETTLE) == task(2)


def test_async_helpers_do_not_block_the_loop(make_queue):
    q = make_queue(maxsize=1)

    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.ensure_future(ticker())
        with pytest.raises(QueueEmpty):
            await q.aget(timeout=0.2)
        await q.aput(task(1))
        with pytest.raises(QueueFull):
            await q.aput(task(2), timeout=0.2)
        got = await q.aget(timeout=SETTLE)
        batch = await q.areceive_many(10, timeout=0.05)
        tick_task.cancel()
        return ticks, got, batch

    ticks, got, batch = asyncio.run(scenario())
    assert got == task(1) and batch == []
    assert ticks >= 10  # the loop kept running while we waited


def test_closed_queue_refuses(make_queue):
    q = make_queue()
    q.close()
    with pytest.raises(QueueClosed):
        q.put(task(1))
    with pytest.raises(QueueClosed):
        q.get_nowait()


def test_malformed_bytes_are_dropped_with_a_clear_error():
    q = connect_queue("multiprocessing://", "q", 10)
    q._put(b"\xc1garbage", None)
    q.put(task(1))
    with pytest.raises(SerializationError):
        q.get(timeout=SETTLE)
    assert q.get(timeout=SETTLE) == task(1)
    q._put(b"\xc1garbage", None)
    q.put(task(2))
    assert q.get_many(10, timeout=SETTLE) == [task(2)]  # batch helpers skip the bad one
    q.close()


def _child_producer(q, n):
    for i in range(n):
        q.put(task(i))


def test_multiprocessing_queue_crosses_processes():
    q = connect_queue("multiprocessing://", "q", 5)  # smaller than n: the child is held back
    proc = multiprocessing.get_context("fork").Process(target=_child_producer, args=(q, 30))
    proc.start()
    got = [q.get(timeout=10) for _ in range(30)]
    proc.join(10)
    assert got == [task(i) for i in range(30)] and proc.exitcode == 0
    q.close()


def page(tag: str, size: int) -> FetchResult:
    """A fetch result of about *size* bytes whose content says where it comes from."""
    return FetchResult(200, f"http://127.0.0.1/{tag}", content=tag.encode() + b"." * size)


def _child_big_producer(q, sizes):
    for i, size in enumerate(sizes):
        q.put(page(f"big{i}", size))


@pytest.mark.timeout(60)
def test_multiprocessing_large_messages_from_another_process():
    # 4 MB through a 2-slot queue whose pipe holds at most 1 MiB, one page larger than the pipe
    sizes = [300_000] * 10 + [2_500_000, 1000, 300_000]
    q = connect_queue("multiprocessing://", "q", 2)
    proc = multiprocessing.get_context("fork").Process(target=_child_big_producer, args=(q, sizes), daemon=True)
    proc.start()
    got = [q.get(timeout=20) for _ in sizes]
    proc.join(20)
    assert proc.exitcode == 0
    assert got == [page(f"big{i}", size) for i, size in enumerate(sizes)]
    assert q.empty()
    q.close()


@pytest.mark.timeout(60)
def test_multiprocessing_put_then_get_from_one_thread_beyond_the_pipe():
    # far more bytes than any pipe holds: the puts must not wait for a reader
    q = connect_queue("multiprocessing://", "q", 1000)
    singles = [page(f"one{i}", 20_000) for i in range(200)]
    batch = [page(f"many{i}", 20_000) for i in range(200)]
    for msg in singles:
        q.put(msg, timeout=0)
    q.put_many(batch, timeout=0)
    q.put(task(1), timeout=0)
    assert q.qsize() == 401
    got = [q.get(timeout=10) for _ in range(401)]
    assert got == singles + batch + [task(1)]
    assert q.empty()
    q.close()


def _child_put_all_then_exit(q, n, all_put):
    q.put_many([page(f"exit{i}", 100_000) for i in range(n)])
    all_put.set()   # most of these are still waiting for room in the pipe: exit must let them through


@pytest.mark.timeout(60)
def test_multiprocessing_producer_exit_flushes_what_the_pipe_could_not_take():
    q = connect_queue("multiprocessing://", "q", 100)
    ctx = multiprocessing.get_context("fork")
    all_put = ctx.Event()
    proc = ctx.Process(target=_child_put_all_then_exit, args=(q, 40, all_put), daemon=True)
    proc.start()
    assert all_put.wait(20)
    got = [q.get(timeout=20) for _ in range(40)]
    proc.join(20)
    assert proc.exitcode == 0
    assert got == [page(f"exit{i}", 100_000) for i in range(40)]
    q.close()


def _child_batch_producer(q, producer, rounds):
    for r in range(rounds):
        # batches of varied length, some large enough to be written in parts
        size = 150_000 if r % 7 == 0 else 100 * r
        q.put_many([page(f"p{producer}-r{r}-m{m}", size) for m in range(1 + r % 5)])


@pytest.mark.timeout(60)
def test_multiprocessing_producers_interleave_batches_without_corrupting_frames():
    producers, rounds = 3, 40
    expected = {p: [page(f"p{p}-r{r}-m{m}", 150_000 if r % 7 == 0 else 100 * r)
                    for r in range(rounds) for m in range(1 + r % 5)] for p in range(producers)}
    q = connect_queue("multiprocessing://", "q", 20)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_child_batch_producer, args=(q, p, rounds), daemon=True) for p in range(producers)]
    for proc in procs:
        proc.start()
    got: dict[int, list] = {p: [] for p in range(producers)}
    for _ in range(sum(len(msgs) for msgs in expected.values())):
        msg = q.get(timeout=20)
        got[int(msg.url.rsplit("/", 1)[1][1:].split("-", 1)[0])].append(msg)
    for proc in procs:
        proc.join(20)
    assert [proc.exitcode for proc in procs] == [0] * producers
    assert got == expected   # every message, whole, in each producer's order
    assert q.get_many(10, timeout=0.05) == []
    q.close()


def _child_put_on_request(q, requests, done, n):
    for i in range(n):
        requests.wait(10)
        requests.clear()
        q.put(task(i))
        done.set()


@pytest.mark.timeout(60)
def test_multiprocessing_get_nowait_finds_a_put_completed_in_another_process():
    q = connect_queue("multiprocessing://", "q", 5)
    ctx = multiprocessing.get_context("fork")
    requests, done = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_child_put_on_request, args=(q, requests, done, 50), daemon=True)
    proc.start()
    for i in range(50):
        done.clear()
        requests.set()
        assert done.wait(10)
        assert q.get(timeout=0) == task(i)
    proc.join(10)
    assert proc.exitcode == 0
    q.close()


@pytest.mark.timeout(60)
def test_multiprocessing_close_with_unwritten_frames_does_not_hang():
    q = connect_queue("multiprocessing://", "q-close", 0)
    q.put_many([page(f"c{i}", 20_000) for i in range(200)])    # more than the pipe holds: some wait
    writers = [t for t in threading.enumerate() if t.name == "queue-q-close-writer"]
    assert writers, "the frames the pipe could not take should wait in a background writer"
    q.close()   # nobody else reads this queue: the writer gives up instead of waiting forever
    writers[0].join(10)
    assert not writers[0].is_alive()


def test_multiprocessing_queue_is_not_pickled():
    import pickle
    q = connect_queue("multiprocessing://", "q", 5)
    with pytest.raises(TypeError, match="fork"):
        pickle.dumps(q)
    q.close()


def test_unknown_scheme_lists_known_ones():
    with pytest.raises(UnknownSchemeError) as info:
        connect_queue("kafka://127.0.0.1:9092", "q")
    for scheme in ("memory", "multiprocessing", "redis", "amqp"):
        assert scheme in str(info.value)
    with pytest.raises(ConfigError):
        connect_queue("no-scheme-here", "q")


def test_connect_queues_opens_the_five_pipeline_queues():
    queues = connect_queues("memory://", maxsize=3)
    assert tuple(queues) == QUEUE_NAMES
    assert all(q.maxsize == 3 for q in queues.values())
    queues["newtask_queue"].put(task(1))
    assert queues["status_queue"].empty()
