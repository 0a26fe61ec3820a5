"""``spiderflow export PROJECT``: stream a project's results as JSON, JSON lines or CSV."""

from __future__ import annotations

import sys

import click

from ..message import validate_project_name
from ..result import EXPORT_FORMATS, export_results
from ..storage import connect_resultdb
from . import get_settings
from .options import handles_errors


@click.command("export")
@click.argument("project")
@click.option("-f", "--format", "fmt", type=click.Choice(list(EXPORT_FORMATS)), default="jsonl", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file [stdout].")
@click.option("--resultdb", default=None, metavar="URL", help="resultdb URL [sqlite in the data directory].")
@click.pass_context
@handles_errors
def export(ctx: click.Context, project: str, fmt: str, output: str | None, resultdb: str | None) -> None:
    """Write every result of PROJECT."""
    validate_project_name(project)
    settings = get_settings(ctx, resultdb=resultdb)
    db = connect_resultdb(settings.db_url("resultdb"))
    try:
        if output:
            newline = "" if fmt == "csv" else None
            with open(output, "w", encoding="utf-8", newline=newline) as fh:
                count = export_results(db, project, fmt, fh)
        else:
            count = export_results(db, project, fmt, sys.stdout)
            sys.stdout.flush()
    finally:
        db.close()
    click.echo(f"exported {count} results of {project}" + (f" to {output}" if output else ""), err=True)


COMMANDS = [export]
