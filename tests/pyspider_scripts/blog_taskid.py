#!/usr/bin/env python
# -*- encoding: utf-8 -*-
# Created on 2015-09-01 16:27:52
# Project: scrapinghub_blog

from pyspider.libs.base_handler import *
from pyspider.libs.utils import md5string
import pyspider.libs.utils as utils


def clean_url(url):
    return url.split('?')[0]


class Handler(BaseHandler):
    crawl_config = {
    }

    @every(minutes=12 * 60)
    def on_start(self):
        self.crawl('http://blog.scrapinghub.com/', callback=self.index_page)

    @config(age=12 * 60 * 60)
    def index_page(self, response):
        for each in response.doc('a[href^="http"]').items():
            url = each.attr.href
            self.crawl(url, callback=self.detail_page, taskid=md5string(clean_url(url)))

    @config(priority=2)
    def detail_page(self, response):
        return {
            "url": clean_url(response.url),
            "id": md5string(clean_url(response.url)),
            "title": utils.text(response.doc('h1.entry-title').text()),
        }
