"""The debugger page (``/debug/<project>``): the script editor, the task box and Run.

The page loads the project's script into the editor and a task into the task box: the
project's on_start, or ``?taskid=`` from taskdb. Run posts both to ``/api/debug/<project>``;
Save (Ctrl-S) patches ``/api/projects/<project>``.
"""

from __future__ import annotations

from .base import PageHandler
from .debug import compact_task, start_task
from .helpers import pretty_json


class DebuggerPage(PageHandler):
    def get(self, name: str) -> None:
        row = self.get_project(name)
        task = start_task(row["name"])
        taskid = self.str_arg("taskid")
        if taskid is not None:
            stored = self.state.taskdb.get(row["name"], taskid)
            if stored is not None:
                task = compact_task(stored)
        self.render("debug.html", project=row, task_json=pretty_json(task), editable=self.can_edit(row))
