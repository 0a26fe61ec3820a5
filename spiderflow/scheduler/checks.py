"""Cheap checks of what arrives on newtask_queue and status_queue.

This is the hot path (tens of thousands of messages a second), so a Task object is checked
with isinstance tests of the fields the scheduler and taskdb rely on, not a dict round
trip; dicts go through ``from_dict``. Anything else raises SerializationError, which the
scheduler logs before dropping the message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from ..exceptions import SerializationError
from ..message import TASKID_CONTROLS, Fetch, Process, Schedule, StatusPack, Task, TaskStatus, Track

_INT32 = 2 ** 31
_NUM = (int, float)
_STATUSES = frozenset(TaskStatus) | frozenset(s.value for s in TaskStatus)
MAX_TASKID = 255


def flatten(msgs: Iterable[Any]) -> Iterator[Any]:
    """Messages, with lists (a processor may send a page's new tasks as one list) unpacked."""
    for msg in msgs:
        if isinstance(msg, (list, tuple)):
            yield from msg
        else:
            yield msg


def coerce_task(msg: Any) -> Task:
    """The Task in *msg* (a Task or a task dict); SerializationError if it is not a usable one."""
    if isinstance(msg, dict):
        msg = Task.from_dict(msg)
    elif not isinstance(msg, Task):
        raise SerializationError(f"not a task: {type(msg).__name__} {msg!r:.60}")
    problem = task_problem(msg)
    if problem:
        raise SerializationError(f"bad task {msg.project!r:.40}:{msg.taskid!r:.40}: {problem}")
    return msg


def task_problem(t: Task) -> str | None:
    """What is wrong with *t*, or None."""
    if not isinstance(t.taskid, str) or not t.taskid or len(t.taskid) > MAX_TASKID:
        return f"taskid must be a string of 1-{MAX_TASKID} characters"
    if TASKID_CONTROLS.search(t.taskid):
        return "taskid must not hold line breaks or other control characters"
    if not isinstance(t.project, str) or not t.project:
        return "project must be a non-empty string"
    if not isinstance(t.url, str) or not t.url:
        return "url must be a non-empty string"
    s = t.schedule
    if not isinstance(s, Schedule):
        return "schedule must be a Schedule"
    if not (type(s.priority) is int and type(s.retries) is int and type(s.retried) is int):
        return "schedule priority/retries/retried must be integers"
    if not -_INT32 <= s.priority < _INT32:
        return f"priority {s.priority} is out of range"
    if not (isinstance(s.exetime, _NUM) and isinstance(s.age, _NUM)) or isinstance(s.exetime, bool) \
            or isinstance(s.age, bool):
        return "schedule exetime/age must be numbers"
    if not (math.isfinite(s.exetime) and math.isfinite(s.age)):
        return "schedule exetime/age must be finite numbers"
    if s.itag is not None and not isinstance(s.itag, str):
        return "schedule itag must be a string"
    if not isinstance(t.fetch, Fetch) or not isinstance(t.process, Process) or not isinstance(t.track, Track):
        return "fetch/process/track have the wrong type"
    if t.status not in _STATUSES:
        return f"unknown status {t.status!r}"
    return None


def coerce_status(msg: Any) -> StatusPack:
    """The StatusPack in *msg* (a StatusPack or a dict); SerializationError otherwise."""
    if isinstance(msg, StatusPack):
        if not (isinstance(msg.taskid, str) and isinstance(msg.project, str) and isinstance(msg.track, Track)
                and isinstance(msg.track.process, dict) and isinstance(msg.track.fetch, dict)):
            raise SerializationError(f"bad status pack {msg.project!r:.40}:{msg.taskid!r:.40}")
        return msg
    if isinstance(msg, dict):
        return StatusPack.from_dict(msg)
    raise SerializationError(f"not a status pack: {type(msg).__name__} {msg!r:.60}")


def make_active(task: Task, now: float) -> None:
    """Normalise an accepted request in place: ACTIVE, due no earlier than now.

    Stamping exetime with the time of acceptance makes taskdb's scheduling order first in,
    first out among tasks of equal priority, so tasks paged in later keep their turn.
    """
    task.status = TaskStatus.ACTIVE
    s = task.schedule
    if s.exetime < now:
        s.exetime = now
    task.updatetime = now


def error_text(track: Track) -> str:
    """One line for the log: the exception's last line, the fetch error, or the status code."""
    err = str(track.process.get("exception") or track.fetch.get("error") or "").strip()
    if err:
        return err.splitlines()[-1][:200]
    code = track.fetch.get("status_code")
    return f"status {code}" if code is not None else "not ok"
