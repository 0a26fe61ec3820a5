"""The amqp:// consumer (basic.consume with a prefetch-bounded buffer) against the local RabbitMQ:
the prefetch bound, redelivery of buffered and handed-out messages after kill -9 and after a
dropped connection, receive timeouts, publisher-only objects, get_many's acks, idle consumers.

Every test uses queue names of its own (deleted afterwards); every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from test_queues_reliable import collect

from spiderflow.exceptions import QueueEmpty
from spiderflow.message import Task

pytestmark = pytest.mark.timeout(60)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def task(i: int) -> Task:
    return Task(taskid=f"t{i}", project="p", url=f"http://127.0.0.1/{i}", updatetime=float(i))


def ids(msgs) -> list[int]:
    return sorted(int(m.taskid[1:]) for m in msgs)


@pytest.fixture
def env(amqp_env):
    """(make_queue, url, observe) for one test; observe(q) -> (ready, consumers) from a connection
    of the test's own. The queues are deleted afterwards (``amqp_env`` of conftest)."""
    make_bounded, url, ch = amqp_env

    def make(name="q", maxsize=100, url=url, **kwargs):
        return make_bounded(name, maxsize, url, **kwargs)

    def observe(q) -> tuple[int, int]:
        method = ch.queue_declare(q.queue_name, passive=True).method
        return method.message_count, method.consumer_count

    return make, url, observe


def wait_for(predicate, seconds: float = 5.0, every: float = 0.02) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def assert_nothing_more(q, seconds: float = 0.5) -> None:
    extra = q.receive_many(100, timeout=seconds)
    assert extra == [], f"unexpected deliveries: {[d.message.taskid for d in extra]}"


def test_a_consumer_never_holds_more_than_prefetch_unacked(env):
    make, url, observe = env
    producer = make()
    consumer = make(url=f"{url}?prefetch=30")
    producer.put_many([task(i) for i in range(100)])
    first = consumer.receive(timeout=2)   # one at a time: the consumer starts with a prefetch of 10
    assert wait_for(lambda: observe(producer)[0] == 90)
    held = [first, *consumer.receive_many(30, timeout=2)]  # bigger batches: it grows, up to 30 in all
    samples = []
    assert wait_for(lambda: samples.append(observe(producer)[0]) or samples[-1] == 70)
    assert min(samples) >= 70, samples     # never more than prefetch out of the queue
    while len(held) < 30:
        more = consumer.receive_many(30, timeout=1)
        assert more
        held += more
    assert len(held) == 30 and consumer.receive_many(30, timeout=0.2) == []
    time.sleep(0.1)
    assert observe(producer)[0] == 70
    held.pop().ack()                       # one acked: exactly one more comes
    more = consumer.receive_many(30, timeout=2)
    assert [d.message for d in more] == [task(30)]
    assert observe(producer)[0] == 69
    consumer.ack_many(held[:10])           # those of the first consumer (prefetch 10) too
    held = held[10:] + more
    while len(held) < 30:                  # room again, up to 30 and no more
        got = consumer.receive_many(30, timeout=1)
        assert got
        held += got
    assert consumer.receive_many(30, timeout=0.2) == []
    assert observe(producer)[0] == 59
    consumer.ack_many(held)
    assert len(collect(consumer, 59)) == 59
    assert observe(producer)[0] == 0


