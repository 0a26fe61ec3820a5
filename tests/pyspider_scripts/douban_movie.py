#!/usr/bin/env python
# -*- encoding: utf-8 -*-
# Created on 2016-04-10 11:13:48
# Project: douban_movie

from pyspider.libs.base_handler import *


class Handler(BaseHandler):
    crawl_config = {
        'headers': {
            'User-Agent': 'Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/49.0.2623.110 Safari/537.36',
        },
        'timeout': 60,
    }
    retry_delay = {
        0: 30,
        1: 60 * 5,
        '': 60 * 60,
    }

    @every(minutes=24 * 60)
    def on_start(self):
        self.crawl('http://movie.douban.com/tag/', callback=self.index_page)

    @config(age=10 * 24 * 60 * 60)
    def index_page(self, response):
        for each in response.doc('.tagCol a').items():
            self.crawl(each.attr.href, callback=self.list_page, save={'tag': each.text()})

    @config(age=24 * 60 * 60)
    def list_page(self, response):
        for each in response.doc('.item .pl2 > a').items():
            self.crawl(each.attr.href, callback=self.detail_page, save=response.save)
        next_page = response.doc('.paginator .next a')
        if next_page:
            self.crawl(next_page.attr.href, callback=self.list_page, save=response.save)

    @config(priority=2)
    def detail_page(self, response):
        return {
            "url": response.url,
            "title": response.doc('span[property="v:itemreviewed"]').text(),
            "rating": float(response.doc('strong.rating_num').text()),
            "director": [x.text() for x in response.doc('a[rel="v:directedBy"]').items()],
            "tag": response.save['tag'],
        }
