"""The scrapyd-compatible service API, served by the web UI at scrapyd's own paths.

``daemonstatus.json``, ``addversion.json``, ``schedule.json``, ``cancel.json``,
``status.json``, ``listprojects.json``, ``listversions.json``, ``listspiders.json``,
``listjobs.json``, ``delversion.json``, ``delproject.json``, ``/logs/<project>/<spider>/<job>.log``
and ``/items/<project>/<spider>/<job>.jl`` answer as scrapyd 1.6 does, plus Scrapyd_Service's
``crawllog.json`` (the tail of a job's log) and ``pullcode.json`` (``git pull`` in
``projects_dir``, then every changed script stored as a new version). Parameters come as
query or form fields (urlencoded or multipart). Every JSON answer carries ``node_name`` and
``status``; bad input is ``{"status": "error", "message": ...}`` with HTTP 200, as scrapyd
answers. A scrapyd *spider* is a Handler class of the project's script (or the project's
name), an *egg* the script itself or a zip holding it.

With web UI credentials these paths need them too: HTTP basic auth (or a bearer token, or
the session cookie), with the web UI's login limit. A form post passes the web UI's origin
rule (a browser's request from another site is refused) but needs no xsrf token and no JSON
body, since scrapyd clients send neither. Unlike scrapyd, answers carry no
``Access-Control-Allow-Origin: *``: any web page could otherwise read them from a web UI
that has no credentials.
"""

from __future__ import annotations

import asyncio
import datetime
import glob
import json
import logging
import os
import socket
import urllib.parse
import weakref
from collections.abc import Iterator
from typing import Any

import tornado.iostream
import tornado.web

from ..exceptions import ConfigError, InvalidProjectName, StorageUnavailable
from ..message import ProjectStatus, validate_project_name
from ..runtime.scripts import read_script, store_project
from ..webui import guard
from ..webui.base import API_CSP, BaseHandler
from ..webui.helpers import error_message
from . import code, output
from .store import FINISHED, PENDING, RUNNING, JobDB

logger = logging.getLogger(__name__)

MAX_CRAWLLOG_LINES = 10_000
STREAM_BATCH = 500
_JOBDBS: weakref.WeakKeyDictionary[Any, JobDB] = weakref.WeakKeyDictionary()


class Refused(Exception):
    """Bad input: answered ``{"status": "error", "message": ...}`` with HTTP 200, as scrapyd does."""


# -- shared with the Jobs page and the CLI -----------------------------------------------------------

def jobdb_of(state: Any) -> JobDB:
    """The web UI's JobDB, on its projectdb's engine."""
    db = _JOBDBS.get(state.projectdb)
    if db is None:
        db = _JOBDBS[state.projectdb] = JobDB(state.projectdb.engine)
    return db


def node_name(settings: Any) -> str:
    """scrapyd's ``node_name``: the ``node_name`` setting, else the host name."""
    return settings.node_name or socket.gethostname()


def scrapyd_time(ts: float | None) -> str | None:
    """A time as scrapyd writes it: ``str()`` of a local datetime (``2024-05-01 12:00:00.123456``)."""
    return None if ts is None else str(datetime.datetime.fromtimestamp(ts))


def _path(*segments: str) -> str:
    return "/".join(urllib.parse.quote(s, safe="") for s in segments)


def log_url(job: dict[str, Any]) -> str:
    return f"/logs/{_path(job['project'], job['spider'], job['id'])}.log"


def items_url(job: dict[str, Any]) -> str:
    return f"/items/{_path(job['project'], job['spider'], job['id'])}.jl"


def project_spiders(projectdb: Any, jobdb: JobDB, project: str, version: str | None = None) -> list[str] | None:
    """The spiders of *project* (of its *version*); None if there is no such project or version."""
    if version:
        row = jobdb.get_version(project, version)
        return None if row is None else code.spiders(row["script"])
    try:
        row = projectdb.get(project, ["name", "script"])
    except InvalidProjectName:
        return None
    return None if row is None else code.spiders(row["script"])


