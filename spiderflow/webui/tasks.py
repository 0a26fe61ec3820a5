"""The tasks pages: recent tasks (``/tasks?project=&status=``) and one task (``/task/<project>/<taskid>``).

The list shows the scheduler's recent activity (its latest dispatches and status packs)
when it can be reached, and the tasks in taskdb, newest first, filtered by status.
"""

from __future__ import annotations

import urllib.parse

from ..message import TaskStatus
from .base import PageHandler
from .helpers import fail, task_and_result

PAGE_SIZE = 50


class TasksPage(PageHandler):
    async def get(self) -> None:
        project = self.str_arg("project")
        if project is not None:
            project = self.project_name(project)
        status = self.str_arg("status")
        if status is not None:
            try:
                status = TaskStatus(status.upper()).value
            except ValueError:
                raise fail(400, f"status must be one of {', '.join(s.value for s in TaskStatus)}") from None
        offset = self.int_arg("offset", 0)
        active = await self.state.scheduler.get("active_tasks", project, PAGE_SIZE, default=None)
        self.scheduler_status = self.state.scheduler.status
        tasks = self.state.taskdb.select(project, status, offset=offset, limit=PAGE_SIZE,
                                         fields=["url", "status", "track", "lastcrawltime", "updatetime"])

        def page_url(at: int) -> str:
            query = {"project": project, "status": status, "offset": at or None}
            return "/tasks?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})

        self.render("tasks.html", project=project, status=status, offset=offset, page_size=PAGE_SIZE,
                    active=active, tasks=tasks, statuses=[s.value for s in TaskStatus], page_url=page_url)


class TaskPage(PageHandler):
    def get(self, project: str, taskid: str) -> None:
        task, result = task_and_result(self.state, self.project_name(project), taskid)
        self.render("task.html", task=task, result=result)
