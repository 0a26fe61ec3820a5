"""What a job produced: its items (results) and its log, streamed from resultdb and taskdb.

A job's window is [start_time, end_time or now]: its **items** are the project's results
updated in it, as JSON lines ``{"taskid", "url", "result", "updatetime"}`` (the records of
``spiderflow export -f jsonl``); its **log** is the job's own events merged by time with, for
each of the project's tasks updated in it, a line naming the task and its outcome followed
by its ``track.process.logs``, ``track.fetch.error`` and ``track.process.exception``. Both
are read in chunks, each a short index-seeking query, so neither is ever held whole. Only
one job of a project runs at a time, so what changed in the window is the job's.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from ..message import Track
from ..storage.codec import loads_part, loads_result
from ..storage.resultdb import ORDER_INDEX, RESULTS
from ..storage.taskdb import CODE_STATUS, TASKS
from .store import format_time

CHUNK = 500
UPDATETIME_INDEX = "ix_spiderflow_task_updatetime"
_r = RESULTS.c
_t = TASKS.c


def window(job: dict[str, Any], now: float | None = None) -> tuple[float, float] | None:
    """``(start, end)`` of *job*, or None for a job that never started."""
    if job.get("start_time") is None:
        return None
    end = job.get("end_time")
    return job["start_time"], end if end is not None else (time.time() if now is None else now)


def _pages(db: Any, table: sa.Table, index: str, columns: list, project: str, start: float, end: float,
           chunk: int) -> Iterator[Any]:
    """Rows of *project* with start <= updatetime <= end in (updatetime, taskid) order, *chunk* at a time."""
    c = table.c
    base = sa.select(*columns).where(c.project == project, c.updatetime <= end)
    for dialect in ("mysql", "mariadb"):  # MySQL may otherwise walk the primary key
        base = base.with_hint(table, f"FORCE INDEX ({index})", dialect)
    key: tuple[float, str] | None = None
    while True:
        with db._read("job window") as conn:
            if key is None:
                rows = conn.execute(base.where(c.updatetime >= start).order_by(c.updatetime, c.taskid)
                                    .limit(chunk)).all()
            else:
                updatetime, taskid = key    # two seeks instead of one OR (which would scan the project)
                rows = conn.execute(base.where(c.updatetime == updatetime, c.taskid > taskid)
                                    .order_by(c.taskid).limit(chunk)).all()
                if len(rows) < chunk:
                    rows += conn.execute(base.where(c.updatetime > updatetime).order_by(c.updatetime, c.taskid)
                                         .limit(chunk - len(rows))).all()
        yield from rows
        if len(rows) < chunk:
            return
        key = (rows[-1].updatetime, rows[-1].taskid)


def items(resultdb: Any, job: dict[str, Any], *, now: float | None = None, chunk: int = CHUNK) -> Iterator[dict]:
    """The job's results: ``{"taskid", "url", "result", "updatetime"}`` in update order."""
    span = window(job, now)
    if span is None:
        return
    columns = [_r.taskid, _r.url, _r.result, _r.updatetime]
    for row in _pages(resultdb, RESULTS, ORDER_INDEX.name, columns, job["project"], *span, chunk):
        yield {"taskid": row.taskid, "url": row.url, "result": loads_result(row.result), "updatetime": row.updatetime}


def item_lines(resultdb: Any, job: dict[str, Any], **kwargs: Any) -> Iterator[str]:
    """:func:`items` as JSON lines (each ending in a newline)."""
    for item in items(resultdb, job, **kwargs):
        yield json.dumps(item, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str) + "\n"


def _events(text: str) -> list[tuple[float, str]]:
    out: list[tuple[float, str]] = []
    last = 0.0
    for line in text.split("\n") if text else []:
        try:   # "YYYY-mm-dd HH:MM:SS.mmm text", as JobDB.add_event writes it
            ts = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
        except (ValueError, OverflowError):
            ts = last
        last = ts
        out.append((ts, line))
    return out


def _task_lines(row: Any) -> Iterator[str]:
    try:
        track = loads_part(Track, row.track)
    except (ValueError, TypeError):   # a row no reader understands: its line still says which task
        track = Track()
    fetch, process = track.fetch or {}, track.process or {}
    status = CODE_STATUS.get(row.status)
    notes = [f"task {row.taskid}"]
    if fetch.get("status_code") is not None:
        notes.append(f"HTTP {fetch['status_code']}")
    if isinstance(fetch.get("time"), (int, float)):
        notes.append(f"{fetch['time']:.3f} s")
    if isinstance(process.get("follows"), int):
        notes.append(f"{process['follows']} follows")
    yield f"{format_time(row.updatetime)} {status.value if status else row.status} {row.url} ({', '.join(notes)})"
    for line in str(process.get("logs") or "").splitlines():
        yield "    " + line
    if fetch.get("error"):
        yield f"    fetch error: {fetch['error']}"
    if process.get("exception"):
        lines = str(process["exception"]).rstrip().splitlines()
        yield "    exception: " + (lines[0] if lines else "")
        for line in lines[1:]:
            yield "    " + line


def log_lines(taskdb: Any, job: dict[str, Any], *, now: float | None = None, chunk: int = CHUNK) -> Iterator[str]:
    """The job's log, line by line (no newlines): its events and its tasks, by time."""
    events = _events(job.get("events") or "")
    span = window(job, now)
    n = 0
    if span is not None:
        columns = [_t.taskid, _t.url, _t.status, _t.track, _t.updatetime]
        for row in _pages(taskdb, TASKS, UPDATETIME_INDEX, columns, job["project"], *span, chunk):
            while n < len(events) and events[n][0] <= row.updatetime:
                yield events[n][1]
                n += 1
            yield from _task_lines(row)
    for _, line in events[n:]:
        yield line


def tail(lines: Iterator[str], count: int) -> list[str]:
    """The last *count* of *lines* (read through, holding only those)."""
    return list(collections.deque(lines, maxlen=max(0, count)))


__all__ = ["item_lines", "items", "log_lines", "tail", "window"]
