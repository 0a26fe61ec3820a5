"""Micro benches, like pyspider's: taskdb and queue operations per second, and message packing.

* taskdb (``--taskdb URL``, default sqlite in a temporary directory): ``insert_many`` and
  ``update_many`` in batches of 1000 (how the scheduler writes), ``get_many`` in batches of
  500 (how it deduplicates), and ``insert``, ``update`` and ``get`` one task per call.
* queues (``--queue URL``, repeatable; default ``memory://`` and ``multiprocessing://``):
  ``put`` then ``get`` one message at a time, ``put_many``/``get_many`` 100 at a time, with
  the Task a processor sends for a link.
* messages: ``pack`` and ``unpack`` of that Task and of a fetcher → processor pair.

Every figure is bounded by a count and by :data:`TIME_LIMIT` seconds.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from ..message import FetchResult, Process, Task, md5_taskid, pack, unpack
from ..queues import connect_queue
from ..storage import connect_taskdb

TIME_LIMIT = 5.0
PROJECT = "microbench"
DEFAULT_QUEUES = ("memory://", "multiprocessing://")


def _task(i: int, stamp: int = 0) -> Task:
    url = f"http://127.0.0.1:8080/links?total=10000&show=20&n={i}&run={stamp}"
    return Task(taskid=md5_taskid(url), project=PROJECT, url=url, process=Process(callback="index_page"),
                updatetime=time.time())


def _timed(run: Callable[[list], None], items: list, batch: int) -> tuple[float, int]:
    """(items per second, items done) of ``run(chunk)`` over *items* in chunks of *batch*, for at most TIME_LIMIT."""
    done = 0
    start = time.perf_counter()
    for first in range(0, len(items), batch):
        chunk = items[first:first + batch]
        run(chunk)
        done += len(chunk)
        if time.perf_counter() - start > TIME_LIMIT:
            break
    return done / max(time.perf_counter() - start, 1e-9), done


def _rate(run: Callable[[list], None], items: list, batch: int) -> float:
    return _timed(run, items, batch)[0]


def taskdb_micro(url: str | None, count: int) -> dict[str, float]:
    """taskdb operations per second on *url* (None: sqlite in a temporary directory)."""
    with tempfile.TemporaryDirectory(prefix="spiderflow-micro-") as tmp:
        taskdb = connect_taskdb(url or f"sqlite:///{os.path.join(tmp, 'task.db')}")
        try:
            taskdb.drop(PROJECT)
            stamp = int(time.time() * 1000)
            many = [_task(i, stamp) for i in range(count)]
            single = [_task(count + i, stamp) for i in range(min(count, 2000))]
            out = {
                "insert_many": _rate(taskdb.insert_many, many, 1000),
                "insert": _rate(lambda chunk: taskdb.insert(chunk[0]), single, 1),
            }
            for task in many:
                task.updatetime += 1
            out["update_many"] = _rate(taskdb.update_many, many, 1000)
            out["update"] = _rate(lambda chunk: taskdb.update(chunk[0]), single, 1)
            ids = [t.taskid for t in many]
            out["get_many"] = _rate(lambda chunk: taskdb.get_many(PROJECT, chunk, fields=["taskid", "status",
                                                                                       "lastcrawltime"]), ids, 500)
            out["get"] = _rate(lambda chunk: taskdb.get_task(PROJECT, chunk[0]), ids[:2000], 1)
            taskdb.drop(PROJECT)
            return out
        finally:
            taskdb.close()


def queue_micro(url: str, count: int) -> dict[str, float]:
    """Queue operations per second on the backend of *url*, one process producing and consuming."""
    queue = connect_queue(url, f"spiderflow-micro-{os.getpid()}", count)

    def get_many(chunk: list) -> None:
        want = len(chunk)
        while want:
            want -= len(queue.get_many(want, timeout=30))

    try:
        tasks = [_task(i) for i in range(count)]
        out: dict[str, float] = {}
        out["put"], n = _timed(lambda chunk: queue.put(chunk[0], timeout=30), tasks, 1)
        out["get"] = _rate(lambda chunk: queue.get(timeout=30), tasks[:n], 1)
        _drain(queue)
        out["put_many"], n = _timed(lambda chunk: queue.put_many(chunk, timeout=30), tasks, 100)
        out["get_many"] = _rate(get_many, tasks[:n], 100)
        return out
    finally:
        _drain(queue)
        queue.close()


def _drain(queue: Any) -> None:
    with contextlib.suppress(Exception):
        while queue.get_many(10_000, 0.2):
            pass


def message_micro(count: int) -> dict[str, float]:
    """pack/unpack per second of a new-link Task and of a fetcher → processor pair (a 1.5 KB page)."""
    task = _task(1)
    page = FetchResult(200, task.url, task.url, headers={"Content-Type": "text/html; charset=utf-8"},
                       content=b"<html>" + b"x" * 1500 + b"</html>", time=0.01)
    pair = (task, page)
    packed_task, packed_pair = pack(task), pack(pair)
    n = list(range(count))
    return {
        "pack_task": _rate(lambda chunk: [pack(task) for _ in chunk], n, 1000),
        "unpack_task": _rate(lambda chunk: [unpack(packed_task) for _ in chunk], n, 1000),
        "pack_pair": _rate(lambda chunk: [pack(pair) for _ in chunk], n, 1000),
        "unpack_pair": _rate(lambda chunk: [unpack(packed_pair) for _ in chunk], n, 1000),
    }


def _scheme(url: str) -> str:
    return url.split("://", 1)[0]


def run_micro(taskdb: str | None = None, queues: Iterable[str] = DEFAULT_QUEUES, count: int = 10_000,
              out: TextIO | None = None) -> dict[str, Any]:
    """Every micro bench; returns ``{"taskdb": {...}, "queues": {url: {...}}, "message": {...}}``."""
    def say(text: str) -> None:
        if out is not None:
            print(text, file=out, flush=True)

    result: dict[str, Any] = {"count": count}
    result["message"] = message_micro(count)
    for op, rate in result["message"].items():
        say(f"micro: message {op:<12} {rate:>12,.0f}/s")
    result["taskdb"] = {"url": _label(taskdb), **taskdb_micro(taskdb, count)}
    for op, rate in result["taskdb"].items():
        if op != "url":
            say(f"micro: taskdb {_scheme(result['taskdb']['url'])} {op:<12} {rate:>12,.0f}/s")
    result["queues"] = {}
    for url in queues:
        rates = queue_micro(url, count)
        result["queues"][_label(url)] = rates
        for op, rate in rates.items():
            say(f"micro: queue {_scheme(url)} {op:<12} {rate:>12,.0f}/s")
    return result


def _label(url: str | None) -> str:
    if url is None:
        return "sqlite (temporary file)"
    from ..exceptions import redact_url
    return redact_url(url)


def micro_line(result: dict[str, Any]) -> str:
    """The one stable summary line of the micro benches."""
    parts = [f"{op}/s={rate:.0f}" for op, rate in result["message"].items()]
    parts += [f"taskdb.{op}/s={rate:.0f}" for op, rate in result["taskdb"].items() if op != "url"]
    for url, rates in result["queues"].items():
        parts += [f"queue.{_scheme(url)}.{op}/s={rate:.0f}" for op, rate in rates.items()]
    return "bench-micro: " + " ".join(parts)