def listjobs(jobdb: JobDB, jobs_to_keep: int, project: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """listjobs.json's pending, running and finished lists, with scrapyd's fields."""
    out: dict[str, list[dict[str, Any]]] = {PENDING: [], RUNNING: [], FINISHED: []}
    seen: dict[tuple[str, str], int] = {}
    for job in jobdb.list(project):
        status = job["status"]
        if status == PENDING:
            out[PENDING].append({"id": job["id"], "project": job["project"], "spider": job["spider"],
                                 "version": job["version"], "settings": job["settings"], "args": job["args"]})
            continue
        if status == RUNNING:
            kept = True
        else:   # newest first: the first jobs_to_keep of each (project, spider) keep their log and items
            key = (job["project"], job["spider"])
            seen[key] = seen.get(key, 0) + 1
            kept = seen[key] <= jobs_to_keep
        entry: dict[str, Any] = {"id": job["id"], "project": job["project"], "spider": job["spider"]}
        if status == RUNNING:
            entry["pid"] = job["pid"]
        entry["start_time"] = scrapyd_time(job["start_time"])
        if status == FINISHED:
            entry["end_time"] = scrapyd_time(job["end_time"])
        entry["log_url"] = log_url(job) if kept else None
        entry["items_url"] = items_url(job) if kept else None
        out[status].append(entry)
    return out


def not_kept(job: dict[str, Any], what: str, jobs_to_keep: int) -> str:
    return (f"the {what} of job {job['id']!r} is no longer kept: only the latest {jobs_to_keep} finished "
            f"jobs of each spider keep theirs (jobs_to_keep)")


async def stream(handler: tornado.web.RequestHandler, lines: Iterator[str], executor: Any) -> None:
    """Write *lines* (each with its newline) in batches read in *executor*, flushing each."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            batch = await loop.run_in_executor(executor, _take, lines, STREAM_BATCH)
            if not batch:
                break
            handler.write("".join(batch))
            await handler.flush()
    except tornado.iostream.StreamClosedError:
        pass    # the client went away
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            close()
    handler.finish()


def _take(lines: Iterator[str], count: int) -> list[str]:
    batch = []
    for line in lines:
        batch.append(line)
        if len(batch) >= count:
            break
    return batch


def _newline(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        yield line + "\n"


# -- the handlers ------------------------------------------------------------------------------------

class ScrapydHandler(BaseHandler):
    """A scrapyd web service: form or query parameters in, JSON out (see the module docstring)."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Security-Policy", API_CSP)

    @property
    def jobdb(self) -> JobDB:
        return jobdb_of(self.state)

    def check_xsrf_cookie(self) -> None:
        """The host and origin rules of the web UI, but no xsrf token: scrapyd clients send none."""
        self.check_host()
        why = guard.foreign_origin(self.request.headers, self.request.host, self.request.protocol)
        if why:
            logger.warning("web UI: refused %s %s: %s", self.request.method, self.request.path, why)
            raise tornado.web.HTTPError(403, "%s", why)

    def deny(self) -> None:
        raise tornado.web.HTTPError(401, "Unauthorized")

    def allowed(self) -> str:
        methods = ["OPTIONS", "HEAD"]
        methods += [m for m in ("GET", "POST") if self._has(m.lower())]
        return ", ".join(methods)

    def _has(self, method: str) -> bool:
        return getattr(type(self), method) is not getattr(tornado.web.RequestHandler, method)

    def options(self, *args: Any) -> None:
        self.set_header("Allow", self.allowed())
        self.set_status(204)
        self.finish()

    def head(self, *args: Any) -> None:
        if not self._has("get"):
            raise tornado.web.HTTPError(405)
        self.set_status(200)
        self.finish()

    # -- parameters ---------------------------------------------------------------------------------
    def param(self, name: str, required: bool = True, default: Any = None) -> Any:
        values = self.request.arguments.get(name)
        if not values:
            if required:
                raise Refused(f"'{name}' parameter is required")
            return default
        try:
            return values[0].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Refused(f"{name} is invalid: {exc}") from None

    def params(self, name: str) -> list[str]:
        try:
            return [v.decode("utf-8") for v in self.request.arguments.get(name, [])]
        except UnicodeDecodeError as exc:
            raise Refused(f"{name} is invalid: {exc}") from None

    def project_row(self, name: str, fields: list[str] | None = None) -> dict[str, Any]:
        """The project *name*, or the scrapyd error ``project 'x' not found``."""
        try:
            row = self.state.projectdb.get(name, fields)
        except InvalidProjectName:
            row = None
        if row is None:
            raise Refused(f"project '{name}' not found")
        return row

    def editable(self, row: dict[str, Any]) -> None:
        if not self.can_edit(row):
            how = ("send the web UI's credentials" if self.auth.enabled else
                   "locked projects are read-only while the web UI has no credentials")
            raise Refused(f"project '{row['name']}' is locked (group 'lock'); {how}")

    # -- answers --------------------------------------------------------------------------------------
    def answer(self, data: dict[str, Any], status: str = "ok") -> None:
        data["status"] = status
        data["node_name"] = node_name(self.state.settings)
        self.finish(json.dumps(data, ensure_ascii=False, default=str) + "\n")

    def _handle_request_exception(self, e: BaseException) -> None:
        """Bad input (Refused, ConfigError, a bad project name) is scrapyd's error answer with HTTP 200."""
        if isinstance(e, (Refused, ConfigError, InvalidProjectName)) and not self._finished:
            self.clear()
            self.set_status(200)
            self.answer({"message": str(e)}, "error")
            return
        super()._handle_request_exception(e)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Basic realm="spiderflow"')
            self.set_header("Content-Type", "text/plain")
            self.finish("Unauthorized")
            return
        if status_code == 405:
            self.set_header("Allow", self.allowed())
        if isinstance(exc, StorageUnavailable):
            self.set_status(503)
            message = str(exc)
        else:
            message = error_message(status_code, kwargs.get("exc_info"), self._reason)
        self.set_header("Content-Type", "application/json")
        self.answer({"message": message}, "error")

    async def poke_scheduler(self) -> None:
        await self.state.scheduler.get("update_project")


