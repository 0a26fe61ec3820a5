"""fetch_type='js': the fetcher's browser pool (Playwright driving the system's Chromium) against the local httpbin.

The pages under ``/js/`` of :mod:`spiderflow.testing` build their content with JavaScript.
Without Playwright or Chromium the rendering tests are skipped with the reason (they fail
under ``SPIDERFLOW_REQUIRE_SERVICES=1``); the test of the error a js task then gets runs
everywhere. Another Chromium can be named with ``SPIDERFLOW_TEST_CHROMIUM``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from spiderflow.fetcher import Fetcher
from spiderflow.fetcher.js import js_unavailable
from spiderflow.message import Fetch, Task
from spiderflow.processor.response import Response
from spiderflow.queues.memory import MemoryQueue
from spiderflow.settings import Settings
from unavailable import unavailable

CHROMIUM = os.environ.get("SPIDERFLOW_TEST_CHROMIUM", "/usr/bin/chromium")
SETTINGS = Settings(poolsize=10, timeout=15.0, connect_timeout=5.0, chromium_path=CHROMIUM)


@pytest.fixture(scope="module")
def browser_ready():
    reason = js_unavailable(CHROMIUM)
    if reason:
        unavailable(reason)


@pytest.fixture(scope="module")
def fetcher(browser_ready):
    """One fetcher (so one browser) for the module's rendering tests."""
    shared = Fetcher(None, None, SETTINGS)
    yield shared
    shared.close()


def js_task(url: str, **options) -> Task:
    return Task.create("test", url, fetch=Fetch(fetch_type="js", **options))


def render(fetcher: Fetcher, url: str, **options) -> Response:
    result = asyncio.run(fetcher.fetch(js_task(url, **options)))
    return Response.from_fetch_result(result)


def browser_pids() -> set[int]:
    """The browser processes below this process: those Playwright's driver started (not their helpers)."""
    import psutil

    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "chrom" in os.path.basename(child.exe()) and os.path.basename(child.parent().exe()) == "node":
                pids.add(child.pid)
        except (psutil.Error, AttributeError):   # gone meanwhile (parent() is then None)
            continue
    return pids


# -- rendering --------------------------------------------------------------------------

def test_content_only_javascript_builds(fetcher, httpbin):
    response = render(fetcher, httpbin.url + "/js/built")
    assert (response.status_code, response.error) == (200, None)
    assert response.url == httpbin.url + "/js/built"
    assert response.doc("#built").text() == "built by JavaScript é"
    assert response.doc("#fetched").text() == "after load: fetched"   # a fetch after the load event: the idle wait
    assert [a.attr.href for a in response.doc("a").items()] == [httpbin.url + "/js/linked?from=js"]
    assert response.headers["content-type"] == "text/html; charset=utf-8"


def test_the_dom_is_utf8_whatever_the_page_charset(fetcher, httpbin):
    response = render(fetcher, httpbin.url + "/js/latin1")
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.doc("#word").text() == "café"


def test_js_script_result_at_document_end(fetcher, httpbin):
    script = ("function () { return {title: document.title, built: !!document.getElementById('built'),"
              " when: new Date(0)}; }")
    response = render(fetcher, httpbin.url + "/js/built", js_script=script)
    assert response.error is None
    assert response.js_script_result == {"title": "js built", "built": True, "when": "1970-01-01T00:00:00+00:00"}


def test_js_script_at_document_start_runs_before_the_page(fetcher, httpbin):
    script = "() => { window.seenAtStart = document.getElementById('app') === null; return 'started'; }"
    response = render(fetcher, httpbin.url + "/js/built", js_script=script, js_run_at="document-start")
    assert (response.error, response.js_script_result) == (None, "started")
    late = render(fetcher, httpbin.url + "/js/built", js_script="() => document.getElementById('built') !== null")
    assert late.js_script_result is True


def test_a_failing_js_script_is_an_error_with_the_page(fetcher, httpbin):
    response = render(fetcher, httpbin.url + "/js/built", js_script="() => { throw new Error('boom'); }")
    assert response.status_code == 200 and "js_script failed" in response.error and "boom" in response.error
    assert response.doc("#built").text() == "built by JavaScript é"
    assert not response.isok()      # the callback is not called unless it catches status errors


def test_a_bad_js_run_at_fails_the_fetch(fetcher, httpbin):
    result = asyncio.run(fetcher.fetch(js_task(httpbin.url + "/js/built", js_run_at="later")))
    assert result.status_code == 599 and "js_run_at must be" in result.error


@pytest.mark.parametrize("size,expected", [(None, "1024x2304"), ((800, 600), "800x600")])
def test_viewport(fetcher, httpbin, size, expected):
    options = {} if size is None else {"js_viewport_width": size[0], "js_viewport_height": size[1]}
    assert render(fetcher, httpbin.url + "/js/viewport", **options).doc("#size").text() == expected


