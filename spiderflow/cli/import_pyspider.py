"""``spiderflow import-pyspider``: move a pyspider deployment's projects, results and tasks into spiderflow."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import click
import sqlalchemy as sa

from ..exceptions import ConfigError, redact_url
from ..importer import Target, import_pyspider, open_source
from ..importer.migrate import Report
from ..message import ProjectStatus
from ..settings import Settings
from ..storage import connect_projectdb, connect_resultdb, connect_taskdb, create_engine
from . import get_settings
from .options import handles_errors
from .project import STATUSES

#: spiderflow's table of each role: a dry run reads a target only if it has it (never creates it)
_TARGET_TABLES = {"projectdb": "spiderflow_project", "resultdb": "spiderflow_result", "taskdb": "spiderflow_task"}
_CONNECT = {"projectdb": connect_projectdb, "resultdb": connect_resultdb, "taskdb": connect_taskdb}
#: the files of pyspider's default data directory
_DATA_FILES = {"projectdb": "project.db", "resultdb": "result.db", "taskdb": "task.db"}


@click.command("import-pyspider")
@click.option("--projectdb", metavar="PYSPIDER_URL", default=None,
              help="pyspider's projectdb: sqlite+projectdb:///data/project.db, mysql+projectdb://user:pass@host/"
                   "projectdb, sqlalchemy+postgresql+projectdb://..., a plain SQLAlchemy URL or a SQLite file.")
@click.option("--resultdb", metavar="PYSPIDER_URL", default=None, help="pyspider's resultdb (same forms).")
@click.option("--taskdb", metavar="PYSPIDER_URL", default=None,
              help="pyspider's taskdb (same forms): its tasks are imported too, ACTIVE ones to go on crawling.")
@click.option("--pyspider-data", metavar="DIR", default=None,
              help="pyspider's data directory: its project.db, result.db and task.db (those present) are read "
                   "unless the options above name others.")
@click.option("--no-tasks", is_flag=True, help="Do not import tasks (with --pyspider-data).")
@click.option("--to-projectdb", metavar="URL", default=None,
              help="spiderflow's projectdb to import into [the settings' projectdb: SPIDERFLOW_PROJECTDB or -c "
                   "CONFIG, else project.db in --data-dir].")
@click.option("--to-resultdb", metavar="URL", default=None, help="spiderflow's resultdb to import into [as above].")
@click.option("--to-taskdb", metavar="URL", default=None, help="spiderflow's taskdb to import into [as above].")
@click.option("--project", "projects", multiple=True, metavar="NAME", help="Import only this project (repeatable).")
@click.option("--status", type=click.Choice(STATUSES), default=None,
              help="Give every imported project this status (e.g. STOP, to look before it runs) [its pyspider status].")
@click.option("--no-check", is_flag=True, help="Do not load the scripts to report those that fail in spiderflow.")
@click.option("--dry-run", is_flag=True, help="Only say what would be imported; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@handles_errors
def import_pyspider_command(ctx: click.Context, projectdb: str | None, resultdb: str | None, taskdb: str | None,
                            pyspider_data: str | None, no_tasks: bool, to_projectdb: str | None,
                            to_resultdb: str | None, to_taskdb: str | None, projects: tuple[str, ...],
                            status: str | None, no_check: bool, dry_run: bool, as_json: bool) -> None:
    """Import a pyspider deployment: its projects, results and (with --taskdb) tasks.

    Reads pyspider's databases (SQLite, MySQL or PostgreSQL, as pyspider wrote them; only
    read, never changed) and stores into spiderflow's: each project's script, group, status,
    rate, burst and comments; every result under its task id; each task with its status, so
    ACTIVE tasks are crawled on and finished ones are not fetched again before their age is
    up. Running it again imports only what changed: nothing is duplicated, and tasks that
    spiderflow already has are left as they are. Scripts run unchanged: pyspider's imports
    work in them.

    \b
    spiderflow import-pyspider --pyspider-data /srv/pyspider/data --dry-run
    spiderflow import-pyspider --projectdb mysql+projectdb://root@db/projectdb \\
        --resultdb mysql+resultdb://root@db/resultdb --taskdb mysql+taskdb://root@db/taskdb
    """
    given = {"projectdb": projectdb, "resultdb": resultdb, "taskdb": taskdb}
    given = _with_data_dir(given, pyspider_data, no_tasks)
    if not any(given.values()):
        raise click.UsageError("name pyspider's databases: --projectdb, --resultdb, --taskdb or --pyspider-data DIR")
    settings = get_settings(ctx, projectdb=to_projectdb, resultdb=to_resultdb, taskdb=to_taskdb)
    with contextlib.ExitStack() as stack:
        sources = {}
        for role, url in given.items():
            if url:
                sources[role] = source = open_source(url, role)
                stack.callback(source.close)
        target = Target(**{role: _open_target(role, settings.db_url(role), dry_run, stack) for role in sources})
        progress = None if as_json else (lambda text: click.echo(f"reading {text}", err=True))
        report = import_pyspider(sources, target, settings, dry_run=dry_run, only=projects or None,
                                 status=ProjectStatus(status) if status else None, check_scripts=not no_check,
                                 progress=progress)
    if as_json:
        click.echo(json.dumps(_as_dict(report, sources, settings), indent=2, ensure_ascii=False))
    else:
        _print(report, sources, settings)


def _with_data_dir(given: dict[str, str | None], data_dir: str | None, no_tasks: bool) -> dict[str, str | None]:
    if no_tasks:
        given["taskdb"] = None
    if data_dir is None:
        return given
    if not os.path.isdir(data_dir):
        raise ConfigError(f"--pyspider-data {data_dir!r} is not a directory")
    found = {role: os.path.join(data_dir, name) for role, name in _DATA_FILES.items()
             if os.path.isfile(os.path.join(data_dir, name))}
    if not found:
        raise ConfigError(f"--pyspider-data {data_dir!r} holds none of pyspider's {', '.join(_DATA_FILES.values())}")
    for role, path in found.items():
        if given.get(role) is None and not (role == "taskdb" and no_tasks):
            given[role] = path
    return given


def _open_target(role: str, url: str, dry_run: bool, stack: contextlib.ExitStack) -> Any:
    """spiderflow's database of *role*; on a dry run None when it does not hold spiderflow's table yet."""
    if dry_run:
        from ..ops.common import missing_sqlite_file
        if missing_sqlite_file(url) is not None:
            return None
        engine = create_engine(url)
        try:
            if not sa.inspect(engine).has_table(_TARGET_TABLES[role]):
                return None
        finally:
            engine.dispose()
    db = _CONNECT[role](url)
    stack.callback(db.close)
    return db


def _as_dict(report: Report, sources: dict[str, Any], settings: Settings) -> dict[str, Any]:
    return {
        "dry_run": report.dry_run,
        "from": {role: str(source) for role, source in sources.items()},
        "into": {role: redact_url(settings.db_url(role)) for role in sources},
        "projects": [{"name": p.name, "status": p.status, "group": p.group, "rate": p.rate, "burst": p.burst,
                      "action": p.action, "script_error": p.script_error} for p in report.projects],
        "results": report.results, "tasks": report.tasks, "skipped": report.skipped,
        "totals": report.counts(),
    }


def _print(report: Report, sources: dict[str, Any], settings: Settings) -> None:
    echo = click.echo
    if report.dry_run:
        echo("dry run: nothing is written")
    for role, source in sources.items():
        echo(f"{role}: pyspider {source} -> spiderflow {redact_url(settings.db_url(role))}")
    verb = {"added": "would add", "updated": "would update", "unchanged": "unchanged"} if report.dry_run else {}
    if report.projects:
        echo(f"\n{'PROJECT':24} {'STATUS':9} {'GROUP':12} {'RATE':>7} {'BURST':>7}  ACTION")
        for p in report.projects:
            note = f"  (its script fails in spiderflow: {p.script_error})" if p.script_error else ""
            echo(f"{p.name:24} {p.status:9} {p.group or '-':12} {p.rate:>7g} {p.burst:>7g}  "
                 f"{verb.get(p.action, p.action)}{note}")
    if report.results:
        echo("\nresults " + ("found" if report.dry_run else "stored") + ":")
        for name, n in sorted(report.results.items()):
            echo(f"  {name:24} {n}")
    if report.tasks:
        echo("\ntasks:")
        for name, counts in sorted(report.tasks.items()):
            echo(f"  {name:24} " + (", ".join(f"{s} {n}" for s, n in sorted(counts.items())) or "none"))
    if report.skipped_count:
        echo(f"\nnot imported ({report.skipped_count}):")
        for why in report.skipped:
            echo(f"  {why}")
        if report.skipped_count > len(report.skipped):
            echo(f"  ... and {report.skipped_count - len(report.skipped)} more")
    c = report.counts()
    actions = ", ".join(f"{n} {verb.get(a, a)}" for a, n in c["project_actions"].items() if n and a != "skipped")
    parts = []
    if "projectdb" in sources:
        parts.append(f"projects {c['projects']}" + (f" ({actions})" if actions else ""))
    if "resultdb" in sources:
        parts.append(f"results {c['results']}")
    if "taskdb" in sources:
        parts.append(f"tasks {c['tasks']} ({c['tasks_new']} new, {c['tasks_existing']} already in spiderflow)")
    echo(("\nwould import: " if report.dry_run else "\nimported: ") + ", ".join(parts))


COMMANDS = [import_pyspider_command]
