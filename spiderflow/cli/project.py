"""``spiderflow project add|list|show|set-status|run|send-message``: manage stored projects."""

from __future__ import annotations

import json

import click

from ..exceptions import ConfigError
from ..message import ProjectStatus, validate_project_name
from ..runtime.scripts import ADDED, UNCHANGED, check_script, read_script, store_project
from ..storage import connect_projectdb
from . import get_settings
from .options import RATE, handles_errors

STATUSES = [s.value for s in ProjectStatus]


def _projectdb(ctx: click.Context, projectdb: str | None):
    settings = get_settings(ctx, projectdb=projectdb)
    return settings, connect_projectdb(settings.db_url("projectdb"))


def _control(ctx: click.Context, host: str | None, port: int | None, token: str | None):
    """The scheduler's control interface; without --scheduler-token, the token in the data directory."""
    from ..runtime.compose import control_client
    return control_client(get_settings(ctx, scheduler_host=host, scheduler_port=port, scheduler_token=token))


projectdb_option = click.option("--projectdb", default=None, metavar="URL", help="projectdb URL [sqlite in the data directory].")


def control_options(func):
    func = click.option("--scheduler-token", default=None,
                        help="Token of the control interface [the one in the data directory].")(func)
    func = click.option("--scheduler-port", type=int, default=None, help="Scheduler control port [23333].")(func)
    func = click.option("--scheduler-host", default=None, help="Scheduler control address [127.0.0.1].")(func)
    return func


@click.group("project")
def project() -> None:
    """Add, list and change the projects stored in projectdb."""


@project.command("add")
@click.argument("script", type=click.Path(dir_okay=False))
@click.option("--name", default=None, help="Project name [the script's file name].")
@click.option("--status", type=click.Choice(STATUSES), default=None,
              help="Status [TODO for a new project; a stored one keeps its status].")
@click.option("--group", default=None, help="Group (\"delete\" with STOP drops the project after a day).")
@click.option("--rate", type=RATE, default=None,
              help="Tasks per second [the script's '# rate: N', else 1; a stored project keeps its rate "
                   "unless that line changed].")
@click.option("--burst", type=RATE, default=None, help="Burst [the script's '# burst: N', else 3; as --rate].")
@projectdb_option
@click.pass_context
@handles_errors
def add(ctx: click.Context, script: str, name: str | None, status: str | None, group: str | None,
        rate: float | None, burst: float | None, projectdb: str | None) -> None:
    """Store SCRIPT as a project, or update the stored project's script.

    Updating keeps the project's status, and the rate and burst it runs at (also when they
    were changed at runtime), unless --status, --rate or --burst are given or the script's
    '# rate:' / '# burst:' line changed.
    """
    name, text = read_script(script, name)
    check_script(name, text)
    settings, db = _projectdb(ctx, projectdb)
    try:
        done = store_project(db, name, text, ProjectStatus(status) if status else None, settings, rate, burst,
                             group=group)
        row = db.get(name, fields=["status", "rate", "burst"])
    finally:
        db.close()
    state = f"status {row['status'].value}, rate {row['rate']:g}, burst {row['burst']:g}"
    if done == UNCHANGED:
        click.echo(f"project {name} unchanged ({state})")
    else:
        click.echo(f"project {name} {'stored' if done == ADDED else 'updated'} with {state}")


@project.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@projectdb_option
@click.pass_context
@handles_errors
def list_projects(ctx: click.Context, as_json: bool, projectdb: str | None) -> None:
    """List the stored projects."""
    _settings, db = _projectdb(ctx, projectdb)
    try:
        rows = db.list(fields=["name", "group", "status", "rate", "burst", "updatetime"])
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps([{**r, "status": str(r["status"])} for r in rows], indent=2))
        return
    if not rows:
        click.echo("no projects yet: add one with `spiderflow project add SCRIPT.py`")
        return
    click.echo(f"{'NAME':24} {'GROUP':12} {'STATUS':9} {'RATE':>7} {'BURST':>7}")
    for r in rows:
        click.echo(f"{r['name']:24} {r['group'] or '-':12} {str(r['status']):9} {r['rate']:>7g} {r['burst']:>7g}")


@project.command("set-status")
@click.argument("name")
@click.argument("status", type=click.Choice(STATUSES, case_sensitive=False))
@projectdb_option
@click.pass_context
@handles_errors
def set_status(ctx: click.Context, name: str, status: str, projectdb: str | None) -> None:
    """Set project NAME's status (RUNNING or DEBUG to schedule it, STOP to pause it)."""
    validate_project_name(name)
    _settings, db = _projectdb(ctx, projectdb)
    try:
        if not db.update(name, status=ProjectStatus(status.upper())):
            raise ConfigError(f"no project named {name!r}; see `spiderflow project list`")
    finally:
        db.close()
    click.echo(f"project {name} is now {status.upper()}")


@project.command("run")
@click.argument("name")
@control_options
@click.pass_context
@handles_errors
def run(ctx: click.Context, name: str, scheduler_host, scheduler_port, scheduler_token) -> None:
    """Start project NAME now (its on_start), through the running scheduler."""
    validate_project_name(name)
    client = _control(ctx, scheduler_host, scheduler_port, scheduler_token)
    client.run(name)
    click.echo(f"project {name}: on_start scheduled")


@project.command("send-message")
@click.argument("name")
@click.argument("message")
@control_options
@click.pass_context
@handles_errors
def send_message(ctx: click.Context, name: str, message: str, scheduler_host, scheduler_port, scheduler_token) -> None:
    """Send MESSAGE (JSON, or plain text) to project NAME's on_message."""
    validate_project_name(name)
    try:
        payload = json.loads(message)
    except ValueError:
        payload = message
    _control(ctx, scheduler_host, scheduler_port, scheduler_token).send_message(name, payload)
    click.echo(f"message sent to {name}")


COMMANDS = [project]
