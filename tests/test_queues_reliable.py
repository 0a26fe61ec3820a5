"""The reliable hand-off of the redis:// and amqp:// queues: redelivery after a consumer dies,
ack/reject, exact bounds under concurrent producers, reconnects, and URL/connection errors.

Runs against the local Redis (DB 15, a key prefix of its own) and RabbitMQ (queue names of
its own); everything a test makes is removed afterwards. Every wait is bounded in time.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import require_service

from spiderflow.exceptions import ConfigError, QueueEmpty, QueueError, QueueFull, SerializationError
from spiderflow.message import Task
from spiderflow.queues import connect_queue

pytestmark = pytest.mark.timeout(60)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A consumer that takes messages without acking them and is then killed with SIGKILL.
CHILD = """
import os, signal, sys
from spiderflow.queues import connect_queue
q = connect_queue(sys.argv[1], sys.argv[2], int(sys.argv[4]))
got = []
for _ in range(50):
    got += q.receive_many(int(sys.argv[3]) - len(got), timeout=0.1)
    if len(got) >= int(sys.argv[3]):
        break
print(len(got), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def task(i: int) -> Task:
    return Task(taskid=f"t{i}", project="p", url=f"http://127.0.0.1/{i}", updatetime=float(i))


def run_dying_consumer(url: str, name: str, count: int, maxsize: int) -> int:
    """Run CHILD in its own process; how many messages it held when it was killed."""
    proc = subprocess.run([sys.executable, "-c", CHILD, url, name, str(count), str(maxsize)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return int(proc.stdout.strip())


def collect(q, want: int, seconds: float = 10.0) -> list:
    """Receive-and-ack until *want* messages came or *seconds* passed."""
    got: list = []
    deadline = time.monotonic() + seconds
    while len(got) < want and time.monotonic() < deadline:
        for d in q.receive_many(want - len(got), timeout=0.1):
            got.append(d.message)
            d.ack()
    return got


# -- redis ---------------------------------------------------------------------------------

def simulate_death(q) -> None:
    """The consumer stops answering without closing: its heartbeat goes, its in-flight list stays."""
    consumer = q._consumer
    consumer.stop.set()
    q._client.delete(consumer.heartbeat)
    q._consumer = None  # so that close() hands nothing back


def test_redis_killed_consumer_messages_come_back_exactly_once(redis_env):
    make, url, client = redis_env
    producer = make()
    producer.put_many([task(i) for i in range(3)])
    assert run_dying_consumer(f"{url}&visibility_timeout=1", "q", 2, producer.maxsize) == 2
    assert producer.qsize() == 1  # two are in the dead consumer's in-flight list
    consumer = make(visibility_timeout=1)
    got = collect(consumer, 3, seconds=10)
    assert sorted(m.taskid for m in got) == ["t0", "t1", "t2"]
    assert consumer.get_many(10, timeout=1.2) == []  # another reclaim round finds nothing more
    assert client.smembers(f"{producer.key}:consumers") == {consumer._consumer.id.encode()}


def test_redis_two_reclaimers_do_not_duplicate(redis_env):
    make, _url, _client = redis_env
    dead = make(maxsize=100, visibility_timeout=1)
    dead.put_many([task(i) for i in range(50)], timeout=5)
    held = dead.receive_many(50, timeout=1)
    assert len(held) == 50 and dead.qsize() == 0
    simulate_death(dead)
    b, c = make(visibility_timeout=1), make(visibility_timeout=1)
    got: list = []
    lock = threading.Lock()

    def drain(q):
        deadline = time.monotonic() + 5
        while len(got) < 50 and time.monotonic() < deadline:
            for d in q.receive_many(10, timeout=0.1):
                d.ack()
                with lock:
                    got.append(d.message.taskid)

    threads = [threading.Thread(target=drain, args=(q,)) for q in (b, c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert sorted(got) == sorted(f"t{i}" for i in range(50))  # every one, none twice


def test_redis_ack_removes_for_good_and_reject_requeues_at_the_head(redis_env):
    make, _url, client = redis_env
    q = make(visibility_timeout=1)
    q.put_many([task(1), task(2), task(3)])
    first = q.receive(timeout=1)
    first.ack()
    second = q.receive(timeout=1)
    assert second.message == task(2)
    second.reject()  # back at the head
    again = q.receive(timeout=1)
    assert again.message == task(2)
    again.reject(requeue=False)  # dropped
    assert client.llen(q._consumer.inflight) == 0
    simulate_death(q)
    other = make(visibility_timeout=1)
    assert other.receive(timeout=1).message == task(3)  # its first receive reclaimed the dead one's list
    assert other.get_many(10, timeout=0.3) == []  # t1 acked, t2 dropped: neither came back


def test_redis_close_hands_back_unacked_in_order(redis_env):
    make, _url, client = redis_env
    q = make()
    q.put_many([task(i) for i in range(4)])
    held = q.receive_many(3, timeout=1)
    held[0].ack()
    inflight = q._consumer.inflight
    q.close()
    held[1].ack()  # after close: logged, not raised; the message was handed back
    assert client.llen(inflight) == 0
    other = make()
    assert other.get_many(10, timeout=1) == [task(1), task(2), task(3)]


def test_redis_slow_consumer_keeps_its_messages(redis_env):
    make, _url, _client = redis_env
    slow = make(visibility_timeout=0.6)
    slow.put(task(1))
    delivery = slow.receive(timeout=1)
    other = make(visibility_timeout=0.6)
    with pytest.raises(QueueEmpty):
        other.receive(timeout=1.8)  # 3 visibility timeouts: the heartbeat thread kept it ours
    delivery.ack()
    with pytest.raises(QueueEmpty):
        other.receive(timeout=0.4)


def test_redis_concurrent_producers_never_exceed_maxsize(redis_env):
    make, _url, client = redis_env
    maxsize = 5
    q = make(maxsize=maxsize)
    key = q.key
    stop = threading.Event()
    accepted = [0, 0]
    peak = [0]

    def produce(slot):
        mine = make(maxsize=maxsize)
        for i in range(3000):
            if stop.is_set():
                return
            try:
                mine.put_nowait(task(slot * 10000 + i))
                accepted[slot] += 1
            except QueueFull:
                pass

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], client.llen(key))

    threads = [threading.Thread(target=produce, args=(s,)) for s in (0, 1)] + [threading.Thread(target=watch)]
    for t in threads:
        t.start()
    drained = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and len(drained) < 400:
        drained += q.get_many(2, timeout=0)
        time.sleep(0.002)
    stop.set()
    for t in threads:
        t.join(10)
    left = q.get_many(100, timeout=0)
    assert peak[0] <= maxsize and q.qsize() == 0
    assert len(drained) + len(left) == sum(accepted)  # nothing accepted was lost
    assert len(drained) > 0 and sum(accepted) > maxsize


def test_redis_lost_reply_orphans_are_handed_back(redis_env):
    make, _url, client = redis_env
    q = make(visibility_timeout=1)
    q.put(task(1))
    q.put(task(2))
    kept = q.receive(timeout=1)  # a Delivery we hold
    client.lmove(q.key, q._consumer.inflight, "LEFT", "RIGHT")  # as if a receive lost its reply
    q._lost_replies, q._next_reclaim = True, 0.0
    again = q.receive(timeout=1)  # this receive's sweep put the orphan back; the held one stayed
    assert again.message == task(2)
    kept.ack()
    again.ack()
    assert client.llen(q._consumer.inflight) == 0


def test_redis_malformed_message_is_dropped(redis_env):
    make, _url, client = redis_env
    q = make()
    client.rpush(q.key, b"\xc1garbage")
    q.put(task(1))
    with pytest.raises(SerializationError):
        q.receive(timeout=1)
    assert q.receive(timeout=1).message == task(1)
    assert client.llen(q._consumer.inflight) == 1  # only the good one, not acked yet


@pytest.mark.parametrize("url, words", [
    ("redis://127.0.0.1:6379/abc", "database number"),
    ("redis://127.0.0.1:6379/15?colour=red", "colour"),
    ("redis://127.0.0.1:6379/15?visibility_timeout=-1", "visibility_timeout"),
    ("redis://127.0.0.1:port/15", "port"),
])
def test_redis_bad_url_is_a_config_error(url, words):
    with pytest.raises(ConfigError, match=words):
        connect_queue(url, "q")


def test_redis_refused_connection_is_clear_and_redacted():
    with pytest.raises(QueueError) as info:
        connect_queue("redis://:s3cret@127.0.0.1:1/0", "q")
    assert "127.0.0.1:1" in str(info.value) and "***" in str(info.value)
    assert "s3cret" not in str(info.value) and "s3cret" not in repr(info.value.__cause__)


def _fork_child_uses(q, out):
    q.put(task(7))
    out.put(q.get(timeout=5).taskid)
    q.close()


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_queue_made_before_fork_works_in_parent_and_child(scheme, request):
    make = request.getfixturevalue(f"{scheme}_env")[0]
    q = make(name="forked")
    q.put(task(1))
    assert q.get(timeout=2) == task(1)  # the parent's connection is live before the fork
    ctx = multiprocessing.get_context("fork")
    out = ctx.SimpleQueue()
    child = ctx.Process(target=_fork_child_uses, args=(q, out))
    child.start()
    child.join(20)
    assert child.exitcode == 0 and out.get() == "t7"
    q.put(task(2))
    assert q.get(timeout=2) == task(2)  # the child did not break the parent's connection


# -- amqp ----------------------------------------------------------------------------------

def _socket_of(q) -> socket.socket:
    return q._conn._impl._transport._sock


def test_amqp_killed_consumer_messages_are_redelivered(amqp_env):
    make, url, _ch = amqp_env
    q = make()
    q.put_many([task(1), task(2)])
    assert run_dying_consumer(url, q.name, 2, q.maxsize) == 2
    assert collect(q, 2, seconds=10) == [task(1), task(2)]


def test_amqp_unacked_message_redelivered_after_abrupt_close_and_stale_ack_is_quiet(amqp_env):
    make, _url, _ch = amqp_env
    first, second = make(), make()
    first.put(task(1))
    delivery = first.receive(timeout=2)
    _socket_of(first).shutdown(socket.SHUT_RDWR)  # the connection dies under the consumer
    assert collect(second, 1, seconds=10) == [task(1)]
    delivery.ack()  # a tag of the dead connection: logged at debug, not raised
    first.put(task(2))  # the next call reconnects and carries on
    assert first.get(timeout=2) == task(2)


def test_amqp_full_queue_is_queue_full_and_loses_nothing(amqp_env):
    make, _url, _ch = amqp_env
    n = 5
    q = make(maxsize=n)
    with pytest.raises(QueueFull):
        q.put_many([task(i) for i in range(n + 1)], timeout=0.3)
    with pytest.raises(QueueFull):
        q.put_nowait(task(99))
    assert q.qsize() == n and q.full()
    assert collect(q, n + 1, seconds=1) == [task(i) for i in range(n)]
    q.put(task(n), timeout=2)
    assert q.get(timeout=2) == task(n)


def test_amqp_reject_requeues_and_reject_without_requeue_drops(amqp_env):
    make, _url, _ch = amqp_env
    q = make()
    q.put_many([task(1), task(2)])
    d = q.receive(timeout=2)
    d.reject()
    again = q.receive(timeout=2)
    assert again.message == task(1)
    again.reject(requeue=False)
    assert collect(q, 2, seconds=1) == [task(2)]


def test_amqp_malformed_message_is_dropped(amqp_env):
    make, _url, ch = amqp_env
    q = make()
    # Two connections give no order between them: confirm the garbage is queued before the good one.
    ch.confirm_delivery()
    ch.basic_publish("", q.queue_name, b"\xc1garbage")
    q.put(task(1))
    with pytest.raises(SerializationError):
        q.receive(timeout=2)
    assert q.get_many(10, timeout=1) == [task(1)]
    q.close()
    assert make().qsize() == 0  # the bad one was acked away, not requeued on close


def test_amqp_prefetch_caps_unacked_deliveries(amqp_env):
    make, url, _ch = amqp_env
    q = make(url=f"{url}?prefetch=2")
    q.put_many([task(i) for i in range(5)])
    held = q.receive_many(5, timeout=1)
    assert len(held) == 2
    assert q.receive_many(5, timeout=0) == []
    held[0].ack()
    assert [d.message for d in q.receive_many(5, timeout=0)] == [task(2)]


def test_amqp_declared_with_another_maxsize_is_a_config_error(amqp_env):
    make, _url, _ch = amqp_env
    make(name="sized", maxsize=5)
    with pytest.raises(ConfigError, match="maxsize") as info:
        make(name="sized", maxsize=7)
    assert "delete_queue" in str(info.value)


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=20, check=False)


def test_amqp_reconnects_after_the_broker_closes_the_connection(amqp_env):
    if not shutil.which("rabbitmqctl"):
        pytest.skip("rabbitmqctl is not installed here")
    make, _url, _ch = amqp_env
    q = make()
    q.put(task(1))
    listed = _rabbitmqctl("list_connections", "pid", "client_properties", "-q", "--no-table-headers")
    if listed.returncode:
        pytest.skip(f"rabbitmqctl cannot list connections: {listed.stderr.strip()[:200]}")
    ours = [line.split("\t", 1)[0] for line in listed.stdout.splitlines()
            if f'{{"connection_name","spiderflow {q.name} ' in line]
    assert len(ours) == 1, listed.stdout
    assert _rabbitmqctl("close_connection", ours[0], "spiderflow test").returncode == 0
    time.sleep(0.2)
    q.put(task(2), timeout=5)
    assert q.get_many(5, timeout=2) == [task(1), task(2)]


@pytest.mark.parametrize("url, words", [
    ("amqp://guest:guest@127.0.0.1:5672/%2F?prefetch=0", "prefetch"),
    ("amqp://guest:guest@127.0.0.1:5672/%2F?heartbeat=5", "heartbeat"),
    ("amqp://guest:guest@127.0.0.1:port/", "port"),
])
def test_amqp_bad_url_is_a_config_error(url, words):
    with pytest.raises(ConfigError, match=words):
        connect_queue(url, "q")


def test_amqp_refused_connection_and_bad_password_are_clear_and_redacted():
    with pytest.raises(QueueError) as info:
        connect_queue("amqp://guest:s3cret@127.0.0.1:1/%2F", "q")
    assert "127.0.0.1:1" in str(info.value) and "s3cret" not in str(info.value)
    assert "s3cret" not in repr(info.value.__cause__)
    url = require_service("amqp")
    bad = url.replace("guest:guest@", "guest:wrong-s3cret@")
    with pytest.raises(ConfigError) as info:
        connect_queue(bad, "q")
    assert "credentials" in str(info.value) and "s3cret" not in str(info.value)
