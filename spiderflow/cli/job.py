"""``spiderflow job schedule|list|cancel|log|items``: jobs (one run of a project each) on the databases.

Jobs live in projectdb (:mod:`spiderflow.jobs`); a job's log comes from taskdb and its items
from resultdb, streamed. The scheduler starts pending jobs, one per project at a time.
"""

from __future__ import annotations

import json
import sys
import time

import click

from ..exceptions import ConfigError
from ..jobs import (
    FINISHED,
    PENDING,
    RUNNING,
    STATES,
    connect_jobdb,
    format_time,
    output,
)
from ..jobs.code import spiders
from ..storage import connect_projectdb, connect_resultdb, connect_taskdb
from . import get_settings
from .options import handles_errors

projectdb_option = click.option("--projectdb", default=None, metavar="URL",
                                help="projectdb URL (jobs live there) [sqlite in the data directory].")


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint=what)
        out[name] = value
    return out


def _find(ctx: click.Context, jobid: str, projectdb: str | None) -> dict:
    """Job *jobid*, if its log and items are still kept (as the web UI serves them)."""
    settings = get_settings(ctx, projectdb=projectdb)
    jobdb = connect_jobdb(settings.db_url("projectdb"))
    try:
        found = jobdb.get(jobid)
        if found is None:
            raise ConfigError(f"no job {jobid!r} in {jobdb.url}")
        if not jobdb.kept(found, settings.jobs_to_keep):
            raise ConfigError(f"the log and items of job {jobid!r} are no longer kept: only the latest "
                              f"{settings.jobs_to_keep} finished jobs of each spider keep theirs (jobs_to_keep)")
    finally:
        jobdb.close()
    return found


@click.group("job")
def job() -> None:
    """Schedule, list and cancel jobs; read a job's log and items."""


@job.command("schedule")
@click.argument("project")
@click.option("--spider", default=None, help="The Handler class to run [the project's name: its Handler].")
@click.option("--jobid", default=None, help="The job's id (letters, digits, '_', '.', '-') [a new one].")
@click.option("-a", "--arg", "args", multiple=True, metavar="NAME=VALUE", help="A job argument (repeatable).")
@click.option("-s", "--set", "sets", multiple=True, metavar="NAME=VALUE", help="A job setting (repeatable).")
@click.option("--priority", type=float, default=0.0, show_default=True, help="Higher runs first among pending jobs.")
@click.option("--version", "version", default=None, help="A stored version of the project [the latest].")
@projectdb_option
@click.pass_context
@handles_errors
def schedule(ctx: click.Context, project: str, spider: str | None, jobid: str | None, args: tuple[str, ...],
             sets: tuple[str, ...], priority: float, version: str | None, projectdb: str | None) -> None:
    """Schedule a job of PROJECT; prints its id. It waits pending until the scheduler starts it."""
    job_args, job_settings = _pairs(args, "-a"), _pairs(sets, "-s")
    settings = get_settings(ctx, projectdb=projectdb)
    url = settings.db_url("projectdb")
    projects, jobdb = connect_projectdb(url), connect_jobdb(url)
    try:
        row = projects.get(project, ["name", "script"])
        if row is None:
            raise ConfigError(f"no project named {project!r} in {projects.url}")
        script = row["script"]
        if version is not None:
            stored = jobdb.get_version(project, version)
            if stored is None:
                raise ConfigError(f"project {project!r} has no version {version!r}")
            script = stored["script"]
        names = spiders(script)
        spider = spider or project
        if spider not in names and spider != project:
            raise ConfigError(f"project {project!r} has no spider {spider!r}; its spiders: "
                              f"{', '.join([*names, project])}")
        made = jobdb.schedule(project, spider, jobid=jobid, args=job_args, settings=job_settings,
                              priority=priority, version=version)
        jobdb.add_event(made["id"], f"scheduled with `spiderflow job schedule` (spider {spider})")
    finally:
        projects.close()
        jobdb.close()
    click.echo(made["id"])


