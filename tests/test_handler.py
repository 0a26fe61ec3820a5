"""BaseHandler: decorators, self.crawl option merging and checking, special callbacks."""

from __future__ import annotations

import pytest

import spiderflow
from spiderflow import BaseHandler, catch_status_code_error, config, every, not_send_status
from spiderflow.message import Task, md5_taskid
from spiderflow.processor import CRAWL_OPTIONS, CrawlError, Response, load_project
from spiderflow.processor.crawl import FETCH_OPTIONS, SCHEDULE_OPTIONS


def bind(cls: type[BaseHandler], url: str | None = "http://example.com/dir/page.html") -> BaseHandler:
    handler = load_project("test", cls).handler
    response = Response(200, url) if url else None
    handler._reset(Task.create("test", url or "data:,on_start"), response, 1000.0)
    return handler


class Handler(BaseHandler):
    crawl_config = {"headers": {"User-Agent": "ua", "X-A": "a"}, "timeout": 10, "itag": "v1",
                    "cookies": {"c": "1"}}

    @every(minutes=2)
    def on_start(self):
        self.crawl("http://example.com/", callback=self.index_page)

    @every(seconds=30)
    def refresh(self):
        pass

    @config(age=3600, priority=2, headers={"X-A": "config", "X-B": "b"}, timeout=20)
    def index_page(self, response):
        pass

    def detail_page(self, response):
        pass


def test_public_api_is_pinned():
    assert spiderflow.__all__ == sorted(spiderflow.__all__)
    assert set(spiderflow.__all__) == {"BaseHandler", "Response", "SoftTimeLimitExceeded", "__version__", "catch_status_code_error",
                                       "config", "crawl", "every", "not_send_status"}
    namespace: dict = {}
    exec("from spiderflow import *", namespace)
    assert {"BaseHandler", "every", "config", "catch_status_code_error", "Response"} <= namespace.keys()


def test_every_collects_cron_jobs_and_min_tick():
    assert Handler._cron_jobs == (("on_start", 120), ("refresh", 30))
    assert Handler._min_tick == 30

    class Child(Handler):
        def refresh(self):  # overridden without @every: no longer a cron job
            pass

        @every
        def hourly(self):
            pass

    assert Child._cron_jobs == (("hourly", 60), ("on_start", 120))
    assert Child._min_tick == 60
    with pytest.raises(ValueError):
        every(seconds=0)
    with pytest.raises(ValueError):
        every(seconds=1.5)


def test_decorators_mark_functions():
    @catch_status_code_error
    def f(self, response):
        pass
    assert f._catch_status_code_error is True
    assert not_send_status(f) is f
    assert config({"age": 1}, priority=2)(f)._config == {"age": 1, "priority": 2}


def test_crawl_merges_call_over_config_over_crawl_config():
    h = bind(Handler)
    task = h.crawl("http://example.com/a", callback=h.index_page, headers={"X-C": "call"}, timeout=5)
    assert task.fetch.headers == {"User-Agent": "ua", "X-A": "config", "X-B": "b", "X-C": "call"}
    assert task.fetch.timeout == 5                      # call beats @config and crawl_config
    assert task.fetch.cookies == {"c": "1"}             # crawl_config only
    assert (task.schedule.age, task.schedule.priority, task.schedule.itag) == (3600, 2, "v1")
    assert task.process.callback == "index_page"
    assert (task.project, task.taskid, task.updatetime) == ("test", md5_taskid("http://example.com/a"), 1000.0)

    other = h.crawl("http://example.com/b", callback="detail_page")
    assert other.fetch.headers == {"User-Agent": "ua", "X-A": "a"}   # @config of index_page does not leak
    assert other.fetch.timeout == 10 and other.schedule.age == -1


