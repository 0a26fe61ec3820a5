"""The null fetcher: the real Fetcher loop, with the HTTP request replaced by a page made in memory.

It answers each link-farm or growth URL with the exact body the test server would send
(:func:`~.workloads.render_page`), so a bench run with ``--null-fetcher`` measures the
scheduler, queues, processor and result worker without network or server. Any other URL
goes through the ordinary fetch (``data:`` URLs for the special tasks).
"""

from __future__ import annotations

import time

from ..fetcher import Fetcher
from ..message import FetchResult, Task
from .workloads import render_page

CONTENT_TYPE = "text/html; charset=utf-8"


class NullFetcher(Fetcher):
    """A :class:`~spiderflow.fetcher.Fetcher` that makes the bench's pages instead of fetching them."""

    async def _fetch(self, task: Task, transport) -> FetchResult:
        url = task.url
        if not url.startswith("http"):
            return await super()._fetch(task, transport)
        start = time.perf_counter()
        body = render_page(url)
        if body is None:
            result = FetchResult(404, url, url, headers={"Content-Type": "text/plain"}, content=b"404 not found\n")
        else:
            result = FetchResult(200, url, url, headers={"Content-Type": CONTENT_TYPE,
                                                         "Content-Length": str(len(body))}, content=body)
        result.time = time.perf_counter() - start
        result.save = task.fetch.save
        self._counters.record(result.status_code, len(result.content))
        return result
