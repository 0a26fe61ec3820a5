"""One project's in-memory tasks: a time queue, a priority queue and a processing set.

* The **time queue** holds tasks whose ``exetime`` is in the future, ordered by exetime.
* The **priority queue** holds ready tasks: higher priority first, then earlier exetime
  (the time the task became ready), then first in first out.
* The **processing set** holds tasks in flight, each with a lease deadline; a task whose
  lease expires is handed back by :meth:`TaskQueue.expired` to be sent again.

Heaps use lazy deletion: replacing or removing a task marks its old heap entry dead, and
the heaps are compacted when dead entries outnumber live ones. The token bucket that gates
selection lives with the project, not here.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from ..message import Task

# heap entry layouts (lists, so an entry can be marked dead in place)
# time queue:     [exetime, seq, taskid, alive]
# priority queue: [-priority, exetime, seq, taskid, alive]
_ALIVE = -1
_COMPACT_MIN = 1024


def order_key(task: Task) -> tuple[int, float, str]:
    """The scheduling order of taskdb's ``load_active``: priority DESC, exetime ASC, taskid ASC."""
    s = task.schedule
    return (-s.priority, s.exetime, task.taskid)


class TaskQueue:
    """Queued and in-flight tasks of one project, keyed by taskid."""

    __slots__ = ("_tasks", "_entries", "_time", "_ready", "_n_ready", "_processing", "_leases", "_seq")

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}          # queued (time or priority queue)
        self._entries: dict[str, list] = {}        # taskid -> its live heap entry
        self._time: list[list] = []
        self._ready: list[list] = []
        self._n_ready = 0
        self._processing: dict[str, list] = {}     # taskid -> [task, deadline, seq]
        self._leases: list[tuple[float, int, str]] = []
        self._seq = itertools.count()

    # -- queued tasks -------------------------------------------------------------
    def put(self, task: Task, now: float) -> None:
        """Queue *task* (replacing a queued task of the same id) in the time or priority queue."""
        taskid = task.taskid
        old = self._entries.get(taskid)
        if old is not None:
            self._kill(old)
        self._tasks[taskid] = task
        exetime = task.schedule.exetime
        if exetime > now:
            entry = [exetime, next(self._seq), taskid, True]
            heapq.heappush(self._time, entry)
        else:
            entry = [-task.schedule.priority, exetime, next(self._seq), taskid, True]
            heapq.heappush(self._ready, entry)
            self._n_ready += 1
        self._entries[taskid] = entry
        if old is not None:
            self._maybe_compact()

    def _kill(self, entry: list) -> None:
        entry[_ALIVE] = False
        if len(entry) == 5:
            self._n_ready -= 1

    def remove(self, taskid: str) -> Task | None:
        """Take a queued task out of the queue (not one in flight)."""
        entry = self._entries.pop(taskid, None)
        if entry is None:
            return None
        self._kill(entry)
        self._maybe_compact()
        return self._tasks.pop(taskid)

    def promote(self, now: float) -> int:
        """Move tasks whose exetime has come from the time queue to the priority queue."""
        moved = 0
        heap = self._time
        while heap and (heap[0][0] <= now or not heap[0][_ALIVE]):
            entry = heapq.heappop(heap)
            if not entry[_ALIVE]:
                continue
            taskid = entry[2]
            task = self._tasks[taskid]
            new = [-task.schedule.priority, entry[0], next(self._seq), taskid, True]
            heapq.heappush(self._ready, new)
            self._entries[taskid] = new
            self._n_ready += 1
            moved += 1
        return moved

    def pop(self, n: int) -> list[Task]:
        """Take up to *n* ready tasks in scheduling order (call :meth:`promote` first)."""
        out: list[Task] = []
        heap = self._ready
        while heap and len(out) < n:
            entry = heapq.heappop(heap)
            if not entry[_ALIVE]:
                continue
            taskid = entry[3]
            del self._entries[taskid]
            self._n_ready -= 1
            out.append(self._tasks.pop(taskid))
        return out

    def next_exetime(self) -> float | None:
        """The exetime of the next task in the time queue, if any."""
        heap = self._time
        while heap and not heap[0][_ALIVE]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def clear(self) -> list[Task]:
        """Drop every queued task (tasks in flight stay); return them."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self._entries.clear()
        self._time.clear()
        self._ready.clear()
        self._n_ready = 0
        return tasks

    def evict(self, keep: int) -> list[Task]:
        """Drop queued tasks from the end of the scheduling order until *keep* remain.

        Returns the evicted tasks (they stay ACTIVE in taskdb and are loaded again later).
        """
        excess = len(self._tasks) - keep
        if excess <= 0:
            return []
        victims = heapq.nlargest(excess, self._tasks.values(), key=order_key)
        for task in victims:
            self.remove(task.taskid)
        return victims

    def last_key(self) -> tuple[int, float, str] | None:
        """The largest :func:`order_key` among queued tasks."""
        if not self._tasks:
            return None
        return max(map(order_key, self._tasks.values()))

    def queued(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    # -- in flight ------------------------------------------------------------------
    def start(self, task: Task, deadline: float) -> None:
        """Mark *task* in flight until *deadline* (it must not be queued)."""
        seq = next(self._seq)
        self._processing[task.taskid] = [task, deadline, seq]
        heapq.heappush(self._leases, (deadline, seq, task.taskid))

    def done(self, taskid: str) -> Task | None:
        """Take a task out of the processing set; None if it is not in flight."""
        item = self._processing.pop(taskid, None)
        if item is None:
            return None
        if len(self._leases) > _COMPACT_MIN and len(self._leases) > 2 * len(self._processing):
            self._leases = [(d, s, t) for d, s, t in self._leases
                            if (p := self._processing.get(t)) is not None and p[2] == s]
            heapq.heapify(self._leases)
        return item[0]

    def expired(self, now: float) -> list[Task]:
        """Take every in-flight task whose lease ended at or before *now*."""
        out: list[Task] = []
        heap = self._leases
        while heap and heap[0][0] <= now:
            _deadline, seq, taskid = heapq.heappop(heap)
            item = self._processing.get(taskid)
            if item is not None and item[2] == seq:
                del self._processing[taskid]
                out.append(item[0])
        return out

    def processing(self, taskid: str) -> Task | None:
        item = self._processing.get(taskid)
        return item[0] if item is not None else None

    def is_processing(self, taskid: str) -> bool:
        return taskid in self._processing

    def in_flight(self) -> Iterator[Task]:
        return (item[0] for item in self._processing.values())

    # -- lookups and sizes ------------------------------------------------------------
    def get(self, taskid: str) -> Task | None:
        """The queued or in-flight task *taskid*."""
        task = self._tasks.get(taskid)
        if task is None:
            item = self._processing.get(taskid)
            if item is not None:
                task = item[0]
        return task

    def __contains__(self, taskid: object) -> bool:
        return taskid in self._tasks or taskid in self._processing

    def __len__(self) -> int:
        """Queued tasks (time queue and priority queue), not those in flight."""
        return len(self._tasks)

    @property
    def ready_count(self) -> int:
        return self._n_ready

    @property
    def waiting_count(self) -> int:
        return len(self._tasks) - self._n_ready

    @property
    def processing_count(self) -> int:
        return len(self._processing)

    def _maybe_compact(self) -> None:
        live = len(self._tasks)
        if len(self._time) + len(self._ready) > 2 * live + _COMPACT_MIN:
            self._time = [e for e in self._time if e[_ALIVE]]
            self._ready = [e for e in self._ready if e[_ALIVE]]
            heapq.heapify(self._time)
            heapq.heapify(self._ready)

    def __repr__(self) -> str:
        return (f"<TaskQueue ready={self._n_ready} waiting={self.waiting_count} "
                f"processing={len(self._processing)}>")