@pytest.mark.parametrize("load_images,expected", [(False, "blocked"), (True, "loaded")])
def test_load_images(fetcher, httpbin, load_images, expected):
    options = {} if load_images is False else {"load_images": True}   # off by default, as pyspider
    assert render(fetcher, httpbin.url + "/js/images", **options).doc("#img").text() == expected


def test_cookies_reach_the_server_and_come_back(fetcher, httpbin):
    response = render(fetcher, httpbin.url + "/js/cookies", cookies={"a": "1"}, headers={"Cookie": "b=2"})
    assert json.loads(response.doc("#server").text()) == {"a": "1", "b": "2"}
    assert response.cookies == {"a": "1", "b": "2", "made_by_js": "yes"}
    # a cookie set by the server on a redirect hop is kept, as by an HTTP fetch
    response = render(fetcher, httpbin.url + "/cookies/set?c=3")
    assert response.url == httpbin.url + "/cookies" and response.cookies == {"c": "3"}
    assert response.json == {"cookies": {"c": "3"}}    # not HTML: the body as received


def test_method_body_and_headers_reach_the_server(fetcher, httpbin):
    response = render(fetcher, httpbin.url + "/js/headers", method="POST", data={"k": "v"},
                      headers={"X-Token": "t", "User-Agent": "agent/1"}, etag="abc")
    seen = json.loads(response.doc("#request").text())
    assert (seen["method"], seen["body"]) == ("POST", "k=v")
    headers = seen["headers"]
    assert (headers["User-Agent"], headers["X-Token"], headers["If-None-Match"]) == ("agent/1", "t", "abc")
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    # the page's own request to its origin gets the task's headers, but not the conditional ones
    xhr = json.loads(response.doc("#xhr").text())
    assert (xhr["User-Agent"], xhr["X-Token"]) == ("agent/1", "t") and "If-None-Match" not in xhr


def test_redirects_status_and_errors(fetcher, httpbin):
    response = render(fetcher, httpbin.url + "/redirect/2")
    assert (response.status_code, response.url, response.orig_url) == (200, httpbin.url + "/get",
                                                                      httpbin.url + "/redirect/2")
    assert render(fetcher, httpbin.url + "/status/404").status_code == 404
    refused = asyncio.run(fetcher.fetch(js_task("http://127.0.0.1:9/")))
    assert refused.status_code == 599 and "ERR_" in refused.error


def test_robots_txt_is_checked_before_the_render(fetcher, httpbin):
    result = asyncio.run(fetcher.fetch(js_task(httpbin.url + "/private/x", robots_txt=True)))
    assert result.status_code == 403 and "robots.txt disallows" in result.error


def test_a_proxy_carries_the_page(fetcher, httpbin):
    from fetcher_proxy import VIA_HEADER, ProxyServer

    with ProxyServer() as proxy:
        response = render(fetcher, httpbin.url + "/js/headers", proxy=proxy.url)
        kinds = {record.kind for record in proxy.records}
    assert json.loads(response.doc("#request").text())["headers"][VIA_HEADER] == "fetcher_proxy"
    assert "http" in kinds


def test_a_hanging_page_times_out_and_the_pool_goes_on(fetcher, httpbin):
    start = time.monotonic()
    result = asyncio.run(fetcher.fetch(js_task(httpbin.url + "/js/hang", timeout=2)))
    assert result.status_code == 599 and result.error.startswith("timeout:")
    assert time.monotonic() - start < 6
    assert render(fetcher, httpbin.url + "/js/viewport").doc("#size").text() == "1024x2304"


# -- the pool beside plain fetches ---------------------------------------------------------

class TimedQueue(MemoryQueue):
    """An outqueue that records when each task's result arrived."""

    def __init__(self):
        super().__init__("fetcher2processor")
        self.times: dict[str, float] = {}

    def _put(self, item, timeout):
        self.times[item[0].taskid] = time.monotonic()
        super()._put(item, timeout)


def test_plain_fetches_flow_while_a_slow_page_renders(browser_ready, httpbin):
    inq, outq = MemoryQueue("scheduler2fetcher"), TimedQueue()
    slow = js_task(httpbin.url + "/js/slow?seconds=3")
    plain = [Task.create("test", f"{httpbin.url}/get?i={i}") for i in range(50)]
    fetcher = Fetcher(inq, outq, SETTINGS.replace(poolsize=4))
    inq.put(slow)

    async def feed() -> float:
        while fetcher._js is None or not fetcher._js.launches:   # the browser is up: the page is loading
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        for task in plain:
            inq.put(task)
        return time.monotonic()

    async def go() -> float:
        fed = asyncio.ensure_future(feed())
        await fetcher.run(burst=True)
        return await fed

    fed_at = asyncio.run(asyncio.wait_for(go(), 30))
    results = {task.taskid: result for task, result in (outq.get_nowait() for _ in range(51))}
    assert all(results[t.taskid].status_code == 200 for t in plain)
    assert Response.from_fetch_result(results[slow.taskid]).doc("#out").text() == "rendered after 3 s"
    last_plain = max(outq.times[t.taskid] for t in plain)
    assert last_plain < outq.times[slow.taskid], "the plain fetches waited for the page"
    assert last_plain - fed_at < 2.5