KILLED_CHILD = """
import os, signal, sys, time
from spiderflow.queues import connect_queue
q = connect_queue(sys.argv[1], sys.argv[2], 100)
got = q.receive_many(4, timeout=5)
deadline = time.monotonic() + 5
while len(q._buffer) < 6 and time.monotonic() < deadline:  # the rest of its prefetch of 10, buffered
    q._run(lambda ch: q._conn.process_data_events(0.05), None)
print(len(got), len(q._buffer), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_consumer_killed_with_buffered_and_handed_out_messages_loses_nothing(env):
    make, url, observe = env
    producer = make()
    producer.put_many([task(i) for i in range(25)])
    proc = subprocess.run([sys.executable, "-c", KILLED_CHILD, f"{url}?prefetch=10", producer.name], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.split() == ["4", "6"]   # 4 handed out, 6 buffered, none acked
    other = make()
    got = collect(other, 25)
    assert ids(got) == list(range(25))         # every message exactly once
    assert_nothing_more(other)
    assert observe(producer) == (0, 1)


def test_receive_waits_for_its_timeout_and_wakes_on_a_put(env):
    make, _url, _observe = env
    q = make()
    for timeout in (0.3, 0.3):                 # starting the consumer, then with one running
        started = time.monotonic()
        assert q.receive_many(5, timeout=timeout) == []
        assert timeout - 0.02 <= time.monotonic() - started < timeout + 0.15
    started = time.monotonic()
    with pytest.raises(QueueEmpty):
        q.receive(timeout=0)
    assert time.monotonic() - started < 0.1
    producer = make()
    threading.Timer(0.2, producer.put, args=(task(1),)).start()
    started = time.monotonic()
    assert q.receive(timeout=5).message == task(1)
    assert time.monotonic() - started < 0.6    # pushed, not polled for


def test_a_thread_can_put_while_another_waits_in_receive(env):
    make, _url, _observe = env
    q = make()
    q.receive_many(1, timeout=0)               # the consumer runs
    got = []
    waiter = threading.Thread(target=lambda: got.append(q.receive(timeout=5)))
    waiter.start()
    time.sleep(0.1)
    started = time.monotonic()
    q.put(task(7), timeout=5)                  # the waiting receive lets go of the lock in slices
    assert time.monotonic() - started < 0.5
    waiter.join(5)
    assert [d.message for d in got] == [task(7)]


def test_a_publisher_only_queue_object_holds_no_messages(env):
    make, _url, observe = env
    producer = make()
    producer.put_many([task(i) for i in range(5)])
    producer.put(task(5))
    assert producer.qsize() == 6
    time.sleep(0.2)
    assert observe(producer) == (6, 0)         # no consumer: nothing is pushed anywhere
    assert producer._consumer is None and not producer._buffer
    assert ids(collect(make(), 6)) == list(range(6))


def test_get_many_acks_what_it_returns_and_only_that(env):
    make, _url, observe = env
    q = make()
    q.put_many([task(i) for i in range(10)])
    held = q.receive(timeout=2)                # a consumer runs, with 9 more buffered
    assert held.message == task(0)
    assert wait_for(lambda: observe(q)[0] == 0)
    got = q.get_many(5, timeout=2)             # from the buffer, acked at once (one by one: t0 is out)
    assert got == [task(i) for i in range(1, 6)]
    assert q.get(timeout=2) == task(6)
    q.close()                                  # the rest go back: t0 (unacked) and t7..t9
    other = make()
    assert ids(collect(other, 4)) == [0, 7, 8, 9]
    assert_nothing_more(other)


def test_get_many_with_no_older_delivery_out_acks_with_one_multiple_ack(env, monkeypatch):
    make, _url, _observe = env
    q = make()
    q.put_many([task(i) for i in range(10)])
    q.receive(timeout=2).ack()                 # a consumer runs, nothing is out
    acks = []
    impl = q._ch._impl
    real = impl.basic_ack
    monkeypatch.setattr(impl, "basic_ack", lambda tag, multiple=False: (acks.append(multiple), real(tag, multiple)))
    assert q.get_many(4, timeout=2) == [task(i) for i in range(1, 5)]
    assert acks == [True]
    q.close()
    other = make()
    assert ids(collect(other, 5)) == [5, 6, 7, 8, 9]
    assert_nothing_more(other)


def test_get_many_without_a_consumer_starts_none(env):
    make, _url, observe = env
    q = make()
    q.put_many([task(i) for i in range(3)])
    assert q.get_many(5, timeout=2) == [task(0), task(1), task(2)]
    assert q._consumer is None and observe(q) == (0, 0)
    q.close()
    assert make().qsize() == 0


def _drop_by_socket(q) -> None:
    q._conn._impl._transport._sock.shutdown(socket.SHUT_RDWR)


def _drop_by_rabbitmqctl(q) -> None:
    if not shutil.which("rabbitmqctl"):
        pytest.skip("rabbitmqctl is not installed here")
    listed = subprocess.run(["rabbitmqctl", "list_connections", "pid", "client_properties", "-q",
                             "--no-table-headers"], capture_output=True, text=True, timeout=20, check=False)
    if listed.returncode:
        pytest.skip(f"rabbitmqctl cannot list connections: {listed.stderr.strip()[:200]}")
    ours = [line.split("\t", 1)[0] for line in listed.stdout.splitlines()
            if f'{{"connection_name","spiderflow {q.name} ' in line]
    assert len(ours) == 1, listed.stdout
    closed = subprocess.run(["rabbitmqctl", "close_connection", ours[0], "spiderflow test"],
                            capture_output=True, text=True, timeout=20, check=False)
    assert closed.returncode == 0, closed.stderr


@pytest.mark.parametrize("drop", [_drop_by_socket, _drop_by_rabbitmqctl], ids=["socket", "rabbitmqctl"])
def test_a_dropped_connection_redelivers_the_buffer_without_losing_or_repeating(env, drop):
    make, url, observe = env
    q = make(url=f"{url}?prefetch=10")
    q.put_many([task(i) for i in range(20)])
    taken = q.receive_many(5, timeout=2)
    assert len(taken) == 5
    assert len(q._buffer) == 5                 # the consumer's first push, in before receive_many returned
    for d in taken[:3]:
        d.ack()                                # t0..t2 are done; t3, t4 are out unacked; t5..t9 buffered
    drop(q)
    # Once the broker has put back what the connection held (so it has closed it), the buffer
    # is void: the next receive finds the connection closed and drops it. (A connection that
    # dies after a delivery was handed out is the ordinary at-least-once case: its ack fails,
    # RabbitMQ delivers it again.)
    assert wait_for(lambda: observe(q)[0] == 17, seconds=10)
    got = collect(q, 17)                       # the same object reconnects and consumes again
    assert ids(got) == list(range(3, 20))      # t3, t4 again (never acked), the buffer once, none lost
    assert_nothing_more(q)
    taken[3].ack()                             # a tag of the dead connection: quiet
    assert observe(q)[0] == 0


def test_an_idle_consumer_hands_its_buffer_back(env):
    make, _url, observe = env
    idle = make()
    idle.put_many([task(i) for i in range(5)])
    held = idle.receive(timeout=2)
    assert wait_for(lambda: observe(idle)[0] == 0)   # the other 4 are pushed to its buffer
    assert wait_for(lambda: observe(idle) == (4, 0), seconds=3)  # not asked for a second: handed back
    other = make()
    assert ids(collect(other, 4)) == [1, 2, 3, 4]
    held.ack()                                 # what it had handed out stays its own
    idle.put(task(9))
    assert idle.receive(timeout=2).message == task(9)  # and it consumes again when asked


def test_qsize_counts_the_buffer_and_this_objects_puts_at_once(env):
    make, _url, _observe = env
    q = make()
    q.put_many([task(i) for i in range(5)])
    assert q.qsize() == 5
    q.receive(timeout=2)
    assert wait_for(lambda: q.qsize() == 4, seconds=1)   # 4 buffered here, 0 ready
    q.put(task(5))
    assert q.qsize() == 5


def test_inspect_reserved_lists_the_prefetched_deliveries(env):
    from spiderflow.control.panels import reserved_messages
    make, url, observe = env
    producer, consumer = make(), make()
    producer.put_many([task(i) for i in range(20)])
    first = consumer.receive(timeout=2)      # the consumer starts; a prefetch of 10 comes in
    assert wait_for(lambda: observe(producer)[0] == 10)
    reserved = reserved_messages(consumer)
    assert [r["url"] for r in reserved] == [task(i).url for i in range(1, 10)]    # held, not handed out
    assert reserved_messages(producer) == []
    first.ack()
    rest = collect(consumer, 19)
    assert len(rest) == 19 and reserved_messages(consumer) == []