class DaemonStatus(ScrapydHandler):
    def get(self) -> None:
        counts = self.jobdb.counts()
        self.answer({"pending": counts[PENDING], "running": counts[RUNNING], "finished": counts[FINISHED]})


class AddVersion(ScrapydHandler):
    async def post(self) -> None:
        project = self.param("project")
        version = self.param("version")
        upload = self.request.files.get("egg")
        if upload:
            data = upload[0]["body"]
        else:
            raw = self.request.arguments.get("egg")
            if not raw:
                raise Refused("'egg' parameter is required")
            data = raw[0]
        try:
            validate_project_name(project)
        except InvalidProjectName as exc:
            raise Refused(str(exc)) from None
        old = self.state.projectdb.get(project, ["name", "group"])
        if old is not None:
            self.editable(old)
        script = code.script_from_upload(data, project)
        self.jobdb.add_version(project, version, script)
        store_project(self.state.projectdb, project, script, settings=self.state.settings)
        logger.info("scrapyd API: project %s version %s added", project, version)
        await self.poke_scheduler()
        self.answer({"project": project, "version": version, "spiders": len(code.spiders(script))})


class Schedule(ScrapydHandler):
    _OWN = ("project", "spider", "_version", "jobid", "priority", "setting", "_xsrf")

    async def post(self) -> None:
        project = self.param("project")
        spider = self.param("spider")
        version = self.param("_version", required=False)
        jobid = self.param("jobid", required=False)
        priority = self.param("priority", required=False, default="0")
        try:
            priority = float(priority)
        except ValueError as exc:
            raise Refused(f"priority is invalid: {exc}") from None
        settings = {}
        for item in self.params("setting"):
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise Refused(f"setting is invalid: {item!r} is not NAME=VALUE")
            settings[name] = value
        row = self.project_row(project, ["name", "group"])
        if version and self.jobdb.get_version(project, version) is None:
            raise Refused(f"version '{version}' not found")
        names = project_spiders(self.state.projectdb, self.jobdb, project, version) or []
        if spider not in names and spider != project:
            raise Refused(f"spider '{spider}' not found")
        self.editable(row)
        args = {}
        for key, values in self.request.arguments.items():
            if key in self._OWN or not values:
                continue
            try:
                args[key] = values[0].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Refused(f"{key} is invalid: {exc}") from None
        job = self.jobdb.schedule(project, spider, jobid=jobid, args=args, settings=settings, priority=priority,
                                  version=version or None)
        self.jobdb.add_event(job["id"], f"scheduled through the scrapyd API (spider {spider}, priority {priority:g})")
        logger.info("scrapyd API: job %s of %s scheduled", job["id"], project)
        await self.poke_scheduler()
        self.answer({"jobid": job["id"]})


class Cancel(ScrapydHandler):
    async def post(self) -> None:
        project = self.param("project")
        jobid = self.param("job")
        signal = self.param("signal", required=False, default="INT")
        row = self.project_row(project, ["name", "group"])
        job = self.jobdb.get(jobid)
        prevstate = None
        if job is not None and job["project"] == row["name"] and job["status"] != FINISHED:
            self.editable(row)
            prevstate = self.jobdb.request_cancel(jobid)
            if prevstate in (PENDING, RUNNING):
                self.jobdb.add_event(jobid, f"cancel requested through the scrapyd API (signal {signal})")
                logger.info("scrapyd API: job %s of %s cancelled (was %s)", jobid, project, prevstate)
                await self.poke_scheduler()
            else:
                prevstate = None
        self.answer({"prevstate": prevstate})


