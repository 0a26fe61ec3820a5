"""``spiderflow queue check [DIR]``: the health check before a deploy.

:func:`run_checks` checks, and reports each as a :class:`Check` (ok, failed, or skipped):

* every script (DIR's, or the stored projects') compiles, runs its top level and defines a
  ``Handler(BaseHandler)`` that can be made;
* each project's start URLs answer: ``on_start`` is run here, as the processor runs it, and
  what it crawls is fetched once by the fetcher's own code (headers, proxy, cookies of the
  script; the time limit is ``timeout``), with the status code and the time it took — a
  status of 400 or more, or a failed fetch (599), fails;
* the queue backend answers (when it is shared: redis:// or amqp://), and the projectdb,
  taskdb and resultdb databases, and the scheduler's control interface.

Nothing goes through the pipeline and nothing is stored. Every wait is bounded by *timeout*.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..exceptions import ControlError, ScriptError, redact_url
from ..message import Task, special_task
from ..runtime.compose import build_fetcher, control_client
from ..settings import Settings
from ..storage import connect_projectdb, connect_resultdb, connect_taskdb
from .common import bounded, error_text, missing_sqlite_file, no_database
from .status import queue_sizes, shared_queue

__all__ = ["DEFAULT_MAX_URLS", "DEFAULT_TIMEOUT", "Check", "run_checks"]

Script = tuple[str, str, str | None]     # (project name, script text, file or None when stored)
CONNECT = {"projectdb": connect_projectdb, "taskdb": connect_taskdb, "resultdb": connect_resultdb}
PARALLEL_FETCHES = 10
DEFAULT_TIMEOUT = 10.0      # seconds a fetch or a service may take
DEFAULT_MAX_URLS = 10       # start URLs fetched per project


@dataclass(slots=True)
class Check:
    """One check: *what* was checked, whether it passed (None: skipped) and what was seen."""

    kind: str               # script, start URL, on_start, queue, projectdb, taskdb, resultdb, scheduler
    what: str
    ok: bool | None
    detail: str
    project: str | None = None
    seconds: float | None = None
    status_code: int | None = None

    @property
    def name(self) -> str:
        return f"{self.kind} {self.what}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_checks(settings: Settings, scripts: list[Script] | None = None, *, timeout: float = DEFAULT_TIMEOUT,
               max_urls: int = DEFAULT_MAX_URLS) -> list[Check]:
    """Every check of the module docstring, in that order. *scripts* None: the stored projects'.

    At most *max_urls* start URLs are fetched per project.
    """
    checks: list[Check] = []
    databases = _check_databases(settings, timeout)
    if scripts is None:
        scripts = _stored_scripts(settings, timeout) if databases[0].ok else []
    projects = []
    for name, text, path in scripts:
        label = f"{path} (project {name})" if path else f"of project {name}"
        try:
            project = _load(name, text, settings)
        except ScriptError as exc:
            checks.append(Check("script", label, False, str(exc), project=name))
            continue
        checks.append(Check("script", label, True, f"compiles and defines {type(project.handler).__name__}",
                            project=name))
        projects.append(project)
    if projects:
        checks += asyncio.run(_start_urls(projects, settings, timeout, max_urls))
    checks.append(_check_queue(settings, timeout))
    checks += databases
    checks.append(_check_scheduler(settings, timeout))
    return checks


def _load(name: str, text: str, settings: Settings) -> Any:
    from ..processor import load_project
    return load_project(name, text, time_limit=settings.process_time_limit)


def _stored_scripts(settings: Settings, timeout: float) -> list[Script]:
    def read() -> list[Script]:
        db = connect_projectdb(settings.db_url("projectdb"))
        try:
            return [(r["name"], r["script"], None) for r in db.list(fields=["name", "script"])]
        finally:
            db.close()

    return bounded(read, timeout, "projectdb")


# -- start URLs ----------------------------------------------------------------------------------

async def _start_urls(projects: list[Any], settings: Settings, timeout: float, max_urls: int) -> list[Check]:
    fetcher = build_fetcher(settings)
    limit = asyncio.Semaphore(PARALLEL_FETCHES)
    try:
        plans = [(project, *await _on_start(project, fetcher, settings)) for project in projects]
        # then every fetch at once (no on_start runs meanwhile, so the times are the fetches')
        fetched = iter(await asyncio.gather(*(_fetch(fetcher, task, timeout, limit)
                                              for _project, _found, tasks in plans for task in tasks[:max_urls])))
        checks: list[Check] = []
        for project, found, tasks in plans:
            checks += found
            checks += [next(fetched) for _task in tasks[:max_urls]]
            if len(tasks) > max_urls:
                checks.append(Check("start URL", f"of project {project.name}", None,
                                    f"{len(tasks) - max_urls} more not checked (--max-urls {max_urls})",
                                    project=project.name))
        return checks
    finally:
        fetcher.close()


async def _on_start(project: Any, fetcher: Any, settings: Settings) -> tuple[list[Check], list[Task]]:
    """Run the project's on_start as the processor would; the tasks it crawls (data: URLs left out)."""
    from ..processor import Response
    name = project.name
    if not callable(getattr(project.handler, "on_start", None)):
        return [Check("on_start", f"of project {name}", None, "no on_start: no start URL to check",
                      project=name)], []
    task = special_task(name, "on_start")
    response = Response.from_fetch_result(await fetcher.fetch(task), task)
    run = project.run(task, response, time_limit=settings.process_time_limit)
    if run.exception:
        return [Check("on_start", f"of project {name}", False, f"on_start failed:\n{run.exception}",
                      project=name)], []
    tasks = [t for t in run.follows if not t.url.startswith("data:")]
    if not tasks:
        return [Check("on_start", f"of project {name}", None, "on_start crawls no URL: nothing to fetch",
                      project=name)], []
    return [], tasks