def test_a_killed_browser_is_restarted_and_the_render_retried(browser_ready, httpbin):
    fetcher = Fetcher(None, None, SETTINGS)
    before = browser_pids()

    async def go():
        render_task = asyncio.ensure_future(fetcher.fetch(js_task(httpbin.url + "/js/slow?seconds=2")))
        deadline = time.monotonic() + 15
        while (fetcher._js is None or not fetcher._js.launches) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        started = browser_pids() - before
        assert len(started) == 1, started
        await asyncio.sleep(0.3)    # the page is loading
        os.kill(started.pop(), signal.SIGKILL)
        return await render_task

    try:
        result = asyncio.run(go())
        assert (result.status_code, result.error) == (200, None)
        assert Response.from_fetch_result(result).doc("#out").text() == "rendered after 2 s"
        assert fetcher._js.launches == 2
    finally:
        fetcher.close()
    assert not browser_pids() - before, "close() left a browser running"


# -- settings ------------------------------------------------------------------------------

def test_block_private_addresses_applies_to_js_fetches(browser_ready, httpbin):
    fetcher = Fetcher(None, None, SETTINGS.replace(block_private_addresses=True))
    try:
        result = asyncio.run(fetcher.fetch(js_task(httpbin.url + "/js/built")))
    finally:
        fetcher.close()
    assert result.status_code == 599 and result.content == b""
    assert result.error == "blocked: 127.0.0.1 is a loopback address; block_private_addresses is on"


def test_max_body_size_caps_the_content(browser_ready, httpbin):
    fetcher = Fetcher(None, None, SETTINGS.replace(max_body_size=100))
    try:
        result = asyncio.run(fetcher.fetch(js_task(httpbin.url + "/js/built")))
    finally:
        fetcher.close()
    assert result.truncated and len(result.content) == 100 and result.content.startswith(b"<!DOCTYPE html>")
    assert result.error == "body larger than max_body_size (100 bytes): truncated"


def test_without_chromium_js_tasks_fail_clearly_and_plain_fetches_work(httpbin, tmp_path):
    missing = str(tmp_path / "no-chromium")
    fetcher = Fetcher(None, None, SETTINGS.replace(chromium_path=missing))

    async def go():
        return (await fetcher.fetch(js_task(httpbin.url + "/js/built")),
                await fetcher.fetch(Task.create("test", httpbin.url + "/html")))

    try:
        js, plain = asyncio.run(go())
    finally:
        fetcher.close()
    assert js.status_code == 501
    assert "apt-get install chromium" in js.error and "chromium_path" in js.error and missing in js.error
    assert plain.status_code == 200


def test_fetch_sync_renders_and_takes_its_browser_along(browser_ready, httpbin):
    """The web UI's debugger: one fetch on a loop of its own."""
    before = browser_pids()
    result = Fetcher(None, None, SETTINGS).fetch_sync(js_task(httpbin.url + "/js/viewport", js_viewport_width=640))
    assert Response.from_fetch_result(result).doc("#size").text() == "640x2304"
    assert not browser_pids() - before


def test_a_node_reports_js_only_when_it_can_render(browser_ready, tmp_path):
    code = "from spiderflow.nodes import fetch_types; print(' '.join(fetch_types()))"
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"}
    os.symlink(CHROMIUM, tmp_path / "chromium")
    found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "js" in found.stdout.split()
    env["PATH"] = str(tmp_path / "nothing")
    missing = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "js" not in missing.stdout.split() and "https" in missing.stdout.split()


# -- end to end ----------------------------------------------------------------------------------

SCRIPT = '''
from spiderflow import *


class Handler(BaseHandler):
    def on_start(self):
        self.crawl("{base}/js/built", callback=self.index_page, fetch_type="js",
                   js_script="function () {{ return document.querySelectorAll('a').length; }}")

    def index_page(self, response):
        for each in response.doc("a").items():
            self.crawl(each.attr.href, callback=self.detail_page)
        return {{"title": response.doc("#built").text(), "links": response.js_script_result,
                "fetched": response.doc("#fetched").text()}}

    @catch_status_code_error
    def detail_page(self, response):
        return {{"url": response.url, "status": response.status_code}}
'''


def test_a_pyspider_script_crawls_a_javascript_page(browser_ready, httpbin):
    from spiderflow.runtime.inprocess import crawl

    results = crawl(SCRIPT.format(base=httpbin.url), name="jsproject", settings=SETTINGS)
    by_url = {r["url"]: r["result"] for r in results}
    assert by_url[httpbin.url + "/js/built"] == {"title": "built by JavaScript é", "links": 1,
                                                 "fetched": "after load: fetched"}
    # the link only JavaScript made was found and crawled (a plain fetch: a 404 of the test server)
    assert by_url[httpbin.url + "/js/linked?from=js"] == {"url": httpbin.url + "/js/linked?from=js", "status": 404}
