"""Storing what a pyspider deployment holds in spiderflow's databases (``spiderflow import-pyspider``).

:func:`import_pyspider` copies projects (script, group, status, rate, burst, comments)
through :func:`~spiderflow.runtime.scripts.store_project`, results with
:meth:`~spiderflow.storage.ResultDB.upsert_many` (keyed by project and task id, keeping
pyspider's update times) and, when asked, tasks with
:meth:`~spiderflow.storage.TaskDB.insert_many`: ACTIVE ones stay ACTIVE so the crawl goes on
where pyspider left it, SUCCESS/FAILED/BAD ones keep their status (and their age and itag),
so they are not fetched again before they are due. Every step is idempotent: a project whose
fields did not change is not written, a result is replaced by itself, a task already in
spiderflow's taskdb is left as spiderflow has it. With ``dry_run`` nothing is written and
the report says what would be done.

Each project's script is loaded as the processor would load it (pyspider's imports work in
it): one that does not load is still imported, and the report says why it fails (a Python 2
``print`` statement, a module that is not installed), as its tasks would.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import InvalidProjectName, ScriptError, SerializationError
from ..message import (
    SPECIAL_TASKS,
    Fetch,
    ProjectStatus,
    ResultPack,
    Schedule,
    Task,
    TaskStatus,
    validate_project_name,
)
from ..runtime.scripts import ADDED, UNCHANGED, UPDATED, script_rate, store_project
from ..settings import Settings
from . import pyspider_db
from .pyspider_db import Source

logger = logging.getLogger(__name__)

BATCH = 500
#: pyspider's task status codes (its taskdb ``status`` column)
TASK_STATUS = {1: TaskStatus.ACTIVE, 2: TaskStatus.SUCCESS, 3: TaskStatus.FAILED, 4: TaskStatus.BAD}
_EPHEMERAL = {"_on_get_info", "_on_cronjob", "_on_message"}     # never stored by spiderflow's scheduler
_FETCH_ALIASES = {"last_modifed": "last_modified"}


@dataclass(slots=True)
class ProjectLine:
    """One pyspider project and what the import did (or would do) with it."""

    name: str
    status: str
    group: str
    rate: float
    burst: float
    action: str                     # added, updated, unchanged; "skipped" for a name spiderflow refuses
    script_error: str | None = None


@dataclass
class Report:
    """What :func:`import_pyspider` did, or (dry run) would do."""

    dry_run: bool = False
    projects: list[ProjectLine] = field(default_factory=list)
    results: dict[str, int] = field(default_factory=dict)          # project -> results stored (or found)
    tasks: dict[str, dict[str, int]] = field(default_factory=dict)  # project -> {status: tasks read}
    tasks_new: int = 0                                              # tasks inserted (dry run: not yet there)
    tasks_existing: int = 0                                         # tasks spiderflow already had
    skipped: list[str] = field(default_factory=list)                # rows not imported, with why (a few)
    skipped_count: int = 0

    def skip(self, why: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < 20:
            self.skipped.append(why)

    def counts(self) -> dict[str, Any]:
        actions = {a: sum(1 for p in self.projects if p.action == a) for a in (ADDED, UPDATED, UNCHANGED, "skipped")}
        return {"projects": len([p for p in self.projects if p.action != "skipped"]), "project_actions": actions,
                "results": sum(self.results.values()), "tasks": sum(sum(c.values()) for c in self.tasks.values()),
                "tasks_new": self.tasks_new, "tasks_existing": self.tasks_existing, "skipped": self.skipped_count}


def _float(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) and number >= 0 else default


def project_fields(row: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """spiderflow's fields of one pyspider projectdb row."""
    status = str(row.get("status") or "TODO").upper()
    script = row.get("script") or ""
    rate, burst = script_rate(script, settings)
    return {
        "name": str(row["name"]), "script": script, "group": str(row.get("group") or ""),
        "status": ProjectStatus(status) if status in ProjectStatus.__members__ else ProjectStatus.TODO,
        "comments": str(row.get("comments") or ""),
        "rate": _float(row.get("rate"), rate), "burst": _float(row.get("burst"), burst),
    }


def _check_script(name: str, script: str, settings: Settings) -> str | None:
    from ..processor import load_project
    try:
        load_project(name, script, time_limit=settings.process_time_limit)
    except ScriptError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        return lines[-1].strip() if lines else str(exc)
    return None


