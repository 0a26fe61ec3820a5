"""SQLAlchemy engines: one per database URL per process, with SQLite tuned for many processes.

:func:`cached_engine` hands out the process's engine for a URL (keyed by URL and
``os.getpid()``, so a forked child builds its own) and counts its users; the last
:func:`release_engine` disposes it. SQLite files get WAL journaling, ``synchronous=NORMAL``
and a busy timeout, and write transactions start with ``BEGIN IMMEDIATE`` so concurrent
writers in other processes wait for the lock instead of failing. ``sqlite://`` (memory) uses
one shared connection.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import StaticPool

from ..exceptions import ConfigError, redact_url
from ..files import create_private_file, make_private_dirs

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT = 30.0  # seconds a SQLite writer waits for another process's lock
SQLITE_CACHE_KB = 16384  # page cache per SQLite connection (the default 2 MB thrashes on big batches)
WRITE_OPTION = "spiderflow_write"  # execution option that makes SQLite BEGIN IMMEDIATE
# The hot writer's connection checkpoints its WAL itself only once it holds this many pages
# (64 MB of 4 KB pages); until then a WalCheckpointer thread copies the WAL into the database.
SQLITE_WAL_PAGES = 16384
SQLITE_WAL_KEEP_BYTES = 64 * 1024 * 1024  # a longer WAL is cut back to this when it restarts

_lock = threading.Lock()
_engines: dict[tuple[str, int], sa.Engine] = {}
_users: dict[int, int] = {}  # id(engine) -> number of open databases using it


def label(url: sa.URL) -> str:
    """The URL for logs and errors: never with its password."""
    return redact_url(url.render_as_string(hide_password=False))


def new_engine(url: sa.URL) -> sa.Engine:
    """A new, uncached engine for a resolved SQLAlchemy URL."""
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    options: dict = {"pool_pre_ping": True}
    if url.get_backend_name() in ("mysql", "mariadb"):
        options["pool_recycle"] = 3600  # below the server's wait_timeout
    engine = sa.create_engine(url, **options)
    logger.debug("created engine for %s", label(url))
    return engine


def _sqlite_engine(url: sa.URL) -> sa.Engine:
    path = url.database or ""
    memory = path in ("", ":memory:") or "mode=memory" in str(url.query)
    if memory:
        engine = sa.create_engine(url, poolclass=StaticPool,
                                  connect_args={"check_same_thread": False})
    else:
        if not url.query.get("uri"):
            try:
                if os.path.dirname(path):
                    make_private_dirs(os.path.dirname(path))
                create_private_file(path)   # sqlite's -wal and -shm files take the database's mode
            except OSError as exc:
                raise ConfigError(f"cannot create the directory of sqlite database {label(url)}: "
                                  f"{exc.strerror or exc}; give a path in a writable directory") from exc
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT,
                                                     "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT * 1000)}")
            if not memory:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KB}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    logger.debug("created sqlite engine for %s", label(url))
    return engine


def is_sqlite_file(engine: sa.Engine) -> bool:
    """Whether *engine* is SQLite on a file (WAL journaling), not ``sqlite://`` in memory."""
    return engine.dialect.name == "sqlite" and not isinstance(engine.pool, StaticPool)


