#!/usr/bin/env python
# -*- encoding: utf-8 -*-
# Created on 2018-05-15 09:12:40
# Project: quotes_api

from pyspider.libs.base_handler import *


class Handler(BaseHandler):
    crawl_config = {
        'headers': {'X-Requested-With': 'XMLHttpRequest'},
    }

    @every(minutes=24 * 60)
    def on_start(self):
        self.crawl('http://quotes.toscrape.com/api/quotes', params={'page': 1}, callback=self.parse_api,
                   save={'page': 1})

    @config(age=60 * 60)
    def parse_api(self, response):
        data = response.json
        if data['has_next']:
            page = response.save['page'] + 1
            self.crawl('http://quotes.toscrape.com/api/quotes', params={'page': page},
                       callback=self.parse_api, save={'page': page})
        return {
            "page": data['page'],
            "authors": sorted(set(q['author']['name'] for q in data['quotes'])),
            "count": len(data['quotes']),
        }
