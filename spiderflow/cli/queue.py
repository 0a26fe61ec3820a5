"""``spiderflow queue update|status|check|cap``: operate a cluster's crawl queue (see :mod:`spiderflow.ops`)."""

from __future__ import annotations

import json

import click

from ..message import ProjectStatus
from ..ops.capacity import describe, set_capacity
from ..ops.check import DEFAULT_MAX_URLS, DEFAULT_TIMEOUT, run_checks
from ..ops.push import (ADDED, CHANGED, DELETED, IN_SYNC, NEW, ONLY_STORED, UNCHANGED, UPDATED, check_delete,
                        check_scripts, compare, push, stored_projects)
from ..ops.status import format_remote, remote_status
from ..runtime.scripts import read_script_dir
from ..storage import connect_projectdb
from . import get_settings
from .options import db_options, handles_errors, queue_options
from .project import STATUSES, control_options, projectdb_option


@click.group("queue")
def queue() -> None:
    """Push project scripts to the cluster, see what is queued where, check its health, cap its work.

    Everything goes through the shared projectdb (and, for the live state, the scheduler and
    the queues), so these commands work from any machine with the cluster's config (-c).
    """


def _open_projectdb(settings):
    return connect_projectdb(settings.db_url("projectdb"))


@queue.command("update")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--delete", is_flag=True, help="Also remove the stored projects whose scripts are not in DIRECTORY "
                                             "(their tasks and results stay).")
@click.option("--status", type=click.Choice(STATUSES), default="TODO", show_default=True,
              help="Status of the projects this push adds; stored ones keep theirs.")
@projectdb_option
@click.pass_context
@handles_errors
def update(ctx: click.Context, directory: str, delete: bool, status: str, projectdb: str | None) -> None:
    """Push every project script in DIRECTORY (*.py) to the shared projectdb.

    New scripts become projects; a changed script replaces the stored one, and the project
    keeps its status and its rate and burst unless the script's '# rate:' / '# burst:'
    line changed; an unchanged one is left alone. Schedulers and processors use the new
    versions at their next project check, without a restart. If a script does not load,
    nothing is pushed.
    """
    settings = get_settings(ctx, projectdb=projectdb)
    scripts = read_script_dir(directory)
    check_delete(scripts, delete)
    check_scripts(scripts)      # before the database is opened: a refused push leaves no trace
    db = _open_projectdb(settings)
    try:
        changes = push(db, scripts, delete=delete, new_status=ProjectStatus(status), settings=settings,
                       checked=True)
    finally:
        db.close()
    for c in changes:
        click.echo(f"{c.action:9}  {c.name}  {_update_detail(c)}".rstrip())
    counts = {a: sum(1 for c in changes if c.action == a) for a in (ADDED, UPDATED, UNCHANGED, DELETED)}
    click.echo(f"{_scripts(len(scripts))} in {directory}: " + ", ".join(f"{n} {a}" for a, n in counts.items()))


def _scripts(n: int) -> str:
    return f"{n} script{'s' if n != 1 else ''}"


def _update_detail(c) -> str:
    state = f"{c.status}, rate {c.rate:g}, burst {c.burst:g}"
    if c.action == UPDATED:
        return f"({', '.join(c.changed)} changed; {state}" + (f"; kept {', '.join(c.kept)}" if c.kept else "") + ")"
    if c.action == DELETED:
        return "(removed from projectdb; its tasks and results are kept)"
    return f"({state})"


@queue.command("status")
@click.argument("directory", type=click.Path(file_okay=False), default=".", required=False)
@click.option("--remote", is_flag=True, help="The cluster's state: projects and their tasks, queues, capacity, nodes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@queue_options
@db_options
@control_options
@click.pass_context
@handles_errors
def status(ctx: click.Context, directory: str, remote: bool, as_json: bool, **options) -> None:
    """Compare DIRECTORY's scripts [.] with the stored projects: new, changed, in sync, only stored.

    With --remote: the cluster, as the scheduler, the databases and the queues report it.
    """
    settings = get_settings(ctx, **options)
    if remote:
        report = remote_status(settings)
        click.echo(json.dumps(report, indent=2, default=str) if as_json else format_remote(report))
        if any(e.startswith("projectdb:") for e in report["errors"]):
            ctx.exit(1)
        return
    changes = compare(stored_projects(settings), read_script_dir(directory))
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in changes], indent=2))
        return
    if not changes:
        click.echo(f"no scripts in {directory} and no stored projects")
        return
    rows = [("NAME", "STATE", "STATUS", "RATE", "BURST", "FILE")] + [
        (c.name, c.action, c.status or "-", "-" if c.rate is None else f"{c.rate:g}",
         "-" if c.burst is None else f"{c.burst:g}", c.file or "-") for c in changes]
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    counts = {state: sum(1 for c in changes if c.action == state) for state in (NEW, CHANGED, IN_SYNC, ONLY_STORED)}
    click.echo(", ".join(f"{n} {state}" for state, n in counts.items())
               + (f"; `spiderflow queue update {directory}` pushes them" if counts[NEW] or counts[CHANGED] else "")
               + ("; --delete removes those only stored" if counts[ONLY_STORED] else ""))


@queue.command("check")
@click.argument("directory", type=click.Path(file_okay=False), required=False)
@click.option("--timeout", type=click.FloatRange(min=0.1), default=DEFAULT_TIMEOUT, show_default=True,
              help="Seconds each fetch and each service may take.")
@click.option("--max-urls", type=click.IntRange(min=0), default=DEFAULT_MAX_URLS, show_default=True,
              help="Start URLs fetched per project.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@queue_options
@db_options
@control_options
@click.pass_context
@handles_errors
def check(ctx: click.Context, directory: str | None, timeout: float, max_urls: int, as_json: bool,
          **options) -> None:
    """Check DIRECTORY's scripts (else the stored projects'), their start URLs, the queues,
    the databases and the scheduler. Exit status 1 if any check fails.
    """
    settings = get_settings(ctx, **options)
    scripts = read_script_dir(directory) if directory is not None else None
    checks = run_checks(settings, scripts, timeout=timeout, max_urls=max_urls)
    failed = [c for c in checks if c.ok is False]
    if as_json:
        click.echo(json.dumps({"ok": not failed, "checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        for c in checks:
            mark = {True: "ok  ", False: "FAIL", None: "skip"}[c.ok]
            detail = c.detail.replace("\n", "\n      ")
            click.echo(f"{mark}  {c.name}: {detail}")
        if failed:
            click.echo(f"{len(failed)} of {len(checks)} checks failed: " + "; ".join(c.name for c in failed))
        else:
            click.echo(f"all {sum(1 for c in checks if c.ok)} checks passed")
    if failed:
        ctx.exit(1)


@queue.command("cap")
@click.argument("n", type=click.IntRange(min=0), required=False)
@projectdb_option
@click.pass_context
@handles_errors
def cap(ctx: click.Context, n: int | None, projectdb: str | None) -> None:
    """Set the cluster-wide maximum of tasks in flight to N (0: no limit).

    Without N, this machine's pool_cap setting is copied to the cluster. The value is kept
    in the shared projectdb, not in any node's config; the scheduler applies it within a second.
    """
    settings = get_settings(ctx, projectdb=projectdb)
    db = _open_projectdb(settings)
    try:
        before, after = set_capacity(db, n, settings)
    finally:
        db.close()
    was = describe(before.effective) + ("" if before.stored is not None else ", from the pool_cap setting")
    source = " (this machine's pool_cap setting)" if n is None else ""
    click.echo(f"cluster capacity: {describe(after.effective)}{source}; was {was}")


COMMANDS = [queue]
