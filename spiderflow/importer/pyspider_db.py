"""Reading a pyspider deployment's projectdb, taskdb and resultdb, as pyspider wrote them.

pyspider named a database by a URL of its own, ``<engine>+<role>://...``, and laid its
tables out per engine, one table per project for tasks and for results:

* ``sqlite+projectdb:///data/project.db`` (its default, in ``./data``): tables
  ``projectdb``, ``taskdb_<project>``, ``resultdb_<project>``;
* ``mysql+projectdb://user:pass@host:3306/projectdb`` (databases ``projectdb``, ``taskdb``,
  ``resultdb`` by default): ``projectdb``, ``<project>``, ``<project>``;
* ``sqlalchemy+postgresql+projectdb://user@host/db`` (or ``+mysql+``, ``+sqlite+``):
  ``projectdb``, ``<project>``, ``<project>``.

:func:`open_source` takes such a URL, a plain SQLAlchemy URL (``sqlite:///data/task.db``,
``postgresql://...``, ``mysql://...``) or the path of a SQLite file, and opens the database
read only (a SQLite file is opened with ``mode=ro``: a missing one is an error, never
created). Tables are recognised by their columns, so the layout need not be named. The
JSON columns come back parsed; a MySQL ``BLOB`` is decoded as UTF-8 first.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..exceptions import ConfigError, redact_url
from ..storage import resolve_url

logger = logging.getLogger(__name__)

ROLES = ("projectdb", "taskdb", "resultdb")
PROJECT_COLUMNS = frozenset(("name", "group", "status", "script", "comments", "rate", "burst", "updatetime"))
TASK_COLUMNS = frozenset(("taskid", "project", "url", "status", "schedule", "fetch", "process", "track",
                          "lastcrawltime", "updatetime"))
RESULT_COLUMNS = frozenset(("taskid", "url", "result", "updatetime"))
#: the table-name prefix of pyspider's own SQLite backend, per role
PREFIXES = {"taskdb": "taskdb_", "resultdb": "resultdb_"}
#: pyspider engines that hold no SQL tables: say so instead of "unknown scheme"
UNSUPPORTED = {"mongodb", "redis", "elasticsearch", "es", "couchdb", "local"}
_DIALECTS = ("sqlite", "postgresql", "mysql")
_CHUNK = 1000


@dataclass
class Source:
    """One opened pyspider database: its role, the URL as given, and the engine reading it."""

    role: str
    url: str
    engine: sa.Engine

    def __str__(self) -> str:
        return redact_url(self.url)

    def close(self) -> None:
        self.engine.dispose()


def source_url(url: str, role: str) -> sa.URL:
    """The SQLAlchemy URL of pyspider database *url* of *role*; ConfigError if it cannot be read."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    if "://" not in url:
        if not os.path.isfile(url):
            raise ConfigError(f"pyspider {role} {url!r}: no such SQLite file (give a file or a database URL)")
        return _sqlite(os.path.abspath(url))
    scheme, rest = url.split("://", 1)
    parts = scheme.split("+")
    if parts[-1] in ROLES:                      # pyspider's own form
        given_role = parts[-1]
        if given_role != role:
            raise ConfigError(f"{redact_url(url)!r} is pyspider's {given_role} URL, not its {role}")
        engine, middle = parts[0], parts[1:-1]
        if engine in UNSUPPORTED:
            raise ConfigError(f"pyspider's {engine} backend ({redact_url(url)}) cannot be imported: only its "
                              "sqlite, mysql and sqlalchemy (PostgreSQL, MySQL, SQLite) databases can")
        if engine == "sqlalchemy":
            if not middle:
                raise ConfigError(f"{redact_url(url)!r}: a sqlalchemy+...+{role} URL names a dialect "
                                  f"(sqlalchemy+postgresql+{role}://...)")
            dialect = middle[0]
        elif engine in ("sqlite", "mysql") and not middle:
            dialect = engine
        else:
            raise ConfigError(f"unknown pyspider database URL {redact_url(url)!r}; pyspider's forms are "
                              f"sqlite+{role}:///path, mysql+{role}://user:pass@host:port/db and "
                              f"sqlalchemy+<dialect>+{role}://...")
        parsed = _parse(f"{dialect}://{rest}", url)
        if engine == "mysql" and not parsed.database:
            parsed = parsed.set(database=role)          # pyspider's default database name
    else:
        parsed = _parse(url, url)
        dialect = parsed.get_backend_name()
    if dialect not in _DIALECTS:
        raise ConfigError(f"pyspider {role} {redact_url(url)!r}: unsupported database {dialect!r}; "
                          "use SQLite, MySQL or PostgreSQL")
    if dialect == "sqlite":
        path = parsed.database or ""
        if path in ("", ":memory:"):
            raise ConfigError(f"pyspider {role} {redact_url(url)!r} is an in-memory database: nothing to import")
        if not os.path.isfile(path):
            raise ConfigError(f"pyspider {role} {redact_url(url)!r}: no such SQLite file {path!r}")
        return _sqlite(os.path.abspath(path))
    # the driver pyspider used (mysql.connector, psycopg2) becomes the one spiderflow installs
    return resolve_url(parsed.set(drivername=dialect).render_as_string(hide_password=False))


