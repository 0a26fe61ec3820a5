"""Periodic recrawl: re-visit the demo site's pages every 10 minutes, refetching a page only
when it is older than its age.

    spiderflow demo-site &
    spiderflow all --project examples/periodic.py

``@every`` makes the scheduler call on_start every 10 minutes (missed ticks are caught up
once after a pause). ``@config(age=...)`` says how long a fetched page stays fresh: a
request for a page younger than its age is dropped as a duplicate, an older one is fetched
again. ``itag`` forces a refetch when the value changes (bump it when the parsing changes).
"""
# rate: 20
# burst: 20

import os

from spiderflow import *

DEMO_SITE = os.environ.get("DEMO_SITE", "http://127.0.0.1:8000")


class Handler(BaseHandler):
    crawl_config = {"itag": "v1"}

    @every(minutes=10)
    def on_start(self):
        self.crawl(f"{DEMO_SITE}/links?total=50&show=3&n=0", callback=self.index_page)

    @config(age=30 * 60, priority=2)           # index pages: fresh for 30 minutes
    def index_page(self, response):
        for href in response.etree.xpath("//a/@href"):
            self.crawl(href, callback=self.detail_page)

    @config(age=24 * 60 * 60)                  # detail pages: fresh for a day
    def detail_page(self, response):
        return {"url": response.url, "title": response.etree.findtext(".//title"),
                "links": len(response.etree.xpath("//a"))}
