"""The JSON API under /api/: projects, run, debug, tasks, counters, queues, nodes.

Every answer is JSON; errors are ``{"error": message}`` with the status code (400 bad
input or project name, 401 credentials needed, 403 locked project, foreign origin or
missing xsrf token, 404 unknown, 409 conflict, 415 a body that is not
``application/json``, 503 scheduler not reachable). State-changing requests need the
``X-XSRFToken`` header (the token of the session cookie, see ``GET /api/xsrf``) or a
bearer token (see :mod:`.guard`). Results and their downloads are in :mod:`.results`.
"""

from __future__ import annotations

import logging
from typing import Any

from ..exceptions import StorageError
from ..message import ProjectStatus, TaskStatus
from ..scheduler.control import ControlError
from .base import ApiHandler
from .debug import build_task
from .helpers import fail, task_and_result
from .overview import counters_overview, list_nodes, projects_overview, queue_sizes
from .projects import new_project, parse_changes, plan_update, project_json
from .scheduler_link import SchedulerUnavailable

logger = logging.getLogger(__name__)

MAX_TASKS = 1000


class XsrfHandler(ApiHandler):
    """``GET /api/xsrf``: the token to send as ``X-XSRFToken`` (it sets the session cookie it belongs to)."""

    public = True   # the login form needs it; other sites cannot read it

    def get(self) -> None:
        self.reply({"xsrf": self.xsrf_token.decode()})


class ApiBase(ApiHandler):
    """An endpoint that may ask the scheduler."""

    async def scheduler_call(self, method: str, *args: Any) -> Any:
        """Call the scheduler; 503 when it cannot be reached, 404/400 as it answers."""
        try:
            return await self.state.scheduler.call(method, *args)
        except SchedulerUnavailable as exc:
            raise fail(503, f"the scheduler is not reachable: {exc}") from None
        except ControlError as exc:
            raise fail(exc.status if exc.status in (400, 404, 409) else 502, f"scheduler: {exc.message}") from None

    async def poke_scheduler(self) -> None:
        """Have the scheduler re-read projectdb now instead of at its next check (best effort)."""
        await self.state.scheduler.get("update_project")

    async def one_project(self, row: dict[str, Any]) -> dict[str, Any]:
        info = await self.state.scheduler.get("projects", default=None)
        mine = None
        if isinstance(info, list):
            mine = next((p for p in info if p.get("name") == row["name"]), {})
        return project_json(row, mine, editable=self.can_edit(row))


class ProjectsHandler(ApiBase):
    """``GET /api/projects``; ``POST /api/projects`` creates one (the sample script unless ``script``)."""

    async def get(self) -> None:
        projects = await projects_overview(self.state, self.authenticated)
        self.reply({"projects": projects, "scheduler": self.state.scheduler.status.to_dict()})

    async def post(self) -> None:
        fields = new_project(self.body_object(), self.state.settings)
        db = self.state.projectdb
        if db.get(fields["name"], ["name"]) is not None:
            raise fail(409, f"a project named {fields['name']!r} already exists")
        try:
            db.insert(**fields)
        except StorageError:
            if db.get(fields["name"], ["name"]) is not None:
                raise fail(409, f"a project named {fields['name']!r} already exists") from None
            raise
        logger.info("web UI: project %s created (%s)", fields["name"], fields["status"])
        await self.poke_scheduler()
        row = db.get(fields["name"])
        self.reply({"project": await self.one_project(row)}, status=201)


class ProjectHandler(ApiBase):
    """``GET``, ``PATCH`` (or ``POST``) and ``DELETE /api/projects/<name>``."""

    async def get(self, name: str) -> None:
        self.reply({"project": await self.one_project(self.get_project(name))})

    async def patch(self, name: str) -> None:
        row = self.get_project(name)
        self.require_editable(row)
        changes = parse_changes(self.body_object())
        if not changes:
            raise fail(400, "nothing to change: send any of status, group, rate, burst, script, comments")
        changes, notes = plan_update(row, changes)
        if not self.state.projectdb.update(row["name"], **changes):
            raise fail(404, f"no project named {name!r}")
        logger.info("web UI: project %s changed: %s", row["name"], ", ".join(sorted(changes)))
        await self.poke_scheduler()
        updated = self.state.projectdb.get(row["name"])
        self.reply({"project": await self.one_project(updated), "changed": sorted(changes), "notes": notes})

    post = patch

    async def delete(self, name: str) -> None:
        row = self.get_project(name, ["name", "group", "status"])
        self.require_editable(row)
        if row["status"] is not ProjectStatus.STOP:
            raise fail(409, f"project {name!r} is {row['status']}: set it to STOP before deleting it")
        state = self.state
        tasks = state.taskdb.drop(row["name"])
        results = state.resultdb.drop(row["name"])
        state.projectdb.drop(row["name"])
        logger.warning("web UI: project %s deleted (%d tasks, %d results)", row["name"], tasks, results)
        await self.poke_scheduler()
        self.reply({"deleted": row["name"], "tasks": tasks, "results": results})


