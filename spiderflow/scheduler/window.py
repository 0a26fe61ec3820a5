"""Scale past RAM: which ACTIVE tasks of a project are held in memory, and paging in the rest.

Each project holds a bounded window of its ACTIVE tasks (``task_window``, plus one page)
in its TaskQueue; taskdb holds them all. The loader pages tasks in with ``load_active``'s
keyset cursor, in scheduling order (priority DESC, exetime ASC, taskid ASC), and skips
tasks already in memory (queued or in flight), so nothing is held twice.

The invariant: *every ACTIVE task in taskdb that is not in memory sorts after the
project's cursor*, except tasks due beyond the time horizon, which a timed sweep picks
up (``wake_at``). It is kept by:

* a new or restarted task that sorts after the cursor while the loader has more to read
  stays in taskdb only (the loader reaches it in order); otherwise it goes to memory;
* when the window overflows, the tasks last in scheduling order are evicted and the
  cursor moves back before them;
* a task due later than the horizon is never held: a page that reaches one skips the rest
  of its priority level (all due even later) and sets ``wake_at``, when the sweep restarts
  from the beginning;
* batched taskdb writes are flushed before every page is read, so a page never shows a
  task in a state the scheduler has already left.

A restarted scheduler starts every project's sweep from the beginning and so recovers
every ACTIVE task, including those that were in flight: they are sent again, except where
the scheduler persists leases (reliable queues, see :mod:`.scheduler`). There a task whose
lease is still valid is put back in flight before the first sweep, which skips it as it
skips every task in memory; it is sent again only if its lease ends unanswered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from ..message import Schedule, Task
from ..settings import Settings
from .project import ProjectState
from .task_queue import order_key

logger = logging.getLogger(__name__)

_JUMP_EXETIME = 1e18          # an exetime after every real one: the cursor skips a priority level


class Window:
    """The paging policy; the per-project cursor lives in :class:`ProjectState`."""

    def __init__(self, taskdb: Any, settings: Settings, horizon: float, load_pages: int):
        self.taskdb = taskdb
        self.size = settings.task_window
        self.page = max(1, settings.task_load_page)
        self.horizon = horizon
        self.load_pages = load_pages

    def place(self, p: ProjectState, tasks: Iterable[Task], now: float) -> None:
        """New or restarted tasks (already in taskdb): hold each, or leave it to the loader."""
        if not p.schedulable:
            return  # the sweep starts from scratch when the project is scheduled again
        horizon = self.horizon
        for task in tasks:
            exetime = task.schedule.exetime
            if exetime - now > horizon:
                p.wake_at = min(p.wake_at, exetime - horizon / 2)
                continue
            if p.more and (p.cursor_key is None or order_key(task) > p.cursor_key):
                continue  # the loader reaches it in order
            self._hold(p, task, now)

    def requeue(self, p: ProjectState, task: Task, now: float) -> None:
        """A task back from flight (retry, recrawl, lease expiry): hold it unless due too late."""
        if not p.schedulable:
            return
        exetime = task.schedule.exetime
        if exetime - now > self.horizon:
            p.wake_at = min(p.wake_at, exetime - self.horizon / 2)
            return
        self._hold(p, task, now)

    def _hold(self, p: ProjectState, task: Task, now: float) -> None:
        p.queue.put(task, now)
        if len(p.queue) > self.size + self.page:
            self.evict(p)

    def evict(self, p: ProjectState) -> None:
        """Shrink the window to its size; the cursor moves back before the evicted tasks."""
        evicted = p.queue.evict(self.size)
        if not evicted:
            return
        last = max(p.queue.queued(), key=order_key, default=None)
        if last is None:
            p.cursor_key, p.cursor_db = None, None
        elif not p.more or (p.cursor_key is not None and order_key(last) < p.cursor_key):
            p.cursor_key, p.cursor_db = order_key(last), self.taskdb.order_key(last)
        p.more = True
        logger.debug("project %s: window full, %d tasks left to taskdb", p.name, len(evicted))

    def fill(self, p: ProjectState, now: float, flush: Callable[[], None]) -> int:
        """Page ACTIVE tasks in while the window has room; returns how many rows were read."""
        if p.wake_at <= now:
            p.reset_loader()
        horizon = now + self.horizon
        loads = read = 0
        while p.more and len(p.queue) < self.size and loads < self.load_pages:
            flush()
            rows = self.taskdb.load_active(p.name, self.page, after=p.cursor_db)
            loads += 1
            read += len(rows)
            last = None
            jumped = False
            for task in rows:
                exetime = task.schedule.exetime
                if exetime > horizon:
                    # the rest of this priority level is due even later: skip to the next level
                    p.wake_at = min(p.wake_at, exetime - self.horizon / 2)
                    jump = Task(taskid="", project=p.name, url="",
                                schedule=Schedule(priority=task.schedule.priority, exetime=_JUMP_EXETIME))
                    p.cursor_key, p.cursor_db = order_key(jump), self.taskdb.order_key(jump)
                    jumped = True
                    break
                last = task
                if task.taskid not in p.queue:
                    p.queue.put(task, now)
            if not jumped:
                if last is not None:
                    p.cursor_key, p.cursor_db = order_key(last), self.taskdb.order_key(last)
                if len(rows) < self.page:
                    p.more = False
        return read