def test_crawl_accepts_every_option():
    h = bind(BaseHandler.__class__("H", (BaseHandler,), {"cb": lambda self, r: None}))
    options = dict(
        method="put", params={"q": ["a", "b"]}, data={"k": "v"}, files={"f": ["a.txt", b"x"]},
        headers={"H": 1}, user_agent="u", cookies={"c": 2}, timeout=1, connect_timeout=2,
        allow_redirects=False, max_redirects=1, validate_cert=False, proxy="http://p:3128", etag="e",
        last_modified="lm", use_gzip=False, robots_txt=True, fetch_type="js", save={"s": [1, {"n": None}]},
        js_script="() => 1", js_run_at="document-start", js_viewport_width=800, js_viewport_height=600,
        load_images=True,
        priority=3, retries=5, exetime=1e9, age=60, itag=7, force_update=True, auto_recrawl=True, cancel=False,
        time_limit=2.5, taskid="custom",
    )
    assert set(options) | {"callback"} == CRAWL_OPTIONS
    task = h.crawl("http://example.com/x?a=1", callback="cb", **options)
    assert task.url == "http://example.com/x?a=1&q=a&q=b"
    fetch = task.fetch.to_dict()
    assert fetch["method"] == "PUT" and fetch["headers"] == {"H": "1"} and fetch["cookies"] == {"c": "2"}
    for key in FETCH_OPTIONS - {"method", "headers", "cookies"}:
        assert fetch[key] == options[key], key
    schedule = task.schedule.to_dict()
    for key in SCHEDULE_OPTIONS - {"itag"}:
        assert schedule[key] == options[key], key
    assert schedule["itag"] == "7"
    assert (task.taskid, task.process.time_limit) == ("custom", 2.5)
    assert Task.from_dict(task.to_dict()) == task          # every value survives the wire checks


def test_data_implies_post():
    h = bind(Handler)
    assert h.crawl("http://example.com/", callback="detail_page", data="raw").fetch.method == "POST"
    assert h.crawl("http://example.com/f", callback="detail_page", files={"f": b"x"}).fetch.method == "POST"
    assert h.crawl("http://example.com/g", callback="detail_page").fetch.method == "GET"


@pytest.mark.parametrize("href,expected", [
    ("b.html", "http://example.com/dir/b.html"),
    ("/root", "http://example.com/root"),
    ("../up?x=1", "http://example.com/up?x=1"),
    ("?page=2", "http://example.com/dir/page.html?page=2"),
    ("//cdn.example.org/x", "http://cdn.example.org/x"),
    ("  https://other.org/  ", "https://other.org/"),
    ("data:,hello", "data:,hello"),
])
def test_relative_urls_resolve_against_the_response(href, expected):
    h = bind(Handler)
    assert h.crawl(href, callback="detail_page").url == expected


@pytest.mark.parametrize("call,message", [
    (lambda h: h.crawl("http://example.com/", callback="detail_page", colour="red"), "unexpected keyword.*colour"),
    (lambda h: h.crawl("ftp://example.com/", callback="detail_page"), "unsupported URL scheme 'ftp'"),
    (lambda h: h.crawl("javascript:void(0)", callback="detail_page"), "unsupported URL scheme"),
    (lambda h: h.crawl("", callback="detail_page"), "empty URL"),
    (lambda h: h.crawl("http://example.com/", callback="missing"), "'missing' is not a method"),
    (lambda h: h.crawl("http://example.com/", callback=print), "must be a method"),
    (lambda h: h.crawl("http://example.com/"), "needs callback="),
    (lambda h: h.crawl("http://example.com/", callback="detail_page", timeout="slow"), "timeout must be"),
    (lambda h: h.crawl("http://example.com/", callback="detail_page", priority=1.5), "priority must be"),
    (lambda h: h.crawl("http://example.com/", callback="detail_page", save=object()), "cannot be sent"),
    (lambda h: h.crawl("http://example.com/", callback="detail_page", headers=["x"]), "headers must be a dict"),
    (lambda h: h.crawl(42, callback="detail_page"), "must be a string"),
])
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(CrawlError, match=message):
        call(bind(Handler))


def test_relative_url_without_a_page_is_an_error():
    h = bind(Handler, url=None)
    with pytest.raises(CrawlError, match="cannot resolve the relative URL"):
        h.crawl("/x", callback="detail_page")