class RunHandler(ApiBase):
    """``POST /api/projects/<name>/run``: schedule the project's on_start now."""

    async def post(self, name: str) -> None:
        row = self.get_project(name, ["name", "group", "status"])
        self.require_editable(row)
        await self.poke_scheduler()
        taskid = await self.scheduler_call("run", row["name"])
        out: dict[str, Any] = {"project": row["name"], "taskid": taskid, "status": str(row["status"])}
        if not row["status"].schedulable:
            out["note"] = (f"the project is {row['status']}: on_start waits until it is RUNNING or DEBUG")
        self.reply(out)


class DebugHandler(ApiBase):
    """``POST /api/debug/<name>``: run one task with the editor's script (or the stored one) in a worker process."""

    async def post(self, name: str) -> None:
        row = self.get_project(name, ["name", "group", "script"])
        self.require_editable(row)
        body = self.body_object()
        script = body.get("script")
        if script is None:
            script = row["script"]
        elif not isinstance(script, str):
            raise fail(400, "script must be a string")
        task = build_task(row["name"], body)
        self.reply(await self.state.debugger.run(row["name"], script, task))


class TasksHandler(ApiBase):
    """``GET /api/tasks?project=&status=&offset=&limit=``: tasks from taskdb, newest first."""

    def get(self) -> None:
        project = self.str_arg("project")
        if project is not None:
            project = self.project_name(project)
        status = self.str_arg("status")
        if status is not None:
            try:
                status = TaskStatus(status.upper())
            except ValueError:
                raise fail(400, f"status must be one of {', '.join(s.value for s in TaskStatus)}") from None
        limit = self.int_arg("limit", 100, 1, MAX_TASKS)
        offset = self.int_arg("offset", 0)
        tasks = self.state.taskdb.select(project, status, offset=offset, limit=limit)
        self.reply({"tasks": tasks, "offset": offset, "limit": limit})


class ActiveTasksHandler(ApiBase):
    """``GET /api/active_tasks?project=&limit=``: the scheduler's recent dispatches and status packs."""

    async def get(self) -> None:
        project = self.str_arg("project")
        if project is not None:
            project = self.project_name(project)
        limit = self.int_arg("limit", 100, 1, MAX_TASKS)
        self.reply({"tasks": await self.scheduler_call("active_tasks", project, limit)})


class TaskHandler(ApiBase):
    """``GET /api/tasks/<project>/<taskid>``: every field of a task, and its result."""

    def get(self, project: str, taskid: str) -> None:
        task, result = task_and_result(self.state, self.project_name(project), taskid)
        self.reply({"task": task, "result": result})


class CountersHandler(ApiBase):
    """``GET /api/counters?project=&window=``: per project and window (5m, 1h, 1d, all)."""

    async def get(self) -> None:
        project = self.str_arg("project")
        if project is not None:
            project = self.project_name(project)
        window = self.str_arg("window")
        if window not in (None, "5m", "1h", "1d", "all"):
            raise fail(400, f"window must be one of 5m, 1h, 1d, all, not {window!r}")
        counters, source = await counters_overview(self.state, project, window)
        self.reply({"counters": counters, "source": source, "scheduler": self.state.scheduler.status.to_dict()})


class QueuesHandler(ApiBase):
    """``GET /api/queues``: messages in each pipeline queue, or null when the web UI cannot see them."""

    def get(self) -> None:
        self.reply({"queues": queue_sizes(self.state)})


class NodesHandler(ApiBase):
    """``GET /api/nodes``: the registered nodes; ``?all=1`` includes offline and stopped ones."""

    async def get(self) -> None:
        include_offline = self.get_query_argument("all", "").lower() not in ("", "0", "false", "no")
        self.reply({"nodes": await list_nodes(self.state, include_offline)})
