"""What projectdb, taskdb and resultdb share: column types, the schema version, error handling.

Every table lives in one :data:`METADATA`; each database class names its tables and its
schema version. On first use the tables are created if missing and the version is kept in
``spiderflow_meta`` (``schema_version:<role>``); a database written by a newer spiderflow
raises :class:`~spiderflow.exceptions.SchemaVersionError`. SQLAlchemy errors leave this
package as :class:`~spiderflow.exceptions.StorageError` with the URL's password redacted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.pool import StaticPool

from ..exceptions import SchemaVersionError, StorageError, StorageUnavailable
from .engine import WRITE_OPTION, WalCheckpointer, cached_engine, is_sqlite_file, label, release_engine

logger = logging.getLogger(__name__)

METADATA = sa.MetaData()
MYSQL_TABLE = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
_MY = ("mysql", "mariadb")

# Project names are ASCII; ids compare by code point everywhere (C / utf8mb4_bin collation).
NAME = (sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")
        .with_variant(mysql.VARCHAR(64, charset="ascii", collation="ascii_bin"), *_MY))
TASKID = (sa.String(255).with_variant(sa.String(255, collation="C"), "postgresql")
          .with_variant(mysql.VARCHAR(255, charset="utf8mb4", collation="utf8mb4_bin"), *_MY))
TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), *_MY)
LONGTEXT = sa.Text().with_variant(mysql.LONGTEXT(), *_MY)
MAX_TASKID = 255

META = sa.Table(
    "spiderflow_meta", METADATA,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
    **MYSQL_TABLE,
)

# (role, from_version) -> function(conn) that upgrades the role's tables by one version
MIGRATIONS: dict[tuple[str, int], Callable[[sa.Connection], None]] = {}

_checked: weakref.WeakKeyDictionary[sa.Engine, set[str]] = weakref.WeakKeyDictionary()


#: SQLite errors that pass: another process holds the lock, the file is briefly unreachable
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "unable to open database",
                     "disk i/o error", "database or disk is full")


def unavailable(exc: BaseException) -> bool:
    """Is *exc* the database being unreachable now (wait and retry) rather than a bad operation?

    Lost or refused connections, a server shutting down, pool timeouts, lock waits and
    deadlocks are; constraint violations, bad data and SQL errors are not.
    """
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa.exc.TimeoutError, sa.exc.DisconnectionError)):
        return True
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, sqlite3.Error):
        text = str(orig).lower()
        return isinstance(orig, sqlite3.OperationalError) and any(t in text for t in _SQLITE_TRANSIENT)
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return True
    return isinstance(orig, (ConnectionError, TimeoutError))


#: MySQL/MariaDB error codes of a transaction the server chose to end: retry it
_MYSQL_RETRY = (1213, 1205)      # deadlock found; lock wait timeout
#: PostgreSQL SQLSTATEs of the same: deadlock detected, serialization failure
_PG_RETRY = ("40P01", "40001")


def deadlocked(exc: BaseException) -> bool:
    """Did the server end *exc*'s transaction over a deadlock or a lock wait (running it again may work)?"""
    while exc is not None and not isinstance(exc, sa.exc.DBAPIError):
        exc = exc.__cause__
    if exc is None:
        return False
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in _PG_RETRY:
        return True
    args = getattr(orig, "args", ())
    return bool(args) and args[0] in _MYSQL_RETRY