class Status(ScrapydHandler):
    def get(self) -> None:
        jobid = self.param("job")
        project = self.param("project", required=False)
        if project is not None:
            self.project_row(project, ["name"])
        job = self.jobdb.get(jobid)
        if job is not None and project is not None and job["project"] != project:
            job = None
        self.answer({"currstate": None if job is None else job["status"]})


class ListProjects(ScrapydHandler):
    def get(self) -> None:
        self.answer({"projects": sorted(p["name"] for p in self.state.projectdb.list(["name"]))})


class ListVersions(ScrapydHandler):
    def get(self) -> None:
        project = self.param("project")
        self.answer({"versions": self.jobdb.list_versions(project)})


class ListSpiders(ScrapydHandler):
    def get(self) -> None:
        project = self.param("project")
        version = self.param("_version", required=False)
        self.project_row(project, ["name"])
        names = project_spiders(self.state.projectdb, self.jobdb, project, version or None)
        if names is None:
            raise Refused(f"version '{version}' not found")
        self.answer({"spiders": names})


class ListJobs(ScrapydHandler):
    def get(self) -> None:
        project = self.param("project", required=False)
        if project is not None:
            self.project_row(project, ["name"])
        settings = self.state.settings
        self.jobdb.trim(settings.finished_to_keep)
        self.answer(listjobs(self.jobdb, settings.jobs_to_keep, project))


class DeleteVersion(ScrapydHandler):
    async def post(self) -> None:
        project = self.param("project")
        version = self.param("version")
        db = self.jobdb
        if db.get_version(project, version) is None:
            raise Refused(f"version '{version}' not found")
        row = self.state.projectdb.get(project, ["name", "group", "status"])
        if row is not None:
            self.editable(row)
        latest = db.get_version(project)
        db.delete_version(project, version)
        now_latest = db.get_version(project)
        if row is not None and latest is not None and latest["version"] == version and now_latest is not None:
            # the processors run the latest version: it is the one before now
            store_project(self.state.projectdb, project, now_latest["script"], settings=self.state.settings)
            await self.poke_scheduler()
        logger.info("scrapyd API: project %s version %s deleted", project, version)
        self.answer({})


class DeleteProject(ScrapydHandler):
    async def post(self) -> None:
        project = self.param("project")
        try:
            row = self.state.projectdb.get(project, ["name", "group", "status"])
        except InvalidProjectName:
            row = None
        if row is None and not self.jobdb.list_versions(project):
            raise Refused(f"project '{project}' not found")
        if row is not None:
            self.editable(row)
            busy = self.jobdb.list(project, RUNNING)
            if busy or row["status"] in (ProjectStatus.RUNNING, ProjectStatus.DEBUG):
                what = f"job {busy[0]['id']} is running" if busy else f"it is {row['status']}"
                raise Refused(f"project '{project}' cannot be deleted while {what}: cancel its job "
                              "(or set it to STOP) first")
            state = self.state
            tasks = state.taskdb.drop(project)
            results = state.resultdb.drop(project)
            state.projectdb.drop(project)
            logger.warning("scrapyd API: project %s deleted (%d tasks, %d results)", project, tasks, results)
        self.jobdb.delete_project(project)
        await self.poke_scheduler()
        self.answer({})


class CrawlLog(ScrapydHandler):
    """``crawllog.json?project=&job=&lines=N``: the last N lines of a job's log (Scrapyd_Service)."""

    async def get(self) -> None:
        project = self.param("project")
        jobid = self.param("job")
        raw = self.param("lines", required=False, default="100")
        try:
            lines = int(raw)
        except ValueError:
            raise Refused(f"lines is invalid: {raw!r} is not an integer") from None
        if not 0 < lines <= MAX_CRAWLLOG_LINES:
            raise Refused(f"lines is invalid: give 1 to {MAX_CRAWLLOG_LINES}, not {lines}")
        self.project_row(project, ["name"])
        job = self.jobdb.get(jobid)
        if job is None or job["project"] != project:
            raise Refused(f"job '{jobid}' not found")
        keep = self.state.settings.jobs_to_keep
        if not self.jobdb.kept(job, keep):
            raise Refused(not_kept(job, "log", keep))
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(self.state.executor, lambda: output.tail(
            output.log_lines(self.state.taskdb, job), lines))
        self.answer({"project": project, "job": jobid, "currstate": job["status"], "log": "\n".join(text)})


