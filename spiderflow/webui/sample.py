"""The script a new project starts from: a pyspider-style crawl of one start URL."""

from __future__ import annotations

import time

SAMPLE_SCRIPT = '''"""Project {name}: created {date} in the spiderflow web UI."""

from spiderflow import *


class Handler(BaseHandler):
    crawl_config = {{}}

    @every(minutes=24 * 60)
    def on_start(self):
        self.crawl({url!r}, callback=self.index_page)

    @config(age=10 * 24 * 60 * 60)
    def index_page(self, response):
        for each in response.doc('a[href^="http"]').items():
            self.crawl(each.attr.href, callback=self.detail_page)

    @config(priority=2)
    def detail_page(self, response):
        return {{
            "url": response.url,
            "title": response.doc("title").text(),
        }}
'''

DEFAULT_START_URL = "http://example.com/"


def sample_script(name: str, start_url: str | None = None, now: float | None = None) -> str:
    """The sample script of project *name*, crawling *start_url* (written as a Python literal)."""
    date = time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() if now is None else now))
    return SAMPLE_SCRIPT.format(name=name, date=date, url=(start_url or DEFAULT_START_URL).strip())