class BaseDB:
    """A database role on an engine: schema check on construction, guarded connections."""

    role: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1
    tables: ClassVar[tuple[sa.Table, ...]] = ()

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self.url = label(engine.url)
        self.dialect = engine.dialect.name
        self._write_engine = engine.execution_options(**{WRITE_OPTION: True})
        self._pid = os.getpid()
        self._closed = False
        self._held: Any = None              # a pooled SQLite connection kept for the hot path
        self._held_lock = threading.Lock()
        self._inherited_held: Any = None    # a parent's, after a fork: kept, never used or closed
        self._checkpointer: WalCheckpointer | None = None   # relieves the held connection's commits
        self._ensure_schema()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    def close(self) -> None:
        """Release this database's share of the engine (the last user disposes it)."""
        if not self._closed:
            self._closed = True
            self._release_held()
            release_engine(self.engine)

    def _release_held(self) -> None:
        """Return the held SQLite connection to the pool."""
        with self._held_lock:
            held, self._held = self._held, None
            checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.close()
        if held is not None:
            held.close()

    # -- connections -----------------------------------------------------------
    def _after_fork(self) -> None:
        """Used in a forked child: leave the parent's connections alone, use our own engine."""
        self._pid = os.getpid()
        self._held_lock = threading.Lock()
        self._inherited_held, self._held = self._held, None
        self._checkpointer = None  # its thread stayed in the parent
        inherited = self.engine
        if isinstance(inherited.pool, StaticPool):
            return  # sqlite:// lives in this process's memory: the inherited copy is ours
        inherited.dispose(close=False)
        self.engine = cached_engine(inherited.url)
        self._write_engine = self.engine.execution_options(**{WRITE_OPTION: True})
        logger.debug("%s: new engine after fork (pid %d)", self.role, self._pid)

    @contextlib.contextmanager
    def _read(self, op: str) -> Iterator[sa.Connection]:
        if self._pid != os.getpid():
            self._after_fork()
        try:
            with self.engine.connect() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise self._error(op, exc) from exc

    @contextlib.contextmanager
    def _write(self, op: str) -> Iterator[sa.Connection]:
        """One transaction, committed on success (on SQLite it holds the write lock)."""
        if self._pid != os.getpid():
            self._after_fork()
        try:
            with self._write_engine.begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise self._error(op, exc) from exc

    @contextlib.contextmanager
    def _sqlite_transaction(self, op: str, write: bool) -> Iterator[Any]:
        """One SQLite transaction on a DBAPI cursor, committed on success.

        For hot batches: it skips SQLAlchemy's per-call work (Connection, execution context,
        the ``begin`` event, pool checkout) on a connection of the engine's pool that this
        database keeps checked out, one transaction at a time (a lock serializes threads).
        It begins as the ``begin`` event does, ``BEGIN IMMEDIATE`` when *write*. On any
        error the transaction is rolled back; after a driver error the connection goes back
        to the pool and the error leaves as StorageError, like those of :meth:`_write`.
        """
        if self._pid != os.getpid():
            self._after_fork()
        with self._held_lock:
            if self._held is None:
                self._hold(op)
            dbapi = self._held.dbapi_connection
            try:
                cursor = dbapi.cursor()
                cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield cursor
                dbapi.commit()
                if write and self._checkpointer is not None:
                    self._checkpointer.wrote()
            except BaseException as exc:
                if dbapi.in_transaction:
                    with contextlib.suppress(sqlite3.Error):   # the first error is the one to report
                        dbapi.rollback()
                if isinstance(exc, sqlite3.Error):
                    held, self._held = self._held, None
                    held.close()
                    raise self._error(op, exc) from exc
                raise

    def _hold(self, op: str) -> None:
        """Check out the connection :meth:`_sqlite_transaction` keeps (a SQLite file's with
        a :class:`WalCheckpointer` for its commits)."""
        try:
            held = self.engine.raw_connection()
        except sa.exc.SQLAlchemyError as exc:
            raise self._error(op, exc) from exc
        if is_sqlite_file(self.engine):
            try:    # kept when the connection goes back to the pool: they bound the WAL all the same
                WalCheckpointer.tune_writer(held.dbapi_connection)
            except sqlite3.Error as exc:
                held.close()
                raise self._error(op, exc) from exc
            if self._checkpointer is None:
                self._checkpointer = WalCheckpointer(self.engine)
        self._held = held

    def _error(self, op: str, exc: Exception) -> StorageError:
        orig = getattr(exc, "orig", None) or exc
        text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
        cls = StorageUnavailable if unavailable(exc) else StorageError
        return cls(f"{self.role} {op} failed on {self.url}: {type(orig).__name__}: {text}")

    # -- schema ----------------------------------------------------------------------
    def _ensure_schema(self) -> None:
        done = _checked.setdefault(self.engine, set())
        if self.role in done:
            return
        for attempt in range(3):
            try:
                with self._write_engine.begin() as conn:
                    self._create_or_check(conn)
                break
            except SchemaVersionError:
                raise
            except sa.exc.SQLAlchemyError as exc:
                # another process may be creating the same tables right now: look again
                if attempt == 2:
                    raise self._error("schema setup", exc) from exc
                logger.debug("%s schema setup raced (%s); retrying", self.role, exc)
        done.add(self.role)

    def _create_or_check(self, conn: sa.Connection) -> None:
        METADATA.create_all(conn, tables=[META, *self.tables], checkfirst=True)
        key = f"schema_version:{self.role}"
        stored = conn.execute(sa.select(META.c.value).where(META.c.key == key)).scalar()
        if stored is None:
            conn.execute(META.insert().values(key=key, value=str(self.schema_version)))
            logger.info("created %s schema version %d in %s", self.role, self.schema_version, self.url)
            return
        try:
            version = int(stored)
        except ValueError:
            raise SchemaVersionError(f"{self.role} in {self.url} has an unreadable schema version "
                                     f"{stored!r} in spiderflow_meta") from None
        if version > self.schema_version:
            raise SchemaVersionError(
                f"{self.role} in {self.url} has schema version {version}, newer than this "
                f"spiderflow understands ({self.schema_version}); upgrade spiderflow"
            )
        if version == self.schema_version:
            return
        while version < self.schema_version:
            migrate = MIGRATIONS.get((self.role, version))
            if migrate is None:
                raise SchemaVersionError(f"no migration of {self.role} from schema version {version}")
            migrate(conn)
            version += 1
            logger.info("migrated %s in %s to schema version %d", self.role, self.url, version)
        conn.execute(META.update().where(META.c.key == key).values(value=str(version)))


def chunked(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def check_fields(fields, known: tuple[str, ...], kind: str) -> None:
    """Raise ValueError naming any field of *fields* not in *known*."""
    unknown = [f for f in fields if f not in known]
    if unknown:
        raise ValueError(f"unknown {kind} field(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(known)}")