class PullCode(ScrapydHandler):
    """``pullcode.json``: ``git pull`` in ``projects_dir``; each changed script becomes a new version (Scrapyd_Service)."""

    async def post(self) -> None:
        state = self.state
        loop = asyncio.get_running_loop()
        directory = state.settings.projects_dir
        commit, out = await loop.run_in_executor(state.executor, code.git_pull, directory)
        updated, skipped = [], []
        for path in sorted(glob.glob(os.path.join(glob.escape(directory), "*.py"))):
            if os.path.basename(path).startswith(("_", ".")) or not os.path.isfile(path):
                continue
            try:
                name, script = read_script(path)
            except ConfigError as exc:
                skipped.append({"file": path, "reason": str(exc)})
                continue
            latest = self.jobdb.get_version(name)
            if latest is not None and latest["script"] == script:
                continue            # unchanged since it was last stored (an edit in the web UI stays)
            row = state.projectdb.get(name, ["name", "group"])
            found = code.spiders(script)
            if not found:
                skipped.append({"file": path, "reason": "defines no BaseHandler subclass"})
                continue
            if row is not None and not self.can_edit(row):
                skipped.append({"file": path, "reason": f"project '{name}' is locked (group 'lock')"})
                continue
            self.jobdb.add_version(name, commit, script)
            store_project(state.projectdb, name, script, settings=state.settings)
            updated.append({"project": name, "version": commit, "spiders": len(found)})
        if updated:
            logger.info("scrapyd API: pullcode at %s updated %s", commit, ", ".join(u["project"] for u in updated))
            await self.poke_scheduler()
        self.answer({"commit": commit, "updated": updated, "skipped": skipped, "output": out.strip()[-2000:]})


class JobFile(ScrapydHandler):
    """``/logs/<project>/<spider>/<job>.log`` and ``/items/<project>/<spider>/<job>.jl``, streamed."""

    what = "log"

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "text/plain; charset=utf-8")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 401:
            super().write_error(status_code, **kwargs)
            return
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(error_message(status_code, kwargs.get("exc_info"), self._reason) + "\n")

    def _handle_request_exception(self, e: BaseException) -> None:
        tornado.web.RequestHandler._handle_request_exception(self, e)    # a file: no JSON error answers

    def find(self, project: str, spider: str, jobid: str) -> dict[str, Any]:
        job = self.jobdb.get(jobid)
        if job is None or job["project"] != project or job["spider"] != spider:
            raise tornado.web.HTTPError(404, "%s", f"no job {jobid!r} of spider {spider!r} in project {project!r}")
        keep = self.state.settings.jobs_to_keep
        if not self.jobdb.kept(job, keep):
            raise tornado.web.HTTPError(404, "%s", not_kept(job, self.what, keep))
        return job

    def lines(self, job: dict[str, Any]) -> Iterator[str]:
        return _newline(output.log_lines(self.state.taskdb, job))

    async def get(self, project: str, spider: str, jobid: str) -> None:
        job = self.find(project, spider, jobid)
        await stream(self, self.lines(job), self.state.executor)


class ItemsFile(JobFile):
    what = "items"

    def lines(self, job: dict[str, Any]) -> Iterator[str]:
        return output.item_lines(self.state.resultdb, job)


def routes() -> list[tuple[str, type]]:
    """The scrapyd paths, for the web UI's Application."""
    return [
        (r"/daemonstatus\.json", DaemonStatus),
        (r"/addversion\.json", AddVersion),
        (r"/schedule\.json", Schedule),
        (r"/cancel\.json", Cancel),
        (r"/status\.json", Status),
        (r"/listprojects\.json", ListProjects),
        (r"/listversions\.json", ListVersions),
        (r"/listspiders\.json", ListSpiders),
        (r"/listjobs\.json", ListJobs),
        (r"/delversion\.json", DeleteVersion),
        (r"/delproject\.json", DeleteProject),
        (r"/crawllog\.json", CrawlLog),
        (r"/pullcode\.json", PullCode),
        (r"/logs/([^/]+)/([^/]+)/([^/]+)\.log", JobFile),
        (r"/items/([^/]+)/([^/]+)/([^/]+)\.jl", ItemsFile),
    ]


__all__ = ["Refused", "ScrapydHandler", "items_url", "jobdb_of", "listjobs", "log_url", "node_name", "routes",
           "scrapyd_time"]
