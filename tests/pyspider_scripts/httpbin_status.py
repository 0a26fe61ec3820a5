#!/usr/bin/env python
# -*- encoding: utf-8 -*-
# Created on 2016-01-12 09:31:44
# Project: link_checker

from pyspider.libs.base_handler import *


class Handler(BaseHandler):
    crawl_config = {
        'retries': 1,
    }

    def on_start(self):
        self.crawl([
            'http://httpbin.org/status/200',
            'http://httpbin.org/status/404',
            'http://httpbin.org/status/500',
            'http://httpbin.org/redirect-to?url=/get',
        ], callback=self.check)

    @catch_status_code_error
    def check(self, response):
        return {
            "url": response.orig_url,
            "final_url": response.url,
            "status": response.status_code,
            "ok": response.ok,
        }
