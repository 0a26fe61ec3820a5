"""The scheduler lock: a second scheduler on one cluster is refused, a killed one's lock comes free.

The lock on each backend (``spiderflow.queues.locks``) against the local Redis and RabbitMQ,
then the commands: ``spiderflow scheduler`` twice on one redis or amqp queue URL, and
``spiderflow all`` twice on one data directory, with the first one killed by SIGKILL.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
from conftest import require_service

from spiderflow.exceptions import ConfigError, redact_url
from spiderflow.queues import QUEUE_NAMES, acquire_scheduler_lock
from spiderflow.queues.locks import FileSchedulerLock, NullSchedulerLock

pytestmark = pytest.mark.timeout(90)

CTX = multiprocessing.get_context("fork")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ME = f"pid {os.getpid()} on host {socket.gethostname()}, since "


def tag() -> str:
    return f"sftest-{uuid.uuid4().hex[:10]}"


def _hold_until_killed(ready, url, options) -> None:
    acquire_scheduler_lock(url, **options)
    ready.set()
    time.sleep(60)


def held_by_a_child(url: str, **options):
    """A forked process that holds the lock (kill it with SIGKILL)."""
    ready = CTX.Event()
    proc = CTX.Process(target=_hold_until_killed, args=(ready, url, options), daemon=True)
    proc.start()
    assert ready.wait(20)
    return proc


def kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)


@pytest.fixture
def redis_prefix():
    import redis
    url = require_service("redis")
    prefix = tag()
    yield url, prefix
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))   # the lock, and the scheduler's queues
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def amqp_prefix():
    import pika
    url = require_service("amqp")
    prefix = tag()
    yield url, prefix
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    for name in (*QUEUE_NAMES, "scheduler.holder"):     # the scheduler commands declare the pipeline's queues
        ch.queue_delete(f"{prefix}.{name}")
    conn.close()


# -- the lock on each backend -----------------------------------------------------------------

def test_memory_queues_need_no_lock():
    lock = acquire_scheduler_lock("memory://")
    assert isinstance(lock, NullSchedulerLock)
    acquire_scheduler_lock("memory://").release()
    lock.release()


def test_data_directory_lock_refuses_a_second_and_frees_on_kill(tmp_path):
    lock = acquire_scheduler_lock("multiprocessing://", data_dir=str(tmp_path / "data"))
    assert isinstance(lock, FileSchedulerLock)
    with pytest.raises(ConfigError, match="another scheduler is already running on this cluster") as info:
        acquire_scheduler_lock("multiprocessing://", data_dir=str(tmp_path / "data"))
    assert ME in str(info.value) and "--data-dir" in str(info.value) and str(tmp_path / "data") in str(info.value)
    lock.release()
    proc = held_by_a_child("multiprocessing://", data_dir=str(tmp_path / "data"))
    with pytest.raises(ConfigError, match=f"pid {proc.pid} on host"):
        acquire_scheduler_lock("multiprocessing://", data_dir=str(tmp_path / "data"))
    kill(proc)
    acquire_scheduler_lock("multiprocessing://", data_dir=str(tmp_path / "data")).release()


def test_redis_lock_refuses_while_renewed_and_waits_out_a_killed_holder(redis_prefix):
    url, prefix = redis_prefix
    lock = acquire_scheduler_lock(url, prefix, ttl=2, renew=0.3)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="another scheduler is already running on this cluster") as info:
        acquire_scheduler_lock(url, prefix, ttl=2, wait=10)
    assert time.monotonic() - started < 3          # refused once it saw the holder renew the key
    message = str(info.value)
    assert ME in message and f"redis://127.0.0.1:6379/15 prefix {prefix}" in message
    assert "use another --queue-prefix" in message
    lock.release()
    acquire_scheduler_lock(url, prefix, ttl=2).release()   # released: free at once
    proc = held_by_a_child(url, prefix=prefix, ttl=30, renew=0.3)
    kill(proc)
    started = time.monotonic()
    lock = acquire_scheduler_lock(url, prefix, ttl=2)   # a dead process of this machine: taken over at once
    assert time.monotonic() - started < 2
    lock.release()


def test_redis_lock_of_a_silent_holder_elsewhere_is_waited_for(redis_prefix):
    import redis
    url, prefix = redis_prefix
    client = redis.Redis.from_url(url)
    client.set(f"{prefix}:scheduler:lock", '{"pid": 1, "host": "elsewhere", "boot": "another-kernel"}', px=1500)
    started = time.monotonic()
    lock = acquire_scheduler_lock(url, prefix, ttl=2)   # its key expires: it was not renewed
    assert 1.0 < time.monotonic() - started < 4
    lock.release()
    client.close()


def test_redis_lock_held_without_expiry_is_refused_at_once(redis_prefix):
    import redis
    url, prefix = redis_prefix
    client = redis.Redis.from_url(url)
    client.set(f"{prefix}:scheduler:lock", '{"pid": 1, "host": "elsewhere", "since": "then"}')
    with pytest.raises(ConfigError, match="pid 1 on host elsewhere, since then; the key has no expiry"):
        acquire_scheduler_lock(url, prefix)
    client.close()


def test_redis_lock_taken_over_by_another_stops_its_holder(redis_prefix):
    import redis
    url, prefix = redis_prefix
    lock = acquire_scheduler_lock(url, prefix, ttl=2, renew=0.2)
    stopped = CTX.Event()
    lock.when_lost(stopped.set)
    client = redis.Redis.from_url(url)
    client.set(f"{prefix}:scheduler:lock", '{"pid": 2, "host": "usurper"}', px=10_000)
    assert stopped.wait(5) and lock.lost
    lock.release()
    assert client.get(f"{prefix}:scheduler:lock") is not None   # not ours: left alone
    client.close()


def test_amqp_lock_refuses_a_second_and_frees_on_kill(amqp_prefix):
    url, prefix = amqp_prefix
    lock = acquire_scheduler_lock(url, prefix)
    with pytest.raises(ConfigError, match="another scheduler is already running on this cluster") as info:
        acquire_scheduler_lock(url, prefix, wait=0.5)
    assert ME in str(info.value) and f"prefix {prefix}" in str(info.value)
    lock.release()
    acquire_scheduler_lock(url, prefix).release()
    proc = held_by_a_child(url, prefix=prefix)
    with pytest.raises(ConfigError, match=f"pid {proc.pid} on host"):
        acquire_scheduler_lock(url, prefix, wait=0.5)
    kill(proc)
    acquire_scheduler_lock(url, prefix).release()    # RabbitMQ dropped the dead holder's queue


# -- the commands -------------------------------------------------------------------------------

def spiderflow(tmp_path, name: str, *args: str) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "wb")   # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "spiderflow.cli", "--data-dir", str(tmp_path / name), *args],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_log(tmp_path, name: str, text: str, seconds: float = 40.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        log = (tmp_path / f"{name}.log").read_text(errors="replace")
        if text in log:
            return log
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {name}.log:\n{log}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_second_scheduler_command_is_refused_until_the_first_is_killed(scheme, tmp_path, request):
    url, prefix = request.getfixturevalue(f"{scheme}_prefix")
    args = ["scheduler", "--queue", f"{url}?prefix={prefix}", "--scheduler-port", "0"]
    first = spiderflow(tmp_path, "first", *args)
    procs = [first]
    try:
        wait_for_log(tmp_path, "first", "scheduler started")
        second = spiderflow(tmp_path, "second", *args)
        procs.append(second)
        assert second.wait(30) != 0
        log = (tmp_path / "second.log").read_text()
        assert f"another scheduler is already running on this cluster ({redact_url(url)} prefix {prefix}: " \
               f"pid {first.pid} on host" in log
        assert "Traceback" not in log
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        third = spiderflow(tmp_path, "third", *args)    # redis: its holder is a dead process of this machine
        procs.append(third)
        wait_for_log(tmp_path, "third", "scheduler started")
        assert third.poll() is None
    finally:
        for proc in procs:
            stop(proc)


def test_second_all_on_one_data_directory_gets_no_scheduler(tmp_path):
    # `all` starts its scheduler through the same lock: the second one's scheduler is refused
    args = ["all", "--no-webui", "--scheduler-port", "0"]
    first = spiderflow(tmp_path, "same", *args)
    second = None
    try:
        wait_for_log(tmp_path, "same", "scheduler started")
        second = subprocess.Popen([sys.executable, "-m", "spiderflow.cli", "--data-dir", str(tmp_path / "same"), *args],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 40
        out = b""
        os.set_blocking(second.stdout.fileno(), False)
        while b"another scheduler is already running" not in out and time.monotonic() < deadline:
            out += second.stdout.read() or b""
            time.sleep(0.2)
        assert b"another scheduler is already running on this cluster (data directory " in out
        assert first.poll() is None
    finally:
        if second is not None:
            stop(second)
        stop(first)