class WalCheckpointer:
    """Copies a SQLite file's WAL into the database from a thread of its own.

    In WAL mode each commit appends the pages it changed to the WAL, and by default the
    committing connection, once the WAL holds 1,000 pages, copies them into the database
    and syncs both files inside its commit. A taskdb batch of new tasks dirties about as
    many pages as it has rows (their ids are random keys of the primary key), so the
    scheduler paid for a checkpoint nearly every pass and waited on its fsyncs. Here the
    writer's connection checkpoints itself only at :data:`SQLITE_WAL_PAGES` (which still
    bounds the WAL if this thread falls behind or dies) and :meth:`wrote` wakes this
    thread, which runs passive checkpoints (they never block a writer or wait for one) at
    most every *interval* seconds; the sqlite3 module lets go of the GIL while it copies
    and syncs. When the writer's own checkpoint comes, only the pages written since the
    last passive one are left to copy, and the WAL starts again from its beginning.

    The thread is inside SQLite only while it holds ``_busy``, and ``os.fork`` takes every
    ``_busy`` first: a forked child never inherits SQLite's locks held by a thread it lacks.
    """

    def __init__(self, engine: sa.Engine, interval: float = 0.05):
        self._engine = engine
        self._interval = interval
        self._wake = threading.Event()
        self._stopping = False
        self._busy = threading.Lock()
        with _checkpointers_lock:
            _checkpointers.add(self)
        self._thread = threading.Thread(target=self._run, name="sqlite-wal-checkpoint", daemon=True)
        self._thread.start()

    @staticmethod
    def tune_writer(dbapi_conn: sqlite3.Connection) -> None:
        """Settings for the connection whose commits this checkpointer relieves."""
        dbapi_conn.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_WAL_PAGES}")
        dbapi_conn.execute(f"PRAGMA journal_size_limit = {SQLITE_WAL_KEEP_BYTES}")

    def wrote(self) -> None:
        """A transaction was committed: there are WAL pages to copy."""
        self._wake.set()

    def _run(self) -> None:
        try:
            with self._busy:
                conn = self._engine.raw_connection()
                cursor = conn.dbapi_connection.cursor()
        except Exception as exc:  # the writer's own checkpoints still keep the WAL bounded
            logger.warning("no WAL checkpoint thread for %s: %s", label(self._engine.url), exc)
            return
        try:
            while True:
                self._wake.wait()
                if self._stopping:
                    return
                self._wake.clear()
                with self._busy:
                    try:
                        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    except sqlite3.Error as exc:
                        logger.debug("WAL checkpoint of %s: %s", label(self._engine.url), exc)
                if self._interval:
                    time.sleep(self._interval)
        finally:
            with self._busy:
                conn.close()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (after the checkpoint it is running, if any) and release its connection."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        with _checkpointers_lock:
            _checkpointers.discard(self)


_checkpointers: weakref.WeakSet[WalCheckpointer] = weakref.WeakSet()
_checkpointers_lock = threading.Lock()
_paused: list[WalCheckpointer] = []


def _pause_checkpointers() -> None:
    _checkpointers_lock.acquire()
    _paused[:] = list(_checkpointers)
    for checkpointer in _paused:
        checkpointer._busy.acquire()


def _resume_checkpointers() -> None:
    for checkpointer in _paused:
        checkpointer._busy.release()
    _paused.clear()
    _checkpointers_lock.release()


def _forget_checkpointers() -> None:
    """In a forked child: the threads stayed in the parent (BaseDB drops its references)."""
    global _checkpointers_lock
    _paused.clear()
    _checkpointers.clear()
    _checkpointers_lock = threading.Lock()


os.register_at_fork(before=_pause_checkpointers, after_in_parent=_resume_checkpointers,
                    after_in_child=_forget_checkpointers)


def cached_engine(url: sa.URL) -> sa.Engine:
    """This process's engine for *url*; pair each call with :func:`release_engine`."""
    key = (url.render_as_string(hide_password=False), os.getpid())
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = new_engine(url)
        _users[id(engine)] = _users.get(id(engine), 0) + 1
        return engine


def release_engine(engine: sa.Engine) -> None:
    """One user of a cached engine is done; the last one disposes it."""
    with _lock:
        count = _users.get(id(engine))
        if count is None:
            return  # not a cached engine (or already disposed)
        if count > 1:
            _users[id(engine)] = count - 1
            return
        del _users[id(engine)]
        owner = None
        for key, cached in list(_engines.items()):
            if cached is engine:
                del _engines[key]
                owner = key[1]
    # a parent process's connections are dropped, never closed from here
    engine.dispose(close=owner == os.getpid())


def dispose_engines() -> None:
    """Dispose every cached engine (for tests); engines of a parent process are only dropped."""
    with _lock:
        engines = list(_engines.items())
        _engines.clear()
        _users.clear()
    pid = os.getpid()
    for (_, owner), engine in engines:
        engine.dispose(close=owner == pid)
