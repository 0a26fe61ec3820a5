"""Shared fixtures: local services (PostgreSQL, MySQL, Redis, RabbitMQ) and the test HTTP server.

A test that needs a service asks for it with :func:`require_service`. When the service is
not reachable on this machine the test is skipped with the reason; with
``SPIDERFLOW_REQUIRE_SERVICES=1`` (as ``.ci/run`` sets) it fails instead.
Override a service's URL with ``SPIDERFLOW_TEST_<KIND>_URL``.

PostgreSQL and MySQL are shared servers: each test run gets a database of its own there,
``spiderflow_test_<pid>_<random>``, created (with the server database's encoding and
collation) the first time a test asks for the service and dropped at the end of the session
(the session fixture ``run_databases``; at exit, for scripts that import this module). Two
runs on one server never see each other's tables, and nothing outside that database is
dropped. The service URL names the server and the database to connect to for creating it.
The session fixture ``httpbin`` serves :mod:`spiderflow.testing` on 127.0.0.1 (``httpbin.url``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from spiderflow.testing import TestServer, serve_in_thread
from unavailable import unavailable

SERVICE_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/test",
    "redis": "redis://127.0.0.1:6379/15",
    "amqp": "amqp://guest:guest@127.0.0.1:5672/%2F",
}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "redis": 6379, "amqp": 5672}


def _reachable(url: str, kind: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS[kind]), timeout=1):
            return True
    except OSError:
        return False


def service_url(kind: str) -> str:
    """The configured URL of service *kind* (for a database: the server's, not this run's)."""
    return os.environ.get(f"SPIDERFLOW_TEST_{kind.upper()}_URL", SERVICE_URLS[kind])


def require_service(kind: str) -> str:
    """The URL of local service *kind* (for a database: this run's own); skip (or fail, when required) if it is down."""
    url = service_url(kind)
    if not _reachable(url, kind):
        unavailable(f"{kind} is not reachable at {urlsplit(url).hostname}:{urlsplit(url).port}; "
                     f"start it or set SPIDERFLOW_TEST_{kind.upper()}_URL")
    if kind in RUN_DATABASES.kinds:
        try:
            return RUN_DATABASES.url(kind, url)
        except Exception as exc:  # e.g. a user without CREATE DATABASE
            unavailable(f"cannot create this run's {kind} database {RUN_DATABASES.name}: {exc}")
    return url


class RunDatabases:
    """This test run's database on each SQL server: made on first use, dropped by :meth:`drop_all`."""

    kinds = ("postgresql", "mysql")

    def __init__(self) -> None:
        self.name = f"spiderflow_test_{os.getpid()}_{secrets.token_hex(4)}"
        self._made: dict[str, tuple[str, str]] = {}     # kind -> (server URL, this run's URL)
        self._lock = threading.Lock()

    def url(self, kind: str, server_url: str) -> str:
        """The URL of this run's database on the server of *server_url* (created if need be)."""
        with self._lock:
            if kind not in self._made:
                import sqlalchemy as sa

                from spiderflow.storage import resolve_url

                server = resolve_url(server_url)
                engine = sa.create_engine(server, isolation_level="AUTOCOMMIT")
                try:
                    with engine.connect() as conn:
                        self._create(kind, conn)
                finally:
                    engine.dispose()
                if not self._made:
                    atexit.register(self.drop_all)
                own = server.set(database=self.name).render_as_string(hide_password=False)
                self._made[kind] = (server_url, own)
            return self._made[kind][1]

    def _create(self, kind: str, conn) -> None:
        name = self.name
        if kind == "postgresql":    # as the server database was made, not as template1 happens to be
            encoding, collate, ctype = conn.exec_driver_sql(
                "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
                "WHERE datname = current_database()").one()
            conn.exec_driver_sql(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING '{encoding}' "
                                 f"LC_COLLATE '{collate}' LC_CTYPE '{ctype}'")
        else:
            charset, collation = conn.exec_driver_sql(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
                "WHERE SCHEMA_NAME = DATABASE()").one()
            conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET {charset} COLLATE {collation}")

    def drop_all(self) -> None:
        """Drop every database this run made (closing the connections still open to it)."""
        import sqlalchemy as sa

        from spiderflow.storage import dispose_engines, resolve_url

        with self._lock:
            made, self._made = self._made, {}
        if not made:
            return
        dispose_engines()
        name = self.name
        for kind, (server_url, _own) in made.items():
            engine = sa.create_engine(resolve_url(server_url), isolation_level="AUTOCOMMIT")
            try:
                with engine.connect() as conn:
                    if kind == "postgresql":
                        if conn.dialect.server_version_info < (13,):      # no WITH (FORCE) before 13
                            conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                                 "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
                            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS \"{name}\"")
                        else:
                            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")
                    else:
                        ids = conn.exec_driver_sql("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s "
                                                   "AND ID <> CONNECTION_ID()", (name,)).scalars().all()
                        for connection_id in ids:
                            with contextlib.suppress(sa.exc.DBAPIError):   # it may have gone meanwhile
                                conn.exec_driver_sql(f"KILL {int(connection_id)}")
                        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
            except Exception as exc:  # never fail the run for it; say what is left behind
                print(f"conftest: could not drop the test database {name} on {kind}: {exc}")
            finally:
                engine.dispose()


RUN_DATABASES = RunDatabases()


@pytest.fixture(scope="session", autouse=True)
def run_databases() -> Iterator[RunDatabases]:
    """This run's PostgreSQL and MySQL databases (see the module docstring), dropped when the session ends."""
    yield RUN_DATABASES
    RUN_DATABASES.drop_all()


@pytest.fixture(scope="session")
def httpbin() -> Iterator[TestServer]:
    """The spiderflow test HTTP server (``spiderflow.testing``) on 127.0.0.1; use ``httpbin.url``."""
    server = serve_in_thread()
    yield server
    server.stop()


@pytest.fixture
def redis_env():
    """(make_queue, url, client) for one test, on a key prefix that is deleted afterwards."""
    import uuid

    import redis

    from spiderflow.queues import connect_queue
    base = require_service("redis")
    prefix = f"sftest-{uuid.uuid4().hex[:10]}"
    url = f"{base}?prefix={prefix}"
    client = redis.Redis.from_url(base)
    made = []

    def make(name="q", maxsize=10, visibility_timeout=None):
        q = connect_queue(url, name, maxsize, visibility_timeout=visibility_timeout)
        made.append(q)
        return q

    yield make, url, client
    for q in made:
        q.close()
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def amqp_env():
    """(make_queue, url, channel) for one test; its queues are deleted afterwards."""
    import uuid

    import pika

    from spiderflow.queues import connect_queue
    url = require_service("amqp")
    tag = f"sftest-{uuid.uuid4().hex[:10]}"
    made = []

    def make(name="q", maxsize=10, url=url, **kwargs):
        q = connect_queue(url, f"{tag}-{name}", maxsize, **kwargs)
        made.append(q)
        return q

    conn = pika.BlockingConnection(pika.URLParameters(url))
    yield make, url, conn.channel()
    for q in made:
        q.close()
    ch = conn.channel()
    for name in {q.queue_name for q in made}:
        ch.queue_delete(name)
    conn.close()
