"""What the dashboard shows, from the scheduler when it answers and from the databases otherwise.

:func:`projects_overview` merges projectdb with the scheduler's per-project state;
:func:`counters_overview` asks the scheduler for its 5m/1h/1d/all counters and, when it
cannot, counts the tasks in taskdb (an ``all`` window only); :func:`queue_sizes` reads the
pipeline queues when the web UI was given them; :func:`list_nodes` reads the node registry
(in the projectdb database).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..message import TaskStatus
from ..queues import QUEUE_NAMES
from ..scheduler.control import ControlError
from ..storage import NodeDB
from .projects import LIST_FIELDS, is_locked, project_json
from .scheduler_link import SchedulerUnavailable

if TYPE_CHECKING:
    from .app import WebUIState

logger = logging.getLogger(__name__)

EMPTY_COUNTS = {"pending": 0, "success": 0, "retry": 0, "failed": 0, "fetch_time": 0.0, "process_time": 0.0}


async def projects_overview(state: WebUIState, authenticated: bool,
                            fields: list[str] | None = None) -> list[dict[str, Any]]:
    """Every project as JSON, with the scheduler's view of it (``scheduler``/``paused`` None if unreachable)."""
    rows = state.projectdb.list(fields or LIST_FIELDS)
    info = await state.scheduler.get("projects", default=None)
    by_name = {p.get("name"): p for p in info} if isinstance(info, list) else None
    return [project_json(row, by_name.get(row["name"], {}) if by_name is not None else None,
                         editable=authenticated or not is_locked(row))
            for row in rows]


def taskdb_counters(state: WebUIState, project: str | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Counters from taskdb alone: ``{project: {"all": {...}}}`` (no windows, no retries or times)."""
    if project is not None:
        counts = {project: state.taskdb.status_count(project)}
    else:
        counts = state.taskdb.status_counts()
    out = {}
    for name, by_status in sorted(counts.items()):
        out[name] = {"all": {**EMPTY_COUNTS, "pending": by_status.get(TaskStatus.ACTIVE, 0),
                             "success": by_status.get(TaskStatus.SUCCESS, 0),
                             "failed": by_status.get(TaskStatus.FAILED, 0) + by_status.get(TaskStatus.BAD, 0)}}
    return out


async def counters_overview(state: WebUIState, project: str | None = None,
                            window: str | None = None) -> tuple[dict[str, Any], str]:
    """``(counters, source)``: the scheduler's counters, or taskdb's totals when it cannot be asked."""
    try:
        return await state.scheduler.call("counters", project, window), "scheduler"
    except SchedulerUnavailable:
        pass
    except ControlError as exc:
        if exc.status == 400:
            raise
        logger.debug("counters from the scheduler: %s", exc)   # e.g. a project it does not know yet
    counters = taskdb_counters(state, project)
    if window not in (None, "all"):
        counters = {name: {} for name in counters}
    return counters, "taskdb"


def queue_sizes(state: WebUIState) -> dict[str, int | None] | None:
    """``{queue name: messages}`` of the pipeline queues, or None when the web UI does not see them."""
    if not state.queues:
        return None
    sizes: dict[str, int | None] = {}
    for name in QUEUE_NAMES:
        queue = state.queues.get(name)
        try:
            sizes[name] = queue.qsize() if queue is not None else None
        except Exception as exc:  # a remote backend may be down; the page must still render
            logger.debug("cannot size queue %s: %s", name, exc)
            sizes[name] = None
    return sizes


async def list_nodes(state: WebUIState, include_offline: bool = True) -> list[dict[str, Any]]:
    """The registered nodes (online first), read in a worker thread off the loop."""
    def read() -> list[dict[str, Any]]:
        return NodeDB(state.projectdb.engine).list(include_offline, timeout=state.settings.node_timeout)

    return await asyncio.get_running_loop().run_in_executor(state.executor, read)
