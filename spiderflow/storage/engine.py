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
import threading

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import StaticPool

from ..exceptions import redact_url

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT = 30.0  # seconds a SQLite writer waits for another process's lock
SQLITE_CACHE_KB = 16384  # page cache per SQLite connection (the default 2 MB thrashes on big batches)
WRITE_OPTION = "spiderflow_write"  # execution option that makes SQLite BEGIN IMMEDIATE

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
        if not url.query.get("uri") and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
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
