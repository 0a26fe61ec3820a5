"""The scheduler's operations for the control interface, the command line and the web UI.

A mixin of :class:`~spiderflow.scheduler.Scheduler`: every method takes the scheduler's
lock (a no-op in the asyncio scheduler, a real one in the threaded variant) and raises
KeyError for an unknown project and SerializationError / ValueError for bad input, which
the control interface turns into 404 and 400.
"""

from __future__ import annotations

import math
from typing import Any

from ..exceptions import QueueFull
from ..message import ProjectStatus, Task, special_task
from .checks import coerce_task, make_active
from .project import RUNNING

#: special tasks sent straight to the fetcher, never stored in taskdb
EPHEMERAL = frozenset({"_on_get_info", "_on_cronjob", "_on_message"})


class Operations:
    """newtask, send_task, run_project, send_message, update_project and the read-outs."""

    def newtask(self, task: Any) -> int:
        """Queue new requests (a Task, a task dict, or a list of them); return how many."""
        items = list(task) if isinstance(task, (list, tuple)) else [task]
        tasks = [coerce_task(t.copy() if isinstance(t, Task) else t) for t in items]
        with self._lock:
            now = self._clock()
            for t in tasks:
                self._known(t.project, now)
            self._requests.extend(tasks)
        return len(tasks)

    def send_task(self, task: Any) -> bool:
        """Dispatch a task now, bypassing queue order and rate; False if in flight or no room."""
        task = coerce_task(task.copy() if isinstance(task, Task) else task)
        with self._lock:
            now = self._clock()
            p = self._known(task.project, now)
            if task.taskid in EPHEMERAL:
                try:
                    self._send(task)
                except QueueFull:
                    return False
                return True
            if p.queue.is_processing(task.taskid) or self.out_queue.full():
                return False
            self._flush()
            old = self.taskdb.get_task(p.name, task.taskid)
            make_active(task, now)
            if old is None:
                self.taskdb.insert(task)
                self._counters.event(p.name, "pending")
                self._active_delta(p, 1)
            else:
                task.track, task.lastcrawltime = old.track, old.lastcrawltime
                self.taskdb.update(task)
                self._restarted(p, old.status)
            p.queue.remove(task.taskid)
            return self._dispatch(p, [task], now)[0] == 1

    def update_project(self) -> None:
        """Re-read projectdb at the next pass."""
        self._force_project_check = True

    def run_project(self, project: str) -> str:
        """Schedule the project's on_start; returns its taskid."""
        self.newtask(special_task(project, "on_start", priority=9))
        return "on_start"

    def stop_project(self, p: Any, now: float) -> int:
        """Set *p* STOP at once (projectdb and memory) and put its tasks in flight back in its
        queue, where they wait for the project to run again; returns how many. Fetchers and
        processors drop those they still hold (a cancelled job, see spiderflow.jobs)."""
        self.projectdb.update(p.name, status=ProjectStatus.STOP)
        p.status = ProjectStatus.STOP
        back = 0
        for task in p.queue.expired(math.inf):
            self.window.requeue(p, task, now)
            back += 1
        self._force_project_check = True
        return back

    def send_message(self, project: str, message: Any) -> None:
        """Send *message* to the project's ``on_message``."""
        with self._lock:
            self._known(project, self._clock())
            self.projects[project].specials.append(special_task(project, "_on_message", save=message))

    def counters(self, project: str | None = None, window: str | None = None) -> dict[str, Any]:
        """``{project: {"5m"|"1h"|"1d"|"all": {pending, success, retry, failed, fetch_time, process_time}}}``."""
        with self._lock:
            if not self._counts_ready:
                self._init_counts()
            return self._counters.snapshot(project, window)

    def stats(self) -> dict[str, Any]:
        """This scheduler's totals for node heartbeats and the bench: ``in_flight`` (dispatched,
        unanswered) always; ``tasks``, ``done``, ``errors`` once the taskdb counts are loaded
        (reading them here never forces that count). Call it on the scheduler's loop."""
        with self._lock:
            out: dict[str, Any] = {
                "in_flight": sum(p.queue.processing_count for p in list(self.projects.values()))}
            if not self._counts_ready:
                return out
            tasks = done = failed = 0
            for by_window in self._counters.snapshot(window="all").values():
                counts = by_window["all"]
                tasks += counts["pending"] + counts["success"] + counts["failed"]
                done += counts["success"]
                failed += counts["failed"]
            out.update(tasks=int(tasks), done=int(done), errors=int(failed))
            return out

    def size(self) -> int:
        """ACTIVE tasks of every project (counted in taskdb once, then kept up to date)."""
        with self._lock:
            if not self._counts_ready:
                self._init_counts()
            return sum(p.active_count or 0 for p in self.projects.values())

    def projects_info(self) -> list[dict[str, Any]]:
        """Per-project state for the web UI: status, rate, queue sizes, pause, cron tick."""
        with self._lock:
            return [p.describe() for p in sorted(self.projects.values(), key=lambda p: p.name)]

    def active_tasks(self, project: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent dispatches and status packs, newest first."""
        with self._lock:
            if project is not None:
                if project not in self.projects:
                    raise KeyError(f"unknown project {project!r}")
                sources = [self.projects[project]]
            else:
                sources = list(self.projects.values())
            entries = [e for p in sources for e in p.active]
        entries.sort(key=lambda e: e[0], reverse=True)
        return [describe_active(e) for e in entries[:max(0, limit)]]

    def paused(self, project: str) -> bool:
        """Whether *project* is paused after repeated failures (a trial run counts as paused)."""
        with self._lock:
            p = self.projects.get(project)
            if p is None:
                raise KeyError(f"unknown project {project!r}")
            return p.pause_state != RUNNING

    def pause_status(self) -> dict[str, dict[str, Any]]:
        """``{project: {"paused": bool, "state": running|paused|checking, "fail_streak": n}}``."""
        with self._lock:
            return {name: {"paused": p.pause_state != RUNNING, "state": p.pause_state,
                           "fail_streak": p.fail_streak}
                    for name, p in sorted(self.projects.items())}

    def _known(self, project: str, now: float) -> Any:
        p = self._project(project, now)
        if p is None:
            raise KeyError(f"unknown project {project!r}")
        return p


def describe_active(entry: tuple[float, str, Task, Any]) -> dict[str, Any]:
    ts, event, task, track = entry
    return {
        "time": ts, "event": event, "project": task.project, "taskid": task.taskid, "url": task.url,
        "schedule": task.schedule.to_dict(),
        "track": track.to_dict() if track is not None else None,
    }
