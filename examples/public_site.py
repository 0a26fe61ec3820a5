"""A project against a real public site (needs internet): quotes.toscrape.com, a site made
for practising crawling. Follows the pagination and stores every quote on every page.

    spiderflow one examples/public_site.py

It obeys robots.txt, identifies itself, and stays at one request per second. A callback
that yields several dicts stores each one (as <taskid>, <taskid>#1, ...).
"""
# rate: 1
# burst: 2

from spiderflow import *


class Handler(BaseHandler):
    crawl_config = {
        "user_agent": "spiderflow-example (+https://github.com/spiderflow/spiderflow)",
        "robots_txt": True,
        "timeout": 30,
    }

    def on_start(self):
        self.crawl("https://quotes.toscrape.com/", callback=self.index_page)

    @config(age=24 * 60 * 60)
    def index_page(self, response):
        next_page = response.doc("li.next a").attr.href
        if next_page:
            self.crawl(next_page, callback=self.index_page)
        for quote in response.doc(".quote").items():
            yield {
                "text": quote.find(".text").text(),
                "author": quote.find(".author").text(),
                "tags": [tag.text() for tag in quote.find(".tag").items()],
                "page": response.url,
            }
