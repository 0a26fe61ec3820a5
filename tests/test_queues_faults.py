"""multiprocessing:// queues survive a process killed in the middle of a frame.

Each test forks real processes that SIGKILL themselves at a chosen point of a put or a get
(half-way through writing a frame, with frames waiting in their background writer, half-way
through reading one); the other processes' messages must then arrive whole and in order,
no consumer may hang, and what the dead process held of the bound must come back.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
import zlib

import pytest

from spiderflow.exceptions import QueueEmpty
from spiderflow.message import FetchResult, Task, pack
from spiderflow.queues import connect_queue
from spiderflow.queues import multiprocessing as mpq

pytestmark = pytest.mark.timeout(60)

CTX = multiprocessing.get_context("fork")


def task(i: int) -> Task:
    return Task(taskid=f"t{i}", project="p", url=f"http://127.0.0.1/{i}", updatetime=float(i))


def page(tag: str, size: int) -> FetchResult:
    return FetchResult(200, f"http://127.0.0.1/{tag}", content=tag.encode() + b"." * size)


def run_child(target, *args) -> None:
    """Run *target* in a forked process and wait until it is gone; it must have been SIGKILLed."""
    proc = CTX.Process(target=target, args=args, daemon=True)
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL


def start_child(target, *args):
    proc = CTX.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def wait_until(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def assert_bound_restored(q) -> None:
    """Every slot is free again: qsize() is 0 (once a look for dead processes ran) and the
    queue takes maxsize messages without waiting."""
    q._next_reclaim = 0.0
    with pytest.raises(QueueEmpty):
        q.get(timeout=0.2)
    assert q.qsize() == 0 and q._in_transit.get_value() == 0
    q.put_many([task(i) for i in range(q.maxsize)], timeout=0)
    assert q.get_many(q.maxsize, timeout=5) == [task(i) for i in range(q.maxsize)]


def _put_and_die(q, msg) -> None:
    q.put(msg)   # the pipe takes part of it, the rest waits in this process's background writer
    os.kill(os.getpid(), signal.SIGKILL)


def _die_half_way_through_a_write(q, msg) -> None:
    real_write = os.write

    def write(fd, data):
        if fd == q._wfd and len(data) > 1000:
            real_write(fd, bytes(data[:len(data) // 2]))
            os.kill(os.getpid(), signal.SIGKILL)
        return real_write(fd, data)

    os.write = write
    q.put(msg)


def _producer(q, msgs) -> None:
    for msg in msgs:
        q.put(msg)


@pytest.mark.parametrize("after", ["less", "more"], ids=["truncated-frame", "crc-mismatch"])
def test_producer_killed_with_a_large_frame_half_written(after, caplog):
    # nobody reads yet: the 3 MB page fills the pipe, its rest waits in the producer's writer
    q = connect_queue("multiprocessing://", "q", 10, context=CTX)
    run_child(_put_and_die, q, page("dead", 3_000_000))
    assert q.qsize() == 1    # its slot is still counted...
    # ... then another producer's frames follow the broken one: fewer bytes than its missing
    # rest (the reader finds the pipe dry with no writer), or more (the CRC does not match)
    size = 200_000 if after == "less" else 1_500_000
    msgs = [task(1), page("big", size), task(2), page("big2", size), task(3)]
    proc = start_child(_producer, q, msgs)
    with caplog.at_level(logging.WARNING, logger="spiderflow.queues.multiprocessing"):
        got = [q.get(timeout=10) for _ in msgs]
    proc.join(10)
    assert proc.exitcode == 0
    assert got == msgs       # whole, in order
    assert "a process was killed while writing or reading them" in caplog.text
    assert "died holding 1 message slot(s) and 1 unwritten frame(s)" in caplog.text
    assert_bound_restored(q)
    q.close()


def test_producer_killed_half_way_through_writing_a_frame_itself():
    q = connect_queue("multiprocessing://", "q", 10, context=CTX)
    run_child(_die_half_way_through_a_write, q, page("dead", 50_000))
    q.put(task(1))
    q.put_many([task(2), task(3)])
    assert [q.get(timeout=10) for _ in range(3)] == [task(1), task(2), task(3)]
    assert_bound_restored(q)
    q.close()


def test_producer_killed_in_a_header_leaves_no_consumer_waiting():
    # a frame broken off after a few bytes, and nothing after it: a get returns on time
    q = connect_queue("multiprocessing://", "q", 10, context=CTX)

    def die_in_the_header(q):
        real_write = os.write

        def write(fd, data):
            if fd == q._wfd:
                real_write(fd, bytes(data[:7]))
                os.kill(os.getpid(), signal.SIGKILL)
            return real_write(fd, data)

        os.write = write
        q.put(task(0))

    run_child(die_in_the_header, q)
    started = time.monotonic()
    with pytest.raises(QueueEmpty):
        q.get(timeout=1.0)
    assert time.monotonic() - started < 5
    q.put(task(1))
    assert q.get(timeout=5) == task(1)
    assert_bound_restored(q)
    q.close()


def test_consumer_killed_half_way_through_reading_a_frame(caplog):
    q = connect_queue("multiprocessing://", "q", 10, context=CTX)

    def die_reading(q):
        real_read = os.read
        calls = []

        def read(fd, n):
            if fd == q._rfd:
                calls.append(n)
                if len(calls) == 2:        # the body: take half of it...
                    return real_read(fd, n // 2)
                if len(calls) == 3:        # ... and die before the rest
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_read(fd, n)

        os.read = read
        q.get(timeout=10)

    first = page("first", 500_000)
    q.put(first)
    q.put_many([task(1), task(2)])
    q.put(task(3))
    run_child(die_reading, q)
    with caplog.at_level(logging.WARNING, logger="spiderflow.queues.multiprocessing"):
        got = [q.get(timeout=10) for _ in range(3)]
    assert got == [task(1), task(2), task(3)]
    size = len(pack(first))
    assert f"dropped {size - size // 2} byte(s)" in caplog.text
    assert "died holding 1 message slot(s)" in caplog.text
    assert_bound_restored(q)
    q.close()


def test_consumer_killed_with_a_batch_in_its_buffer_gives_the_slots_back():
    q = connect_queue("multiprocessing://", "q", 10, context=CTX)

    def take_one_and_die(q):
        q.get(timeout=10)       # one of the batch of five; four stay in this process's buffer
        os.kill(os.getpid(), signal.SIGKILL)

    q.put_many([task(i) for i in range(5)])
    run_child(take_one_and_die, q)
    assert q.qsize() == 4
    assert_bound_restored(q)
    q.close()


def test_full_queue_with_slots_of_a_dead_producer_makes_room():
    # the dead producer's frame never reached the pipe: a producer waiting for room gets it back
    q = connect_queue("multiprocessing://", "q", 2, context=CTX)
    q.put(page("big", 3_000_000))    # fills the pipe; its rest waits in our writer
    run_child(_put_and_die, q, task(1))   # its frame waits behind ours, in the child's writer
    started = time.monotonic()
    q.put(task(2), timeout=5)        # the dead child's slot comes back
    assert time.monotonic() - started < 3
    assert [q.get(timeout=10) for _ in range(2)] == [page("big", 3_000_000), task(2)]
    q.close()


def test_garbage_between_frames_is_dropped_and_logged(caplog):
    q = connect_queue("multiprocessing://", "q", 10, context=CTX)
    q.put(task(1))
    os.write(q._wfd, b"not a frame" * 10 + q._marker + b"\0" * 30)   # a marker, no valid header
    q.put(task(2))
    with caplog.at_level(logging.WARNING, logger="spiderflow.queues.multiprocessing"):
        assert [q.get(timeout=5), q.get(timeout=5)] == [task(1), task(2)]
    assert "dropped 144 byte(s) that were not a whole frame (0 broken frame(s)" in caplog.text
    q.close()


def test_frames_carry_a_checked_header():
    frame = mpq._frame(b"abcd", [b"one", b"three"])
    size, count, crc = mpq._parse_header(b"abcd", frame)
    body = frame[mpq.HEADER_SIZE:]
    assert (size, count, crc) == (len(body), 2, zlib.crc32(body))
    assert mpq._split(body, count) == [b"one", b"three"]
    assert mpq._parse_header(b"abce", frame) is None          # another queue's marker
    broken = bytearray(frame)
    broken[6] ^= 1
    assert mpq._parse_header(b"abcd", bytes(broken)) is None  # the header's own CRC
    assert mpq._parse_header(b"abcd", frame[:10]) is None
