"""Shared fixtures: local services (PostgreSQL, MySQL, Redis, RabbitMQ) and the test HTTP server.

A test that needs a service asks for it with :func:`require_service`. When the service is
not reachable on this machine the test is skipped with the reason; with
``SPIDERFLOW_REQUIRE_SERVICES=1`` (as ``.ci/run`` sets) it fails instead.
Override a service's URL with ``SPIDERFLOW_TEST_<KIND>_URL``.
The session fixture ``httpbin`` serves :mod:`spiderflow.testing` on 127.0.0.1 (``httpbin.url``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from spiderflow.testing import TestServer, serve_in_thread

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


def require_service(kind: str) -> str:
    """The URL of local service *kind*; skip (or fail, when required) if it is down."""
    url = os.environ.get(f"SPIDERFLOW_TEST_{kind.upper()}_URL", SERVICE_URLS[kind])
    if not _reachable(url, kind):
        reason = (f"{kind} is not reachable at {urlsplit(url).hostname}:{urlsplit(url).port}; "
                  f"start it or set SPIDERFLOW_TEST_{kind.upper()}_URL")
        if os.environ.get("SPIDERFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " (SPIDERFLOW_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(reason)
    return url


@pytest.fixture(scope="session")
def httpbin() -> Iterator[TestServer]:
    """The spiderflow test HTTP server (``spiderflow.testing``) on 127.0.0.1; use ``httpbin.url``."""
    server = serve_in_thread()
    yield server
    server.stop()
