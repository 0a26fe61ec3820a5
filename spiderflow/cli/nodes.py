"""``spiderflow nodes``: the component processes registered in the node registry (in projectdb)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import click

from ..storage import connect_nodedb, resolve_url
from . import get_settings
from .options import handles_errors

COLUMNS = ("NAME", "KIND", "HOST", "PID", "STATUS", "LAST-SEEN", "IN-FLIGHT", "DONE", "ERRORS", "CPU", "RSS")
RIGHT = {"PID", "IN-FLIGHT", "DONE", "ERRORS", "CPU", "RSS"}


@click.command("nodes")
@click.option("--all", "include_offline", is_flag=True, help="Include offline and stopped nodes (kept for a day).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of nodes, as GET /api/nodes gives).")
@click.option("--projectdb", default=None, metavar="URL",
              help="projectdb URL, where the nodes register [sqlite in the data directory].")
@click.pass_context
@handles_errors
def nodes(ctx: click.Context, include_offline: bool, as_json: bool, projectdb: str | None) -> None:
    """List the nodes (scheduler, fetchers, processors, result workers, ...) and their last heartbeat.

    A node is online while its heartbeats arrive, offline once the last one is older than
    node_timeout (60 s), stopped after a warm shutdown.
    """
    settings = get_settings(ctx, projectdb=projectdb)
    url = settings.db_url("projectdb")
    rows: list[dict[str, Any]] = []
    if not _missing_sqlite_file(url):  # listing never creates a database
        db = connect_nodedb(url)
        try:
            rows = db.list(include_offline, timeout=settings.node_timeout)
        finally:
            db.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no node online; `spiderflow nodes --all` lists offline and stopped ones too"
                   if not include_offline else "no node has registered")
        return
    click.echo(format_table(rows))


def format_table(rows: list[dict[str, Any]], now: float | None = None) -> str:
    now = time.time() if now is None else now
    cells = [COLUMNS] + [(
        r["name"], r["kind"], r["host"], str(r["pid"]), r["status"], _ago(now - r["last_seen"]),
        _num(r["in_flight"]), _num(r["done"]), _num(r["errors"]),
        "-" if r["cpu"] is None else f"{r['cpu']:.1f}s",
        "-" if r["rss_mb"] is None else f"{r['rss_mb']:.0f}MB",
    ) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.rjust(w) if col in RIGHT else cell.ljust(w)
                  for col, cell, w in zip(COLUMNS, row, widths)).rstrip()
        for row in cells)


def _num(value: Any) -> str:
    return "-" if value is None else str(value)


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _missing_sqlite_file(url: str) -> bool:
    parsed = resolve_url(url)
    path = parsed.database or ""
    return (parsed.get_backend_name() == "sqlite" and path not in ("", ":memory:")
            and not parsed.query.get("uri") and not os.path.exists(path))


COMMANDS = [nodes]
