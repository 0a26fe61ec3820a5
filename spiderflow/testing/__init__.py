"""A local httpbin-like HTTP server for tests and the bench.

One tornado application (:func:`make_app`) serves echo routes (``/get``, ``/anything``,
``/post``, ``/put``), headers, status codes, delays, redirects, cookies, compression,
charsets, large and hostile bodies, conditional requests, robots.txt, basic auth and two
crawlable sites: a deterministic link farm (``/links``, pyspider's bench) and an endlessly
growing tree (``/follow``, scrapy's bench). :func:`link_farm_links`,
:func:`link_farm_reachable` and :func:`follow_links` compute what a crawl must find.
:func:`serve_in_thread` serves it on its own loop in a daemon thread, :func:`serve_in_process`
in its own OS process, and ``python -m spiderflow.testing --port 0`` from the command line.

``pages`` holds what is served, ``app`` the routes, ``server`` the ways to run it.
"""

from __future__ import annotations

from spiderflow.testing.app import make_app
from spiderflow.testing.pages import (
    ENCODING_SAMPLES,
    follow_links,
    follow_url,
    link_farm_links,
    link_farm_reachable,
    link_farm_url,
)
from spiderflow.testing.server import (
    ServerProcess,
    TestServer,
    main,
    serve_in_process,
    serve_in_thread,
)

__all__ = [
    "ENCODING_SAMPLES",
    "ServerProcess",
    "TestServer",
    "follow_links",
    "follow_url",
    "link_farm_links",
    "link_farm_reachable",
    "link_farm_url",
    "main",
    "make_app",
    "serve_in_process",
    "serve_in_thread",
]