def import_projects(source: Source, projectdb: Any, settings: Settings, report: Report, *,
                    only: set[str] | None = None, status: ProjectStatus | None = None,
                    check: bool = True) -> None:
    """Store every pyspider project (of *only*, if given) in *projectdb* (None: dry run against nothing)."""
    for row in pyspider_db.read_projects(source):
        fields = project_fields(row, settings)
        name = fields["name"]
        if only is not None and name not in only:
            continue
        if status is not None:
            fields["status"] = status
        line = ProjectLine(name, fields["status"].value, fields["group"], fields["rate"], fields["burst"], "")
        report.projects.append(line)
        try:
            validate_project_name(name)
        except InvalidProjectName as exc:
            line.action = "skipped"
            report.skip(f"project {name!r}: {exc}")
            continue
        if check:
            line.script_error = _check_script(name, fields["script"], settings)
        line.action = _store(projectdb, fields, settings, report.dry_run)


def _store(projectdb: Any, fields: dict[str, Any], settings: Settings, dry_run: bool) -> str:
    name = fields["name"]
    if dry_run:
        old = projectdb.get(name, ["name", "group", "status", "script", "comments", "rate", "burst"]) \
            if projectdb is not None else None
        if old is None:
            return ADDED
        same = all(old[k] == fields[k] for k in ("group", "status", "script", "comments", "rate", "burst"))
        return UNCHANGED if same else UPDATED
    action = store_project(projectdb, name, fields["script"], fields["status"], settings, fields["rate"],
                           fields["burst"], group=fields["group"])
    stored = projectdb.get(name, ["comments"])
    if stored is not None and stored["comments"] != fields["comments"]:
        projectdb.update(name, comments=fields["comments"])
        action = UPDATED if action == UNCHANGED else action
    return action


def _projects_of(source: Source, only: set[str] | None, report: Report) -> Iterator[tuple[str, str]]:
    for project, table in pyspider_db.project_tables(source).items():
        if only is not None and project not in only:
            continue
        try:
            validate_project_name(project)
        except InvalidProjectName as exc:
            report.skip(f"{source.role} table {table!r}: {exc}")
            continue
        yield project, table


def _batches(items: Iterable[Any], size: int = BATCH) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def import_results(source: Source, resultdb: Any, report: Report, *, only: set[str] | None = None) -> None:
    """Upsert every pyspider result (of *only*) into *resultdb*; count them only on a dry run."""
    for project, table in _projects_of(source, only, report):
        if report.dry_run:
            report.results[project] = pyspider_db.count(source, table)
            continue
        stored = 0
        packs = _result_packs(project, table, pyspider_db.read_results(source, table), report)
        for batch in _batches(packs):
            resultdb.upsert_many(batch)
            stored += len(batch)
        report.results[project] = stored


def _result_packs(project: str, table: str, rows: Iterable[dict[str, Any]], report: Report) -> Iterator[ResultPack]:
    for row in rows:
        taskid = row.get("taskid")
        if row.get("error") or not taskid:
            report.skip(f"result {project}/{taskid}: {row.get('error') or 'no task id'}")
            continue
        yield ResultPack(project=project, taskid=str(taskid), url=str(row.get("url") or ""), result=row["result"],
                         updatetime=_float(row.get("updatetime"), 0.0))


def import_tasks(source: Source, taskdb: Any, report: Report, *, only: set[str] | None = None) -> None:
    """Insert every pyspider task (of *only*) that *taskdb* does not hold yet (dry run: count them)."""
    for project, table in _projects_of(source, only, report):
        counts = report.tasks.setdefault(project, {})
        tasks = _tasks(project, pyspider_db.read_tasks(source, table), report, counts)
        for batch in _batches(tasks):
            if taskdb is None:                  # dry run into a database that does not exist yet
                new = len(batch)
            elif report.dry_run:
                new = len(batch) - len(taskdb.get_many(project, [t.taskid for t in batch], fields=["taskid"]))
            else:
                new = taskdb.insert_many(batch)
            report.tasks_new += new
            report.tasks_existing += len(batch) - new


def _tasks(project: str, rows: Iterable[dict[str, Any]], report: Report, counts: dict[str, int]) -> Iterator[Task]:
    for row in rows:
        if row.get("taskid") in _EPHEMERAL:
            continue
        try:
            if row.get("error"):
                raise SerializationError(row["error"])
            task = task_from_pyspider(project, row)
        except (SerializationError, InvalidProjectName, TypeError, ValueError) as exc:
            report.skip(f"task {project}/{row.get('taskid')}: {exc}")
            continue
        counts[task.status.value] = counts.get(task.status.value, 0) + 1
        yield task


def _known(data: Any, cls: type) -> dict[str, Any]:
    """The keys of pyspider's *data* that spiderflow's *cls* has (None values dropped)."""
    if not isinstance(data, dict):
        return {}
    known = cls._types
    return {key: value for key, value in data.items() if key in known and value is not None}


