"""The web UI's Jobs page (``/jobs``) and its JSON API (``/api/jobs``).

``GET /api/jobs?project=&status=`` lists jobs (without their events), ``POST /api/jobs``
schedules one (``{"project", "spider"?, "jobid"?, "args"?, "settings"?, "priority"?,
"version"?}``; 201), ``GET /api/jobs/<id>`` is one job with its events, and ``POST
/api/jobs/<id>/cancel`` cancels it. They follow the rest of ``/api/``: JSON bodies, the
xsrf token or a bearer token, ``{"error": message}`` with 400, 403 (locked project), 404
and 409 (a taken job id). The page shows pending, running and finished jobs with cancel
buttons and links to each job's log and items, and refreshes itself every few seconds.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from typing import Any

from ..exceptions import ConfigError
from ..webui.base import ApiHandler, PageHandler
from ..webui.helpers import fail
from .scrapyd import items_url, jobdb_of, log_url, node_name, project_spiders
from .store import FINISHED, PENDING, RUNNING, STATES

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 5


def job_json(job: dict[str, Any], kept: bool, *, events: bool = False) -> dict[str, Any]:
    """A job for the API and the page: its fields, and where its log and items are (None: no longer kept)."""
    out = {k: v for k, v in job.items() if events or k != "events"}
    out["log_url"] = log_url(job) if kept else None
    out["items_url"] = items_url(job) if kept else None
    return out


def jobs_json(jobdb: Any, jobs_to_keep: int, project: str | None = None, status: str | None = None) -> list[dict]:
    seen: dict[tuple[str, str], int] = {}
    out = []
    for job in jobdb.list(project, status):
        kept = True
        if job["status"] == FINISHED:       # newest first, as JobDB.kept counts them
            key = (job["project"], job["spider"])
            seen[key] = seen.get(key, 0) + 1
            kept = seen[key] <= jobs_to_keep
        out.append(job_json(job, kept))
    return out


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                              for v in value.values()):
        raise fail(400, f"{what} must be an object of names to strings")
    return {str(k): str(v) for k, v in value.items()}


class JobsPage(PageHandler):
    """``/jobs``: pending, running and finished jobs."""

    def get(self) -> None:
        settings = self.state.settings
        jobdb = jobdb_of(self.state)
        jobdb.trim(settings.finished_to_keep)
        jobs = jobs_json(jobdb, settings.jobs_to_keep)
        by_state = {state: [j for j in jobs if j["status"] == state] for state in STATES}
        projects = [p["name"] for p in self.state.projectdb.list(["name"])]
        now = time.time()
        self.render("jobs.html", jobs=by_state, projects=sorted(projects), refresh=REFRESH_SECONDS,
                    node=node_name(settings), jobs_to_keep=settings.jobs_to_keep, now=now,
                    scrapyd_time=_html_time, runtime=lambda job: _runtime(job, now))


class JobsApi(ApiHandler):
    """``GET /api/jobs`` lists, ``POST /api/jobs`` schedules."""

    def get(self) -> None:
        project = self.str_arg("project")
        if project is not None:
            project = self.project_name(project)
        status = self.str_arg("status")
        if status is not None and status not in STATES:
            raise fail(400, f"status must be one of {', '.join(STATES)}")
        jobdb = jobdb_of(self.state)
        settings = self.state.settings
        jobdb.trim(settings.finished_to_keep)
        self.reply({"jobs": jobs_json(jobdb, settings.jobs_to_keep, project, status), "counts": jobdb.counts(),
                    "node_name": node_name(settings)})

    async def post(self) -> None:
        body = self.body_object()
        name = body.get("project")
        if not isinstance(name, str):
            raise fail(400, "project (a project name) is required")
        row = self.get_project(name, ["name", "group"])
        self.require_editable(row)
        jobdb = jobdb_of(self.state)
        version = body.get("version") or None
        if version is not None and (not isinstance(version, str) or jobdb.get_version(row["name"], version) is None):
            raise fail(404, f"project {row['name']!r} has no version {version!r}")
        spider = body.get("spider") or row["name"]
        spiders = project_spiders(self.state.projectdb, jobdb, row["name"], version) or []
        if not isinstance(spider, str) or (spider not in spiders and spider != row["name"]):
            raise fail(400, f"spider {spider!r} is not one of the project's: {', '.join([*spiders, row['name']])}")
        priority = body.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, (int, float)) or not math.isfinite(priority):
            raise fail(400, "priority must be a finite number")
        jobid = body.get("jobid") or None
        if jobid is not None and not isinstance(jobid, str):
            raise fail(400, "jobid must be a string")
        if jobid is not None and jobdb.get(jobid) is not None:
            raise fail(409, f"job id {jobid!r} is taken; choose another")
        try:
            job = jobdb.schedule(row["name"], spider, jobid=jobid, args=_str_map(body.get("args"), "args"),
                                 settings=_str_map(body.get("settings"), "settings"), priority=priority,
                                 version=version)
        except ConfigError as exc:
            raise fail(409 if "is taken" in str(exc) else 400, str(exc)) from None
        jobdb.add_event(job["id"], f"scheduled in the web UI by {self.current_user or 'anonymous'} (spider {spider})")
        logger.info("web UI: job %s of %s scheduled", job["id"], row["name"])
        await self.state.scheduler.get("update_project")
        self.reply({"job": job_json(jobdb.get(job["id"]) or job, True)}, status=201)


class JobApi(ApiHandler):
    """``GET /api/jobs/<id>``: a job with its events."""

    def get(self, jobid: str) -> None:
        jobdb = jobdb_of(self.state)
        job = jobdb.get(jobid)
        if job is None:
            raise fail(404, f"no job {jobid!r}")
        self.reply({"job": job_json(job, jobdb.kept(job, self.state.settings.jobs_to_keep), events=True)})


class JobCancelApi(ApiHandler):
    """``POST /api/jobs/<id>/cancel``: a pending job ends now, a running one when the scheduler stops it."""

    async def post(self, jobid: str) -> None:
        jobdb = jobdb_of(self.state)
        job = jobdb.get(jobid)
        if job is None:
            raise fail(404, f"no job {jobid!r}")
        row = self.state.projectdb.get(job["project"], ["name", "group"])
        if row is not None:
            self.require_editable(row)
        prevstate = jobdb.request_cancel(jobid)
        if prevstate in (PENDING, RUNNING):
            jobdb.add_event(jobid, f"cancel requested in the web UI by {self.current_user or 'anonymous'}")
            logger.info("web UI: job %s of %s cancelled (was %s)", jobid, job["project"], prevstate)
            await self.state.scheduler.get("update_project")
        job = jobdb.get(jobid) or job
        self.reply({"prevstate": prevstate, "job": job_json(job, jobdb.kept(job, self.state.settings.jobs_to_keep))})


def routes() -> list[tuple[str, type]]:
    return [
        (r"/jobs", JobsPage),
        (r"/api/jobs", JobsApi),
        (r"/api/jobs/([^/]+)", JobApi),
        (r"/api/jobs/([^/]+)/cancel", JobCancelApi),
    ]


__all__ = ["JobApi", "JobCancelApi", "JobsApi", "JobsPage", "job_json", "jobs_json", "routes"]


def _html_time(ts: float) -> str:
    """A time as scrapyd's /jobs page writes it: local time to the second."""
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _runtime(job: dict, now: float) -> str:
    """How long a job ran (or has run), as scrapyd's /jobs page writes it: ``H:MM:SS``."""
    seconds = max(0, int((job["end_time"] or now) - job["start_time"]))
    return str(datetime.timedelta(seconds=seconds))
