"""projectdb, taskdb and resultdb on SQLAlchemy Core, chosen by database URL.

The URL is a plain SQLAlchemy URL; the role comes from the function called::

    connect_taskdb("sqlite:///data/task.db")            # the default, no server needed
    connect_taskdb("sqlite://")                         # in memory, for tests
    connect_taskdb("postgresql+psycopg://user:pass@host/db")   # or postgresql://
    connect_taskdb("mysql+pymysql://user:pass@host/db")        # or mysql://

Dialects come from :data:`DIALECTS` and their drivers are imported only when used. Each
process has one engine per URL; ``close()`` on the last database using it disposes it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa

from ..exceptions import ConfigError, UnknownSchemeError, redact_url
from .engine import cached_engine, dispose_engines, new_engine, release_engine
from .nodedb import NodeDB
from .projectdb import ProjectDB
from .resultdb import ResultDB
from .taskdb import TaskDB

logger = logging.getLogger(__name__)


class Dialect(NamedTuple):
    drivername: str      # the SQLAlchemy dialect+driver the URL is mapped to
    module: str          # the DB-API module it needs
    extra: str | None    # the spiderflow extra that installs it


DIALECTS: dict[str, Dialect] = {
    "sqlite": Dialect("sqlite", "sqlite3", None),
    "sqlite+pysqlite": Dialect("sqlite", "sqlite3", None),
    "postgresql": Dialect("postgresql+psycopg", "psycopg", "postgresql"),
    "postgresql+psycopg": Dialect("postgresql+psycopg", "psycopg", "postgresql"),
    "mysql": Dialect("mysql+pymysql", "pymysql", "mysql"),
    "mysql+pymysql": Dialect("mysql+pymysql", "pymysql", "mysql"),
}


def resolve_url(url: str) -> sa.URL:
    """Parse *url*, map its scheme through :data:`DIALECTS` and check the driver is installed."""
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError, TypeError):
        raise UnknownSchemeError(str(url), "database", list(DIALECTS)) from None
    dialect = DIALECTS.get(parsed.drivername)
    if dialect is None:
        raise UnknownSchemeError(url, "database", list(DIALECTS))
    try:
        importlib.import_module(dialect.module)
    except ImportError as exc:
        raise ConfigError(
            f"database URL {redact_url(url)!r} needs the {dialect.module} driver: "
            f'pip install "spiderflow[{dialect.extra}]"'
        ) from exc
    return parsed.set(drivername=dialect.drivername)


def create_engine(url: str) -> sa.Engine:
    """A new engine of its own (not shared through the per-process cache)."""
    return new_engine(resolve_url(url))


def _connect(cls, url: str):
    engine = cached_engine(resolve_url(url))
    try:
        return cls(engine)
    except BaseException:
        release_engine(engine)
        raise


def connect_projectdb(url: str) -> ProjectDB:
    return _connect(ProjectDB, url)


def connect_taskdb(url: str) -> TaskDB:
    return _connect(TaskDB, url)


def connect_resultdb(url: str) -> ResultDB:
    return _connect(ResultDB, url)


def connect_nodedb(url: str) -> NodeDB:
    """The node registry; it lives in the projectdb database (``settings.db_url("projectdb")``)."""
    return _connect(NodeDB, url)


__all__ = [
    "DIALECTS", "Databases", "Dialect", "NodeDB", "ProjectDB", "ResultDB", "TaskDB", "connect_nodedb", "connect_projectdb",
    "connect_resultdb", "Outage", "connect_taskdb", "create_engine", "dispose_engines", "open_databases", "resolve_url",
]


@dataclass
class Databases:
    """The three databases a component uses (any may be None where it is not needed)."""

    projectdb: Any
    taskdb: Any
    resultdb: Any

    def close(self) -> None:
        for db in (self.projectdb, self.taskdb, self.resultdb):
            if db is not None:
                with contextlib.suppress(Exception):
                    db.close()


def open_databases(settings: Any) -> Databases:
    """Open projectdb, taskdb and resultdb from the settings' URLs (sqlite in data_dir by default)."""
    return Databases(
        projectdb=connect_projectdb(settings.db_url("projectdb")),
        taskdb=connect_taskdb(settings.db_url("taskdb")),
        resultdb=connect_resultdb(settings.db_url("resultdb")),
    )


class Outage:
    """Waiting out a database outage: growing delays, one log line as it starts, one as it ends.

    ``delay = outage.failed(exc)`` after a :class:`~spiderflow.exceptions.StorageUnavailable`
    (the caller keeps what it was storing and sleeps *delay*); ``outage.recovered()`` after
    the next success.
    """

    def __init__(self, who: str, first: float = 0.25, most: float = 5.0, what: str = "the database"):
        self.who = who
        self.what = what
        self.first = first
        self.most = most
        self.since: float | None = None
        self.delay = 0.0
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            self.delay = self.first
            logger.error("%s: %s is unavailable (%s); holding everything in hand and "
                         "retrying until it is back", self.who, self.what, exc)
        else:
            self.delay = min(self.most, self.delay * 2)
            if self.failures % 20 == 0:
                logger.error("%s: %s is still unavailable after %.0f s (%s); still retrying",
                             self.who, self.what, time.monotonic() - self.since, exc)
        return self.delay

    def recovered(self) -> None:
        if self.since is not None:
            logger.warning("%s: %s is back after %.1f s; going on", self.who, self.what,
                           time.monotonic() - self.since)
            self.since = None
            self.failures = 0
            self.delay = 0.0
