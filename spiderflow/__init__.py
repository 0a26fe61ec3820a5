"""spiderflow: a crawl pipeline of scheduler, fetchers, processors and result workers.

The public API lives here; everything else is private to the package. A project script
needs only ``from spiderflow import *`` (or ``from spiderflow import BaseHandler, every,
config``)::

    from spiderflow import *

    class Handler(BaseHandler):
        crawl_config = {"headers": {"User-Agent": "my-crawler"}}

        @every(minutes=24 * 60)
        def on_start(self):
            self.crawl("http://example.com/", callback=self.index_page)

        @config(age=10 * 24 * 60 * 60)
        def index_page(self, response):
            for each in response.doc('a[href^="http"]').items():
                self.crawl(each.attr.href, callback=self.detail_page)

        def detail_page(self, response):
            return {"url": response.url, "title": response.doc("title").text()}
"""

from __future__ import annotations

__version__ = "0.1.0"

from .processor.handler import (
    BaseHandler,
    catch_status_code_error,
    config,
    every,
    not_send_status,
)
from .processor.response import Response
from .processor.timelimit import SoftTimeLimitExceeded


def crawl(handler, **kwargs):
    """Run a crawl in this process and return its results (see :func:`spiderflow.runtime.inprocess.crawl`).

    *handler* is a BaseHandler subclass, a script's text or a script's path; keywords:
    ``urls``, ``callback``, ``rate``, ``burst``, ``name``, ``settings``.
    """
    from .runtime.inprocess import crawl as run_crawl
    return run_crawl(handler, **kwargs)


__all__ = [
    "BaseHandler",
    "Response",
    "SoftTimeLimitExceeded",
    "__version__",
    "catch_status_code_error",
    "config",
    "crawl",
    "every",
    "not_send_status",
]