def test_crawl_a_list_and_dedupe_within_a_callback():
    h = bind(Handler)
    tasks = h.crawl(["a", "b", "a"], callback="detail_page")
    assert [t.url for t in tasks] == ["http://example.com/dir/a", "http://example.com/dir/b", "http://example.com/dir/a"]
    assert [t.url for t in h._follows] == ["http://example.com/dir/a", "http://example.com/dir/b"]


def test_get_taskid_can_be_overridden():
    class H(BaseHandler):
        def get_taskid(self, task):
            return md5_taskid(task["url"] + repr(task["fetch"]["data"]))

        def cb(self, response):
            pass

    h = bind(H)
    one = h.crawl("http://example.com/", callback="cb", data={"page": 1})
    two = h.crawl("http://example.com/", callback="cb", data={"page": 2})
    assert one.taskid != two.taskid
    assert one.taskid == md5_taskid("http://example.com/" + repr({"page": 1}))
    assert h.crawl("http://example.com/", callback="cb", taskid="mine").taskid == "mine"


def test_send_message_builds_an_on_message_task():
    h = bind(Handler)
    h.send_message("other", {"hello": [1, 2]})
    h.send_message("other", "second", url="data:,msg-2")
    first, second = h._messages
    assert (first.project, first.taskid, first.url, first.process.callback) == (
        "other", "_on_message", "data:,_on_message", "_on_message")
    assert first.fetch.save == {"sender": "test", "message": {"hello": [1, 2]}}
    assert (second.taskid, second.url) == ("_on_message", "data:,msg-2")
    with pytest.raises(TypeError, match="JSON"):
        h.send_message("other", {1, 2})
    with pytest.raises(ValueError):
        h.send_message("bad name!", "x")


def test_get_info_reports_min_tick_retry_delay_crawl_config():
    class H(Handler):
        retry_delay = {0: 10, 1: 60, "": 600}

    h = bind(H)
    h._on_get_info(Response(200, "data:,_on_get_info"), {})
    assert h.save == {"min_tick": 30, "retry_delay": {0: 10.0, 1: 60.0, -1: 600.0},
                      "crawl_config": Handler.crawl_config}


def test_is_debugger():
    assert bind(Handler).is_debugger() is False
    project = load_project("dbg", Handler, env={"debugger": True})
    assert project.handler.is_debugger() is True


# -- the fast paths of self.crawl give what the general code gives ------------------------------------

def _resolve_url_reference(url, base, params=None):
    """resolve_url as it was before its absolute-URL fast path: the oracle for it."""
    import re
    from urllib.parse import urlencode, urljoin

    if not isinstance(url, str):
        raise CrawlError("must be a string")
    url = url.strip()
    if not url:
        raise CrawlError("empty URL")
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", url)
    if match is None:
        if not (base and base.startswith(("http://", "https://"))):
            raise CrawlError("cannot resolve the relative URL")
        try:
            url = urljoin(base, url)
        except ValueError as exc:
            raise CrawlError(f"cannot resolve: {exc}") from None
    elif match.group(1).lower() not in ("http", "https", "data"):
        raise CrawlError("unsupported URL scheme")
    if params:
        if not isinstance(params, dict):
            raise CrawlError("params must be a dict")
        base_url, _, fragment = url.partition("#")
        url = f"{base_url}{'&' if '?' in base_url else '?'}{urlencode(params, doseq=True)}"
        if fragment:
            url += "#" + fragment
    return url


TRICKY_URLS = [
    "http://example.com/a", "https://example.com/a?b=1#frag", " \thttp://example.com/ws \n", "http://example.com/#",
    "http://example.com/trailing  ", "https://example.com/q?x=1#f#g",
    "HTTP://EXAMPLE.COM/Upper", "Https://example.com/mixed", "http:/one-slash", "http:", "https://", "http://[::1",
    "http://[bad/x", "http://example.com/a b", "http://user:pw@example.com:8080/p;x?q#f", "data:,hello",
    "DATA:text/plain,x", "ftp://example.com/", "javascript:void(0)", "mailto:me@example.com", "b.html", "/root",
    "//cdn.example.org/x", "?page=2", "#top", "../up", "  ", "", "/a/./b/../c", "\\\\back\\slash", "http\\://x",
]


