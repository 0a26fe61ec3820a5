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
import threading
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa

from ..exceptions import ConfigError, StorageError, UnknownSchemeError, redact_url
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
    "connect_resultdb", "Outage", "Poller", "connect_taskdb", "create_engine", "dispose_engines", "open_databases", "resolve_url",
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


class Poller:
    """A daemon thread that calls :meth:`read` now and then every *refresh* seconds, for what a
    component keeps of the shared database in memory (cancelled jobs, revokes): the asking
    loop never waits for the database. An outage keeps the last answer and is logged once
    (:class:`Outage`); any other error is logged and the next read tries again.
    """

    #: the thread's name, and who the log lines speak of
    name = "poller"

    def __init__(self, refresh: float):
        self.refresh = refresh
        self._outage = Outage(self.name.replace("-", " "))
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._read = threading.Event()

    def read(self) -> None:
        """Read from the database (raises StorageError)."""
        raise NotImplementedError

    def start(self, wait: float = 0.0) -> Any:
        """Start the thread (once); wait up to *wait* s for the first read."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._poll, name=self.name, daemon=True)
            self._thread.start()
        if wait:
            self._read.wait(wait)
        return self

    @property
    def started(self) -> bool:
        return self._thread is not None

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.read()
            except StorageError as exc:
                self._read.set()        # answered, if only by the outage: nobody waits on it
                self._stop.wait(self._outage.failed(exc))
                continue
            except Exception:   # the thread must live on: what is missed now is read next time
                logger.exception("%s: reading the database failed", self._outage.who)
            else:
                if self._outage.since is not None:
                    self._outage.recovered()
            self._read.set()
            self._stop.wait(self.refresh)