@job.command("list")
@click.option("--project", default=None, help="Only this project's jobs.")
@click.option("--status", type=click.Choice(STATES), default=None, help="Only jobs in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object with every field, events too).")
@projectdb_option
@click.pass_context
@handles_errors
def list_jobs(ctx: click.Context, project: str | None, status: str | None, as_json: bool,
              projectdb: str | None) -> None:
    """List jobs: pending (highest priority first), running, then finished (newest first)."""
    settings = get_settings(ctx, projectdb=projectdb)
    jobdb = connect_jobdb(settings.db_url("projectdb"))
    try:
        jobdb.trim(settings.finished_to_keep)
        jobs = jobdb.list(project, status)
    finally:
        jobdb.close()
    if as_json:
        click.echo(json.dumps(jobs, indent=2, ensure_ascii=False))
        return
    if not jobs:
        click.echo("no jobs" + (f" of project {project}" if project else "") + ": schedule one with "
                   "`spiderflow job schedule PROJECT`")
        return
    now = time.time()
    click.echo(f"{'ID':34} {'PROJECT':16} {'SPIDER':14} {'STATE':9} {'OUTCOME':9} {'START':23} {'RUNTIME':>8} "
               f"{'PAGES':>7} {'RESULTS':>7} {'ERRORS':>6}")
    for j in jobs:
        start = format_time(j["start_time"]) if j["start_time"] else "-"
        runtime = f"{(j['end_time'] or now) - j['start_time']:.0f}s" if j["start_time"] else "-"
        state = "cancelling" if j["status"] == RUNNING and j["cancel_requested"] else j["status"]
        click.echo(f"{j['id']:34} {j['project']:16} {j['spider']:14} {state:9} {j['outcome'] or '-':9} {start:23} "
                   f"{runtime:>8} {j['pages']:>7} {j['results']:>7} {j['errors']:>6}")


@job.command("cancel")
@click.argument("jobid")
@projectdb_option
@click.pass_context
@handles_errors
def cancel(ctx: click.Context, jobid: str, projectdb: str | None) -> None:
    """Cancel job JOBID: a pending one ends now, a running one when the scheduler stops it."""
    settings = get_settings(ctx, projectdb=projectdb)
    jobdb = connect_jobdb(settings.db_url("projectdb"))
    try:
        prevstate = jobdb.request_cancel(jobid)
        if prevstate in (PENDING, RUNNING):
            jobdb.add_event(jobid, "cancel requested with `spiderflow job cancel`")
    finally:
        jobdb.close()
    if prevstate is None:
        raise ConfigError(f"no job {jobid!r}")
    if prevstate == PENDING:
        click.echo(f"job {jobid} cancelled (it was pending)")
    elif prevstate == RUNNING:
        click.echo(f"job {jobid}: cancel requested; the scheduler stops it")
    else:
        assert prevstate == FINISHED
        click.echo(f"job {jobid} has finished already; nothing to cancel")


@job.command("log")
@click.argument("jobid")
@click.option("--tail", type=click.IntRange(1, 1_000_000), default=None, help="Only the last N lines.")
@projectdb_option
@click.option("--taskdb", default=None, metavar="URL", help="taskdb URL [sqlite in the data directory].")
@click.pass_context
@handles_errors
def log(ctx: click.Context, jobid: str, tail: int | None, projectdb: str | None, taskdb: str | None) -> None:
    """Print job JOBID's log: its own events and the logs of its tasks, by time."""
    found = _find(ctx, jobid, projectdb)
    tasks = connect_taskdb(get_settings(ctx, projectdb=projectdb, taskdb=taskdb).db_url("taskdb"))
    try:
        lines = output.log_lines(tasks, found)
        for line in output.tail(lines, tail) if tail else lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    finally:
        tasks.close()


@job.command("items")
@click.argument("jobid")
@projectdb_option
@click.option("--resultdb", default=None, metavar="URL", help="resultdb URL [sqlite in the data directory].")
@click.pass_context
@handles_errors
def items(ctx: click.Context, jobid: str, projectdb: str | None, resultdb: str | None) -> None:
    """Print job JOBID's items (results) as JSON lines: taskid, url, result, updatetime."""
    found = _find(ctx, jobid, projectdb)
    results = connect_resultdb(get_settings(ctx, projectdb=projectdb, resultdb=resultdb).db_url("resultdb"))
    try:
        for line in output.item_lines(results, found):
            sys.stdout.write(line)
        sys.stdout.flush()
    finally:
        results.close()


COMMANDS = [job]
