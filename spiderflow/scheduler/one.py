"""OneScheduler: the debugging variant that runs fetch → process → result inline for one project.

It is the ordinary scheduler (taskdb, window, token bucket, retries, cron, on_finished)
without the pipeline queues: a selected task is fetched with the injected fetcher, handed
to the injected ``process`` callable, its results go to the result sink and its new tasks
and status pack come straight back. ``spiderflow one`` builds it; tests inject their own
components.

Injected components:

* ``fetcher``: an object with ``fetch(task) -> FetchResult`` (or ``async def fetch``).
* ``process``: ``process(task, fetch_result) -> (StatusPack, list[Task], list[ResultPack])``.
* ``result_sink``: a callable taking a ResultPack, or an object with ``put(result)``;
  by default results are upserted into resultdb. A sink that raises QueueClosed (``spiderflow
  one``'s stdout, once the reader is gone) ends the run: the tasks of the pass whose results
  were all delivered are finished as usual, the others are handed back (they stay ACTIVE),
  and :attr:`OneScheduler.sink_closed` says why it stopped.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..exceptions import QueueClosed
from ..message import FetchResult, ResultPack, StatusPack, Task, Track
from ..queues.memory import MemoryQueue
from ..settings import Settings
from .operations import EPHEMERAL
from .scheduler import Scheduler

logger = logging.getLogger(__name__)

ProcessFn = Callable[[Task, FetchResult], "tuple[StatusPack, list[Task], list[ResultPack]]"]


class OneScheduler(Scheduler):
    """Schedules one project (or every project, when *project* is None) and runs its tasks inline."""

    def __init__(self, *, projectdb: Any, taskdb: Any, resultdb: Any, fetcher: Any, process: ProcessFn,
                 result_sink: Any = None, project: str | None = None, settings: Settings = Settings(),
                 clock: Callable[[], float] = time.time, **kwargs: Any):
        super().__init__(projectdb=projectdb, taskdb=taskdb, resultdb=resultdb,
                         newtask_queue=MemoryQueue("newtask_queue"), status_queue=MemoryQueue("status_queue"),
                         out_queue=MemoryQueue("scheduler2fetcher"), settings=settings, clock=clock, **kwargs)
        self.fetcher = fetcher
        self.process = process
        self.project = project
        if result_sink is None:
            result_sink = resultdb.upsert if resultdb is not None else (lambda result: None)
        self._emit = result_sink if callable(result_sink) else result_sink.put
        self._outbox: list[Task] = []
        self.results = 0
        self.sink_closed = False

    def _wants_project(self, name: str) -> bool:
        return self.project is None or name == self.project

    def _send(self, task: Task) -> None:
        self._outbox.append(task)

    def _send_many(self, msgs: list[Task]) -> tuple[int, Exception | None]:
        self._outbox.extend(msgs)
        return len(msgs), None

    def _room(self) -> int:
        return self.settings.loop_limit

    async def arun_once(self) -> int:
        """One scheduler pass, then fetch and process what it selected; returns how many tasks ran."""
        self.run_once()
        batch, self._outbox = self._outbox, []
        if batch:
            fetched = await asyncio.gather(*(self._fetch(task) for task in batch))
            with self._lock:
                now = self._clock()
                statuses: list[StatusPack] = []
                follows: list[Task] = []
                for i, (task, result) in enumerate(zip(batch, fetched)):
                    status, new_tasks, results = self._process(task, result)
                    try:
                        for item in results:
                            self._emit(item)
                            self.results += 1
                    except QueueClosed as exc:
                        self._on_sink_closed(batch[i:], exc, now)
                        break
                    follows.extend(new_tasks)
                    statuses.append(status)
                # the whole pass's follows are checked in one go (one taskdb lookup and insert),
                # before its status packs, as the queued scheduler sees them
                if follows:
                    self._on_request_msgs(follows, now)
                self._on_status_msgs(statuses, now)
                self._flush()
            self._work += len(batch)
        return len(batch)

    def _on_sink_closed(self, rest: list[Task], exc: QueueClosed, now: float) -> None:
        """Stop: nothing more can be delivered. *rest* (from the task whose results did not all
        go out) goes back to its queue, not done, as if it had never been sent."""
        logger.info("one scheduler: the result sink is closed (%s); stopping, %d tasks of this pass not done",
                    exc, len(rest))
        self.sink_closed = True
        for task in rest:
            p = self.projects.get(task.project)
            if p is None:
                continue
            if task.taskid in EPHEMERAL:
                p.specials.appendleft(task)
            else:
                held = p.queue.done(task.taskid)
                if held is not None:
                    self.window.requeue(p, held, now)
        self.stop()

    kind = "one scheduler"

    async def _astep(self) -> None:
        try:
            await self.arun_once()
        except Exception:  # the loop boundary
            logger.exception("one scheduler pass failed")
            self._work = 0

    async def _fetch(self, task: Task) -> FetchResult:
        try:
            result = self.fetcher.fetch(task)
            if inspect.isawaitable(result):
                result = await result
            if not isinstance(result, FetchResult):
                raise TypeError(f"fetch returned {type(result).__name__}, not FetchResult")
            return result
        except Exception as exc:  # errors become data at the stage boundary
            logger.error("fetch of %s:%s %s failed: %s", task.project, task.taskid, task.url, exc)
            return FetchResult(status_code=599, url=task.url, orig_url=task.url,
                               error=f"{type(exc).__name__}: {exc}")

    def _process(self, task: Task, result: FetchResult) -> tuple[StatusPack, list[Task], list[ResultPack]]:
        try:
            status, new_tasks, results = self.process(task, result)
            return status, list(new_tasks or ()), list(results or ())
        except Exception as exc:
            logger.error("processing %s:%s %s failed: %s", task.project, task.taskid, task.url, exc)
            track = Track(fetch={"ok": result.ok, "status_code": result.status_code, "time": result.time,
                                 "error": result.error},
                          process={"ok": False, "exception": traceback.format_exc()})
            return StatusPack(taskid=task.taskid, project=task.project, url=task.url, track=track), [], []
