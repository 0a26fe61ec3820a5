"""Quickstart: crawl the local demo site's link farm and store each page's title.

    spiderflow demo-site &                 # serves http://127.0.0.1:8000
    spiderflow one examples/quickstart.py  # results as JSON lines on stdout

Set DEMO_SITE to crawl a demo site on another address.
"""
# rate: 100
# burst: 100

import os

from spiderflow import *

DEMO_SITE = os.environ.get("DEMO_SITE", "http://127.0.0.1:8000")


class Handler(BaseHandler):
    crawl_config = {"headers": {"User-Agent": "spiderflow-quickstart"}}

    def on_start(self):
        self.crawl(f"{DEMO_SITE}/links?total=200&show=5&n=0", callback=self.index_page)

    @config(age=24 * 60 * 60)
    def index_page(self, response):
        for href in response.etree.xpath("//a/@href"):
            self.crawl(href, callback=self.index_page)
        return {"url": response.url, "title": response.etree.findtext(".//title")}