def task_from_pyspider(project: str, row: dict[str, Any]) -> Task:
    """The spiderflow Task of one pyspider taskdb row (SerializationError if it cannot be one)."""
    status = TASK_STATUS.get(_int(row.get("status")))
    if status is None:
        raise SerializationError(f"unknown pyspider task status {row.get('status')!r}")
    schedule = _known(row.get("schedule"), Schedule)
    for key in ("priority", "retries", "retried"):
        if key in schedule:
            schedule[key] = int(schedule[key])
    for key in ("exetime", "age"):
        if key in schedule:
            schedule[key] = float(schedule[key])
    for key in ("force_update", "auto_recrawl", "cancel"):
        if key in schedule:
            schedule[key] = bool(schedule[key])
    if "itag" in schedule:
        schedule["itag"] = str(schedule["itag"])
    raw_fetch = row.get("fetch") if isinstance(row.get("fetch"), dict) else {}
    fetch = _known({_FETCH_ALIASES.get(k, k): v for k, v in raw_fetch.items()}, Fetch)
    for key in ("headers", "cookies"):
        if key in fetch:
            fetch[key] = {str(k): str(v) for k, v in dict(fetch[key]).items() if v is not None}
    raw_process = row.get("process") if isinstance(row.get("process"), dict) else {}
    process = {"callback": raw_process.get("callback")}
    if raw_process.get("process_time_limit"):
        process["time_limit"] = float(raw_process["process_time_limit"])
    url = str(row.get("url") or "")
    taskid = str(row.get("taskid") or "")
    if taskid in SPECIAL_TASKS and not url:
        url = SPECIAL_TASKS[taskid][0]
    return Task.from_dict({
        "taskid": taskid, "project": project, "url": url, "status": status.value,
        "schedule": schedule, "fetch": fetch, "process": process,
        "track": _track(row.get("track")),
        "lastcrawltime": _optional_float(row.get("lastcrawltime")),
        "updatetime": _float(row.get("updatetime"), 0.0),
    })


def _track(track: Any) -> dict[str, Any]:
    """pyspider's track in spiderflow's terms (validators for conditional re-fetches, outcome)."""
    if not isinstance(track, dict):
        return {}
    fetch = track.get("fetch") if isinstance(track.get("fetch"), dict) else {}
    process = track.get("process") if isinstance(track.get("process"), dict) else {}
    headers = {str(k).lower(): v for k, v in (fetch.get("headers") or {}).items()} \
        if isinstance(fetch.get("headers"), dict) else {}
    out_fetch = {k: fetch[k] for k in ("ok", "status_code", "time", "error", "encoding") if k in fetch}
    if fetch.get("redirect_url"):
        out_fetch["url"] = fetch["redirect_url"]
    for key, header in (("etag", "etag"), ("last_modified", "last-modified")):
        if headers.get(header):
            out_fetch[key] = headers[header]
    out_process = {k: process[k] for k in ("ok", "time", "follows", "logs", "exception") if k in process}
    if "outputs" in process:
        out_process["results"] = process["outputs"]
    if track.get("save") not in (None, {}):
        out_process["save"] = track["save"]
    return {"fetch": out_fetch, "process": out_process}


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _optional_float(value: Any) -> float | None:
    return None if value is None else _float(value, 0.0)


# -- the whole import ----------------------------------------------------------------------------------

@dataclass
class Target:
    """spiderflow's databases to import into (any may be None when that part is not imported)."""

    projectdb: Any = None
    resultdb: Any = None
    taskdb: Any = None


def import_pyspider(sources: dict[str, Source], target: Target, settings: Settings | None = None, *,
                    dry_run: bool = False, only: Iterable[str] | None = None,
                    status: ProjectStatus | None = None, check_scripts: bool = True,
                    progress: Callable[[str], None] | None = None) -> Report:
    """Import the pyspider databases *sources* (by role) into *target*; see the module docstring.

    On a dry run the target databases are only read (and may be None: not there yet).
    """
    settings = settings or Settings()
    report = Report(dry_run=dry_run)
    wanted = set(only) if only else None
    say = progress or (lambda text: None)
    if "projectdb" in sources:
        say(f"projects from {sources['projectdb']}")
        import_projects(sources["projectdb"], target.projectdb, settings, report, only=wanted, status=status,
                        check=check_scripts)
    if "resultdb" in sources:
        say(f"results from {sources['resultdb']}")
        import_results(sources["resultdb"], target.resultdb, report, only=wanted)
    if "taskdb" in sources:
        say(f"tasks from {sources['taskdb']}")
        import_tasks(sources["taskdb"], target.taskdb, report, only=wanted)
    return report


__all__ = [
    "TASK_STATUS",
    "ProjectLine",
    "Report",
    "Target",
    "import_projects",
    "import_pyspider",
    "import_results",
    "import_tasks",
    "project_fields",
    "task_from_pyspider",
]
