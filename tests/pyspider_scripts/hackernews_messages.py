#!/usr/bin/env python
# -*- encoding: utf-8 -*-
# Created on 2015-10-18 14:20:05
# Project: hackernews

from pyspider.libs.base_handler import *


class Handler(BaseHandler):
    crawl_config = {
    }

    @every(minutes=30)
    def on_start(self):
        self.crawl('http://news.ycombinator.com/', callback=self.index_page)

    @config(age=30 * 60)
    def index_page(self, response):
        for i, each in enumerate(response.doc('tr.athing').items()):
            self.send_message(self.project_name, {
                "title": each('.storylink').text(),
                "link": each('.storylink').attr.href,
                "rank": int(each('.rank').text().rstrip('.')),
            }, url="%s#%s" % (response.url, i))

    def on_message(self, project, msg):
        return msg