def _parse(text: str, original: str) -> sa.URL:
    try:
        return sa.make_url(text)
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise ConfigError(f"bad database URL {redact_url(original)!r}: {exc}") from None


def _sqlite(path: str) -> sa.URL:
    """Read only: reading must neither create the file nor change its journal."""
    return sa.URL.create("sqlite", database=f"file:{path}", query={"mode": "ro", "uri": "true"})


def open_source(url: str, role: str) -> Source:
    """Open pyspider database *url* of *role* read only; ConfigError unless it answers and has pyspider's tables."""
    engine = sa.create_engine(source_url(url, role), pool_pre_ping=True)
    source = Source(role, url, engine)
    try:
        if role == "projectdb":
            project_table(source)
        else:
            project_tables(source)
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise ConfigError(f"cannot read pyspider's {role} {redact_url(url)}: {reason}") from None
    except BaseException:
        engine.dispose()
        raise
    return source


# -- what is in it -----------------------------------------------------------------------------------

def _tables(source: Source) -> dict[str, set[str]]:
    inspector = sa.inspect(source.engine)
    return {name: {c["name"] for c in inspector.get_columns(name)} for name in inspector.get_table_names()}


def project_table(source: Source) -> sa.Table:
    """pyspider's ``projectdb`` table; ConfigError if *source* has none."""
    tables = _tables(source)
    columns = tables.get("projectdb")
    if columns is None:
        raise ConfigError(f"{source} has no table 'projectdb': is it pyspider's projectdb? "
                          f"(tables: {', '.join(sorted(tables)) or 'none'})")
    missing = PROJECT_COLUMNS - columns
    if missing:
        raise ConfigError(f"the 'projectdb' table of {source} lacks pyspider's column(s) {', '.join(sorted(missing))}")
    return sa.Table("projectdb", sa.MetaData(), *(sa.Column(c) for c in sorted(PROJECT_COLUMNS)))


def project_tables(source: Source) -> dict[str, str]:
    """``{project: table}`` of the per-project tables of a pyspider taskdb or resultdb.

    A table counts if it has the columns pyspider made (a task table: :data:`TASK_COLUMNS`,
    a result table: :data:`RESULT_COLUMNS` and no ``schedule``); its project is its name
    without pyspider's SQLite prefix (``taskdb_``, ``resultdb_``). ConfigError if none is found.
    """
    tables = _tables(source)
    wanted = TASK_COLUMNS if source.role == "taskdb" else RESULT_COLUMNS
    prefix = PREFIXES[source.role]
    found: dict[str, str] = {}
    for name, columns in sorted(tables.items()):
        if not wanted <= columns or (source.role == "resultdb" and "schedule" in columns):
            continue
        if name.startswith("spiderflow_"):
            continue
        project = name[len(prefix):] if name.startswith(prefix) and len(name) > len(prefix) else name
        found.setdefault(project, name)
    if not found:
        raise ConfigError(f"{source} has no pyspider {source.role} tables ({prefix}<project> or <project> "
                          f"with columns {', '.join(sorted(wanted))}); tables: {', '.join(sorted(tables)) or 'none'}")
    return found


def _table(name: str, columns: frozenset[str]) -> sa.Table:
    return sa.Table(name, sa.MetaData(), *(sa.Column(c) for c in sorted(columns)))


def count(source: Source, table: str) -> int:
    with source.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar_one()


def _rows(source: Source, table: sa.Table) -> Iterator[dict[str, Any]]:
    with source.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=_CHUNK).execute(sa.select(table))
        for row in result.mappings():
            yield {key: _text(value) for key, value in row.items()}


def _text(value: Any) -> Any:
    """MySQL BLOB columns come back as bytes: pyspider wrote UTF-8 JSON into them."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return value


def read_projects(source: Source) -> list[dict[str, Any]]:
    """Every row of pyspider's projectdb, by name."""
    return sorted(_rows(source, project_table(source)), key=lambda row: str(row["name"]))


def read_results(source: Source, table: str) -> Iterator[dict[str, Any]]:
    """The rows of one result table: taskid, url, result (parsed JSON), updatetime.

    A result that is not JSON comes with ``result`` None and ``error`` set.
    """
    for row in _rows(source, _table(table, RESULT_COLUMNS)):
        text = row["result"]
        try:
            row["result"] = json.loads(text) if text else {}
        except ValueError as exc:
            row["result"], row["error"] = None, f"result is not JSON: {exc}"
        yield row


def read_tasks(source: Source, table: str) -> Iterator[dict[str, Any]]:
    """The rows of one task table, its schedule/fetch/process/track parsed (``{}`` when empty).

    A row whose JSON does not parse comes with ``error`` set.
    """
    for row in _rows(source, _table(table, TASK_COLUMNS)):
        for part in ("schedule", "fetch", "process", "track"):
            text = row[part]
            try:
                row[part] = json.loads(text) if text else {}
            except ValueError as exc:
                row[part], row["error"] = {}, f"{part} is not JSON: {exc}"
        yield row


__all__ = [
    "PROJECT_COLUMNS",
    "RESULT_COLUMNS",
    "ROLES",
    "TASK_COLUMNS",
    "Source",
    "count",
    "open_source",
    "project_table",
    "project_tables",
    "read_projects",
    "read_results",
    "read_tasks",
    "source_url",
]
