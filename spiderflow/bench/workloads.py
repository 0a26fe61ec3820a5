"""The two crawls the bench runs, as project scripts, and what each must find.

* ``pyspider``: the link farm (``/links``): ``total`` distinct pages, each linking to
  ``show`` random pages of the farm, crawled from page 0 until every reachable page is done;
  :func:`~spiderflow.testing.link_farm_reachable` gives the exact set.
* ``scrapy``: the growth tree (``/follow``): every page links to ``show`` new pages, crawled
  for a fixed time, as Scrapy's bench server grows.

:func:`render_page` makes the body the test server would send for a workload URL, so the
null fetcher can answer without network.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from ..testing.pages import (
    follow_links,
    follow_url,
    link_farm_links,
    link_farm_reachable,
    link_farm_url,
    links_page,
)

#: The bench's project name.
PROJECT = "bench"
#: The base URL of the null fetcher's pages: never resolved, never fetched.
NULL_BASE = "http://bench.invalid"
#: No rate limit worth the name: the bench measures the pipeline, not the token bucket.
RATE = BURST = 100_000.0
WORKLOADS = ("pyspider", "scrapy")

SCRIPT = '''\
"""spiderflow bench: follow every link of every page, one result per page."""
from spiderflow import BaseHandler


class Handler(BaseHandler):
    def on_start(self):
        self.crawl({start!r}, callback=self.index_page)

    def index_page(self, response):
        links = response.doc("a[href]")
        for link in links:
            self.crawl(link.get("href"), callback=self.index_page)
        return {{"url": response.url, "links": len(links)}}
'''


@dataclass(frozen=True)
class Workload:
    """One bench crawl: its start URL, its script and, when it ends by itself, what it must find."""

    name: str
    base: str
    total: int
    show: int
    seconds: float | None

    @property
    def start_url(self) -> str:
        if self.name == "pyspider":
            return self.base + link_farm_url(self.total, self.show, 0)
        return self.base + follow_url(self.show, 0)

    @property
    def script(self) -> str:
        return SCRIPT.format(start=self.start_url)

    @property
    def finite(self) -> bool:
        """Whether the crawl ends by itself (every reachable page done) rather than after a time."""
        return self.name == "pyspider"

    def expected_urls(self) -> set[str] | None:
        """Every URL the crawl must store a result for (pyspider), else None."""
        if not self.finite:
            return None
        return {self.base + link_farm_url(self.total, self.show, n)
                for n in link_farm_reachable(self.total, self.show)}


def make_workload(name: str, base: str, total: int = 10_000, show: int = 20, seconds: float | None = 10.0) -> Workload:
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    return Workload(name, base.rstrip("/"), total, show, None if name == "pyspider" else seconds)


def render_page(url: str) -> bytes | None:
    """The body the test server sends for a link-farm or growth URL (None for any other URL)."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    try:
        if parts.path == "/links":
            total, show, n = int(query.get("total", 100)), int(query.get("show", 10)), int(query.get("n", 0))
            if not 0 <= n < total:
                return None
            paths = [link_farm_url(total, show, j) for j in link_farm_links(total, show, n)]
            return links_page(f"link farm page {n} of {total}", paths)
        if parts.path == "/follow":
            total = int(query["total"]) if "total" in query else None
            show, n = int(query.get("show", 20)), int(query.get("n", 0))
            if total is not None and n >= total:
                return None
            paths = [follow_url(show, j, total) for j in follow_links(show, n, total)]
            return links_page(f"follow page {n}", paths)
    except ValueError:
        return None
    return None
