"""The scheduler's state of one project: queue, token bucket, script info, pause, window cursor.

The scheduler keeps one :class:`ProjectState` per project of projectdb. Besides the task
queue and token bucket it holds what the script told the scheduler through
``_on_get_info`` (min_tick, retry_delay, crawl_config), the pause state machine, and the
cursor of the lazy loader that pages ACTIVE tasks in from taskdb.

Pause state machine::

    running --(fail_pause_num failures in a row)--> paused --(pause_time)--> checking
       ^                                                ^                       |
       +------------(a trial task succeeds)-------------|-----------------------+
                                                        +--(every trial fails)--+
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from ..exceptions import SerializationError
from ..message import Fetch, Process, ProjectStatus, Task
from ..settings import Settings
from .task_queue import TaskQueue
from .token_bucket import TokenBucket

logger = logging.getLogger(__name__)

RUNNING, PAUSED, CHECKING = "running", "paused", "checking"

_FETCH_DEFAULTS: dict[str, Any] = {
    f.name: ({} if f.default_factory is not dataclasses.MISSING else f.default)  # type: ignore[misc]
    for f in dataclasses.fields(Fetch)
}
_MERGED_FETCH = ("headers", "cookies", "params")


def script_md5(script: str | None) -> str:
    return hashlib.md5((script or "").encode("utf-8")).hexdigest()


def split_group(group: str | None) -> list[str]:
    """Project groups are a comma- or space-separated list of words."""
    return [g for g in (group or "").replace(",", " ").split() if g]


class ProjectState:
    """Everything the scheduler tracks for one project."""

    def __init__(self, name: str, settings: Settings, clock: Callable[[], float]):
        self.name = name
        self.group = ""
        self.status = ProjectStatus.TODO
        self.updatetime = 0.0
        self.md5: str | None = None
        self.row_sig: tuple = ()
        self._clock = clock
        self.bucket = TokenBucket(settings.default_rate, settings.default_burst, clock)
        self._bucket_set = False
        self._bad_rate: tuple | None = None       # a rate/burst of projectdb already reported as unusable
        self.job: str | None = None               # the id of the job running this project (spiderflow.jobs)
        self.queue = TaskQueue()
        self.known: set[str] = set()              # taskids known to be in taskdb (bounded; see newtasks)
        self.specials: deque[Task] = deque()      # _on_get_info, _on_cronjob, _on_message to send
        self.active: deque[tuple[float, str, Task, Any]] = deque(maxlen=max(1, settings.active_tasks))
        self.active_count: int | None = None      # ACTIVE tasks in taskdb, once counted
        # what the script reported through _on_get_info
        self.waiting_info = True
        self.info_due = 0.0                       # when to (re)send _on_get_info while waiting
        self.min_tick = 0
        self.retry_delay: dict[int, float] | None = None
        self.crawl_config: dict[str, Any] = {}
        self._config_fetch: dict[str, Any] = {}
        self._config_process: dict[str, Any] = {}
        # lazy loader over taskdb.load_active, in scheduling order
        self.cursor_key: tuple | None = None
        self.cursor_db: Any = None
        self.more = True                          # taskdb may hold ACTIVE tasks after the cursor
        self.wake_at = math.inf                   # restart the sweep then (far-future tasks left in taskdb)
        # pause
        self.pause_state = RUNNING
        self.fail_streak = 0
        self.paused_at = 0.0
        self.trial_left = 0
        self.trial_failed = 0
        # on_finished and cron
        self.selected_since_finished = False
        self.drained_since: float | None = None
        self.last_tick: int | None = None

    # -- projectdb row ------------------------------------------------------------------
    def apply_row(self, row: dict[str, Any], settings: Settings) -> tuple[bool, bool]:
        """Take name/group/status/script/rate/burst/updatetime from a projectdb row.

        Returns ``(script_changed, schedulable_changed)``.
        """
        old_schedulable = self.status.schedulable
        try:
            self.status = ProjectStatus(row.get("status") or ProjectStatus.TODO)
        except ValueError:
            logger.error("project %s has unknown status %r; treating it as TODO", self.name, row.get("status"))
            self.status = ProjectStatus.TODO
        self.group = row.get("group") or ""
        self.updatetime = float(row.get("updatetime") or 0.0)
        rate = row.get("rate")
        burst = row.get("burst")
        self.row_sig = (row.get("status"), self.group, rate, burst)
        rate = settings.default_rate if rate is None else rate
        burst = settings.default_burst if burst is None else burst
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in (rate, burst)):
            if self._bad_rate != (rate, burst):   # a row written by hand or an old version: said once
                logger.error("project %s has rate %r / burst %r in projectdb, which are not finite numbers "
                             ">= 0; using %g / %g until it is set right (web UI, or project add --rate)",
                             self.name, rate, burst, settings.default_rate, settings.default_burst)
                self._bad_rate = (rate, burst)
            rate, burst = settings.default_rate, settings.default_burst
        if not self._bucket_set:
            self.bucket = TokenBucket(rate, burst, self._clock)   # a new project starts with a full bucket
            self._bucket_set = True
        elif (float(rate), max(1.0, float(burst))) != (self.bucket.rate, self.bucket.burst):
            self.bucket.configure(rate, burst)
        script_changed = False
        if "script" in row:
            md5 = script_md5(row.get("script"))
            script_changed = md5 != self.md5
            self.md5 = md5
        return script_changed, old_schedulable != self.status.schedulable

    @property
    def schedulable(self) -> bool:
        return self.status.schedulable

    @property
    def groups(self) -> list[str]:
        return split_group(self.group)

    # -- _on_get_info -----------------------------------------------------------------
    def apply_info(self, save: Any) -> None:
        """Take min_tick, retry_delay and crawl_config from an ``_on_get_info`` answer."""
        info = save if isinstance(save, dict) else {}
        try:
            self.min_tick = max(0, int(info.get("min_tick") or 0))
        except (TypeError, ValueError):
            logger.error("project %s: bad min_tick %r ignored", self.name, info.get("min_tick"))
            self.min_tick = 0
        self.retry_delay = _parse_retry_delay(self.name, info.get("retry_delay"))
        config = info.get("crawl_config")
        self.set_crawl_config(config if isinstance(config, dict) else {})
        self.waiting_info = False

    def set_crawl_config(self, config: dict[str, Any]) -> None:
        fetch = {k: v for k, v in config.items() if k in _FETCH_DEFAULTS}
        process: dict[str, Any] = {}
        if config.get("callback") is not None:
            process["callback"] = config["callback"]
        limit = config.get("time_limit", config.get("process_time_limit"))
        if limit is not None:
            process["time_limit"] = limit
        try:
            Fetch.from_dict(fetch)
            Process.from_dict(process)
        except SerializationError as exc:
            logger.error("project %s: crawl_config ignored: %s", self.name, exc)
            fetch, process = {}, {}
        self.crawl_config = config
        self._config_fetch = fetch
        self._config_process = process

    def join_crawl_config(self, task: Task) -> Task:
        """The task as sent: crawl_config fills what the task left at its default."""
        if not self._config_fetch and not self._config_process:
            return task
        changes: dict[str, Any] = {}
        fetch = task.fetch
        fchanges: dict[str, Any] = {}
        for key, value in self._config_fetch.items():
            current = getattr(fetch, key)
            if key in _MERGED_FETCH and isinstance(value, dict):
                merged = {**value, **(current or {})}
                if merged != current:
                    fchanges[key] = merged
            elif current == _FETCH_DEFAULTS[key] and value != current:
                fchanges[key] = value
        if fchanges:
            changes["fetch"] = dataclasses.replace(fetch, **fchanges)
        pchanges = {k: v for k, v in self._config_process.items() if getattr(task.process, k) is None}
        if pchanges:
            changes["process"] = dataclasses.replace(task.process, **pchanges)
        return dataclasses.replace(task, **changes) if changes else task

    def retry_delay_for(self, retried: int, settings: Settings) -> float:
        table = self.retry_delay
        if not table:
            return settings.retry_delay_for(retried)
        if retried in table:
            return table[retried]
        return table.get(-1, settings.retry_delay_for(retried))

    # -- pause ---------------------------------------------------------------------------
    def select_limit(self, now: float, settings: Settings) -> int:
        """How many tasks the pause state allows to select now (-1: no limit)."""
        if self.pause_state == RUNNING:
            return -1
        if self.pause_state == PAUSED:
            if now < self.paused_at + settings.pause_time:
                return 0
            self.pause_state = CHECKING
            self.trial_left = max(1, settings.unpause_check_num)
            self.trial_failed = 0
            logger.info("project %s: pause over, trying %d tasks", self.name, self.trial_left)
        return self.trial_left

    def selected(self, n: int) -> None:
        if self.pause_state == CHECKING:
            self.trial_left = max(0, self.trial_left - n)

    def record_result(self, ok: bool, now: float, settings: Settings) -> None:
        """Count one finished task for the pause state machine."""
        if settings.fail_pause_num <= 0:
            return
        if ok:
            self.fail_streak = 0
            if self.pause_state != RUNNING:
                logger.info("project %s: a task succeeded, unpaused", self.name)
                self.pause_state = RUNNING
            return
        self.fail_streak += 1
        if self.pause_state == RUNNING and self.fail_streak >= settings.fail_pause_num:
            self._pause(now, f"{self.fail_streak} tasks failed in a row", settings)
        elif self.pause_state == CHECKING:
            self.trial_failed += 1
            if self.trial_failed >= max(1, settings.unpause_check_num):
                self._pause(now, f"all {self.trial_failed} trial tasks failed", settings)

    def _pause(self, now: float, why: str, settings: Settings) -> None:
        self.pause_state = PAUSED
        self.paused_at = now
        logger.warning("project %s paused for %ss: %s", self.name, settings.pause_time, why)

    def unpause(self) -> None:
        self.pause_state = RUNNING
        self.fail_streak = 0

    @property
    def paused(self) -> bool:
        return self.pause_state == PAUSED

    # -- loader --------------------------------------------------------------------------
    def reset_loader(self) -> None:
        """Start the next sweep over taskdb from the beginning."""
        self.cursor_key = None
        self.cursor_db = None
        self.more = True
        self.wake_at = math.inf

    def idle(self) -> bool:
        """Nothing queued, in flight, left to load, or waiting to be sent."""
        q = self.queue
        return not (len(q) or q.processing_count or self.specials or (self.schedulable and self.more))

    def describe(self) -> dict[str, Any]:
        q = self.queue
        return {
            "name": self.name, "group": self.group, "status": self.status.value,
            "rate": self.bucket.rate, "burst": self.bucket.burst,
            "ready": q.ready_count, "waiting": q.waiting_count, "processing": q.processing_count,
            "active": self.active_count, "waiting_info": self.waiting_info,
            "min_tick": self.min_tick, "pause": self.pause_state, "fail_streak": self.fail_streak,
            "paused_at": self.paused_at if self.pause_state != RUNNING else None,
        }


def _parse_retry_delay(project: str, value: Any) -> dict[int, float] | None:
    """A script's retry_delay: ``{retried: seconds, "": default}`` (keys may arrive as strings)."""
    if value in (None, {}):
        return None
    if not isinstance(value, dict):
        logger.error("project %s: retry_delay must be a dict, not %r; using the default", project, value)
        return None
    table: dict[int, float] = {}
    try:
        for key, delay in value.items():
            k = -1 if key in ("", None, -1, "-1") else int(key)
            table[k] = float(delay)
    except (TypeError, ValueError):
        logger.error("project %s: bad retry_delay %r; using the default", project, value)
        return None
    return table