@pytest.mark.parametrize("base", ["http://example.com/dir/page.html", "https://example.com/", None, "data:,x"])
@pytest.mark.parametrize("params", [None, {}, {"q": "1", "z": ["a", "b"]}, "not-a-dict"])
def test_resolve_url_matches_the_general_path(base, params):
    from spiderflow.processor.crawl import resolve_url

    for url in TRICKY_URLS:
        try:
            expected = _resolve_url_reference(url, base, params)
        except CrawlError as exc:
            with pytest.raises(CrawlError) as raised:
                resolve_url(url, base, params)
            assert str(exc).split(":")[0] in str(raised.value), url
        else:
            assert resolve_url(url, base, params) == expected, url


@pytest.mark.parametrize("url", [u for u in TRICKY_URLS if u.strip()[:4].lower() in ("http", "data")])
def test_crawl_of_tricky_absolute_urls_builds_the_same_task_as_create(url):
    h = bind(Handler)
    task = h.crawl(url, callback="detail_page")
    try:
        stripped = _resolve_url_reference(url, "http://example.com/dir/page.html")
    except CrawlError:
        return
    assert task.url == stripped
    assert task.taskid == md5_taskid(stripped)


def test_check_options_accepts_known_and_rejects_unknown_names():
    from spiderflow.processor.crawl import check_options

    check_options({})
    check_options(dict.fromkeys(CRAWL_OPTIONS))
    with pytest.raises(CrawlError, match=r"unexpected keyword argument\(s\): colour, size; known options: age"):
        check_options({"callback": None, "size": 1, "colour": 2})
    check_options({"js_script": "", "js_run_at": "document-start", "js_viewport_width": 1, "js_viewport_height": 1,
                   "load_images": True})   # pyspider's JavaScript options (fetch_type='js')


def test_decorator_marks_are_found_on_every_kind_of_callback():
    import functools
    import types

    from spiderflow.processor.handler import _marker

    @config(age=5)
    def function(self, response):
        pass

    class Callable:
        _config = {"age": 6}

        def __call__(self, response):
            pass

    marked = functools.partial(function, None)
    marked._config = {"age": 7}
    h = bind(Handler)
    cases = [h.index_page, h.detail_page, types.MethodType(function, h), function, Callable(),
             types.MethodType(Callable(), h), marked, print, None]
    for func in cases:
        assert _marker(func, "_config") == getattr(func, "_config", None), func
        assert _marker(func, "_catch_status_code_error", False) is getattr(func, "_catch_status_code_error", False)
    assert _marker(h.index_page, "_config") == {"age": 3600, "priority": 2, "headers": {"X-A": "config", "X-B": "b"},
                                                "timeout": 20}
    assert _marker(types.MethodType(Callable(), h), "_config") == {"age": 6}
    assert _marker(h.detail_page, "__name__") == "detail_page"


def test_config_of_a_callback_applies_whether_named_or_bound():
    h = bind(Handler)
    by_name = h.crawl("http://example.com/n", callback="index_page")
    bound = h.crawl("http://example.com/b", callback=h.index_page)
    for task in (by_name, bound):
        assert (task.schedule.age, task.schedule.priority, task.fetch.timeout) == (3600, 2, 20)


def test_plain_crawl_builds_the_task_of_the_general_path():
    from spiderflow.message import Process, pack
    from spiderflow.processor.crawl import build_task

    url = "http://example.com/a?b=1"
    fast = build_task("p", url, {"callback": "detail_page"}, "detail_page", None, 5.0)
    general = build_task("p", url, {"callback": "detail_page", "priority": 0}, "detail_page", None, 5.0)
    assert fast == general == Task(taskid=md5_taskid(url), project="p", url=url,
                                   process=Process(callback="detail_page"), updatetime=5.0)
    assert pack(fast) == pack(general)
    other = build_task("p", url, {"callback": "detail_page"}, "detail_page", None, 5.0)
    fast.schedule.priority = 9
    fast.fetch.headers["X"] = "1"
    fast.process.callback = "index_page"
    fast.track.fetch["ok"] = True
    assert other == general