async def _fetch(fetcher: Any, task: Task, timeout: float, limit: asyncio.Semaphore) -> Check:
    fetch = task.fetch
    bounded_fetch = dataclasses.replace(
        fetch, timeout=min(fetch.timeout or timeout, timeout),
        connect_timeout=min(fetch.connect_timeout or timeout, timeout))
    task = dataclasses.replace(task, fetch=bounded_fetch)
    async with limit:
        started = time.monotonic()
        result = await fetcher.fetch(task)
        seconds = time.monotonic() - started
    code = result.status_code
    ok = 0 < code < 400
    detail = f"{code} in {seconds:.2f} s"
    if not ok:
        detail += f": {result.error}" if result.error else " (an error status: the crawl would fail this task)"
    return Check("start URL", f"{redact_url(task.url)} (project {task.project})", ok, detail,
                 project=task.project, seconds=round(seconds, 3), status_code=code)


# -- services ----------------------------------------------------------------------------------------

def _check_queue(settings: Settings, timeout: float) -> Check:
    if not shared_queue(settings):
        return Check("queue", settings.queue or "(none configured)", None,
                     "not shared: `spiderflow all` keeps its queues inside its processes; the scheduler "
                     "check below covers it")
    what = redact_url(settings.queue)
    started = time.monotonic()
    try:
        sizes = queue_sizes(settings, timeout)
    except Exception as exc:  # every failure is named, none stops the other checks
        return Check("queue", what, False, f"{error_text(exc)}; is the broker running, and is --queue right?")
    return Check("queue", what, True, "answers: " + ", ".join(f"{k} {v}" for k, v in sizes.items()),
                 seconds=round(time.monotonic() - started, 3))


def _check_databases(settings: Settings, timeout: float) -> list[Check]:
    checks = []
    for role, connect in CONNECT.items():
        url = settings.db_url(role)
        what = redact_url(url)
        path = missing_sqlite_file(url)
        if path:
            checks.append(Check(role, what, False, str(no_database(role, url, path))))
            continue

        def ping(connect: Any = connect, url: str = url) -> None:
            db = connect(url)
            try:
                with db.engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
            finally:
                db.close()

        started = time.monotonic()
        try:
            bounded(ping, timeout, f"{role} {what}")
        except Exception as exc:  # every failure is named, none stops the other checks
            checks.append(Check(role, what, False, error_text(exc)))
        else:
            checks.append(Check(role, what, True, "answers", seconds=round(time.monotonic() - started, 3)))
    return checks


def _check_scheduler(settings: Settings, timeout: float) -> Check:
    client = control_client(settings, timeout=timeout)
    started = time.monotonic()
    try:
        projects = client.projects()
    except ControlError as exc:
        hint = " (is the scheduler running? --scheduler-host/--scheduler-port/--scheduler-token)" \
            if exc.status in (0, 401) else ""
        return Check("scheduler", client.url, False, f"{exc}{hint}")
    return Check("scheduler", client.url, True, f"answers; {len(projects)} projects loaded",
                 seconds=round(time.monotonic() - started, 3))
