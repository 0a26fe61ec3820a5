#!/usr/bin/env python
# -*- encoding: utf-8 -*-
# Created on 2017-03-08 22:15:09
# Project: books

from pyspider.libs.base_handler import *


class Handler(BaseHandler):
    crawl_config = {
    }

    @every(minutes=24 * 60)
    def on_start(self):
        self.crawl('http://books.toscrape.com/catalogue/page-1.html', callback=self.index_page)

    @every(minutes=30)
    def refresh(self):
        self.crawl('http://books.toscrape.com/catalogue/page-1.html', callback=self.index_page,
                   force_update=True)

    @config(age=24 * 60 * 60)
    def index_page(self, response):
        for each in response.doc('article.product_pod h3 a').items():
            self.crawl(each.attr.href, callback=self.detail_page)
        for each in response.doc('li.next a').items():
            self.crawl(each.attr.href, callback=self.index_page)

    @config(priority=2)
    def detail_page(self, response):
        return {
            "url": response.url,
            "title": response.doc('.product_main h1').text(),
            "price": response.doc('.product_main .price_color').text(),
        }

    def on_result(self, result):
        if not result or not result.get('price'):
            return
        result['price'] = float(result['price'].lstrip(u'\xa3'))
        super(Handler, self).on_result(result)
