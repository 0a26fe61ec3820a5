#!/usr/bin/env python
# -*- encoding: utf-8 -*-
# Created on 2016-02-20 17:02:36
# Project: search_post

import json

from pyspider.libs.base_handler import *


class Handler(BaseHandler):
    crawl_config = {
    }

    def get_taskid(self, task):
        return md5string(task['url']+json.dumps(task['fetch'].get('data', '')))

    def on_start(self):
        for keyword in ['python', 'crawler', 'pyspider']:
            self.crawl('http://httpbin.org/post', method='POST', data={'q': keyword},
                       callback=self.search_result)

    def search_result(self, response, task):
        return {
            "keyword": response.json['form']['q'],
            "taskid": task['taskid'],
        }
