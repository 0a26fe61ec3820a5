#!/usr/bin/env python
# -*- encoding: utf-8 -*-
# Created on 2018-05-14 13:44:21
# Project: quotes_login

from pyspider.libs.base_handler import *


class Handler(BaseHandler):
    crawl_config = {
        'headers': {
            'User-Agent': 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_13_4) AppleWebKit/537.36',
            'Referer': 'http://quotes.toscrape.com/',
        },
    }

    def on_start(self):
        self.crawl('http://quotes.toscrape.com/login', callback=self.login_page)

    def login_page(self, response):
        token = response.doc('input[name="csrf_token"]').attr.value
        self.crawl('http://quotes.toscrape.com/login#submit', method='POST', callback=self.after_login,
                   data={'csrf_token': token, 'username': 'admin', 'password': 'admin'},
                   cookies=response.cookies)

    def after_login(self, response):
        self.crawl('http://quotes.toscrape.com/page/1/', callback=self.quotes_page, cookies=response.cookies)

    def quotes_page(self, response):
        for each in response.doc('li.next a').items():
            self.crawl(each.attr.href, callback=self.quotes_page, cookies=response.cookies)
        return {
            "url": response.url,
            "logged_in": bool(response.doc('a[href$="/logout"]')),
            "quotes": [{
                "text": q('.text').text(),
                "author": q('.author').text(),
            } for q in response.doc('.quote').items()],
        }
