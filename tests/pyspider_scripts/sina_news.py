#!/usr/bin/env python
# -*- encoding: utf-8 -*-
# Created on 2015-06-02 21:40:11
# Project: sina_news

from pyspider.libs.base_handler import *


class Handler(BaseHandler):
    crawl_config = {
        'itag': 'v2',
    }

    @every(minutes=60)
    def on_start(self):
        self.crawl('http://news.sina.com.cn/china/', callback=self.index_page)

    @config(age=60 * 60)
    def index_page(self, response):
        for href in response.etree.xpath('//ul[@class="list"]/li/a/@href'):
            self.crawl(href, callback=self.detail_page)

    @config(priority=2)
    def detail_page(self, response):
        response.encoding = 'gbk'
        return {
            "url": response.url,
            "title": response.doc('#artibodyTitle').text(),
            "content": response.doc('#artibody p').text(),
            "page_title": response.etree.xpath('//title/text()')[0],
        }
