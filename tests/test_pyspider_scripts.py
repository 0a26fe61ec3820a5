"""pyspider scripts, unchanged, run in spiderflow against local copies of the pages they crawl.

Each script in ``tests/pyspider_scripts/`` is written as a pyspider user wrote it (its
``from pyspider.libs.base_handler import *`` and its real URLs). The crawl's fetcher goes
through the local proxy of ``_sites.py``, which serves those URLs from local pages, so
nothing leaves 127.0.0.1. The results are checked exactly. The pyspider imports resolve
only inside project scripts: ``import pyspider`` elsewhere behaves as without spiderflow.
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import importlib.util
import os
import re
import sys

import pytest

import spiderflow
from spiderflow.exceptions import ScriptError
from spiderflow.message import FetchResult, Process, Task, special_task
from spiderflow.processor import Processor, ProjectManager, load_project
from spiderflow.settings import Settings

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyspider_scripts")
SCRIPTS = sorted(p for p in glob.glob(os.path.join(HERE, "*.py")) if not os.path.basename(p).startswith("_"))


def _read(name: str) -> str:
    with open(os.path.join(HERE, name), encoding="utf-8") as fh:
        return fh.read()


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _load_sites():
    spec = importlib.util.spec_from_file_location("pyspider_sites", os.path.join(HERE, "_sites.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SITES = _load_sites()


@pytest.fixture(scope="module")
def proxy():
    server = SITES.SiteProxy()
    yield server
    server.stop()


def crawl(proxy, script: str) -> tuple[dict[str, dict], list[tuple[str, str]]]:
    """Run *script* (a file of this directory) to the end: ({result url: result}, the requests the sites got)."""
    proxy.requests.clear()
    results = spiderflow.crawl(os.path.join(HERE, script), settings=Settings(proxy=proxy.url), rate=1000, burst=1000)
    by_url = {r["url"]: r for r in results}
    assert len(by_url) == len(results), "two results for one URL"
    return by_url, list(proxy.requests)


# -- the scripts are pyspider's ---------------------------------------------------------------------------------------

def test_there_are_ten_or_more_pyspider_scripts():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_scripts_are_plain_pyspider_scripts(path):
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    assert "from pyspider.libs.base_handler import *" in text.splitlines()
    assert "spiderflow" not in text
    project = load_project(os.path.basename(path)[:-3], text)
    assert type(project.handler).__mro__[1] is spiderflow.BaseHandler


# -- each script's crawl ------------------------------------------------------------------------------------------------

def test_pyspider_tutorial_imdb(proxy):
    results, requests = crawl(proxy, "tutorial_imdb.py")
    expected = {f"http://www.imdb.com/title/{i}/": {"url": f"http://www.imdb.com/title/{i}/", "title": t,
                                                    "rating": r, "director": d}
                for i, (t, r, d) in SITES.IMDB_MOVIES.items()}
    assert {url: r["result"] for url, r in results.items()} == expected
    assert all(r["taskid"] == _md5(url) for url, r in results.items())
    # page 2's "next" goes back to page 1, which its age keeps from being fetched again
    assert [url for _, url in requests].count(SITES.IMDB_START) == 1 and len(requests) == 2 + len(SITES.IMDB_MOVIES)


def test_pyspider_sample_handler(proxy):
    results, _ = crawl(proxy, "sample_handler.py")
    assert {url: r["result"]["title"] for url, r in results.items()} == {
        # the home link is the index page's own task: not fetched again; "#top" is another task id, as in pyspider
        "http://scrapy.org/#top": "Scrapy | A Fast and Powerful Scraping Framework",
        "http://scrapy.org/download/": "Download Scrapy",
        "http://scrapy.org/doc/": "Scrapy Documentation",
        "http://scrapy.org/community/": "Scrapy Community",
    }
    assert results["http://scrapy.org/#top"]["result"]["url"] == "http://scrapy.org/"


def test_pyspider_tutorial_twitch_json(proxy):
    results, _ = crawl(proxy, "tutorial_twitch.py")
    assert [r["result"] for r in results.values()] == [[
        {"name": "dendi", "viewers": 10234, "status": "Ranked grind"},
        {"name": "Purge", "viewers": 877, "status": None},
    ]]


def test_douban_user_agent_save_and_pagination(proxy):
    results, requests = crawl(proxy, "douban_movie.py")
    tags = {i: tag for tag, pages in SITES.DOUBAN_TAGS.items() for ids in pages for i in ids}
    assert {url: r["result"] for url, r in results.items()} == {
        f"http://movie.douban.com/subject/{i}/": {
            "url": f"http://movie.douban.com/subject/{i}/", "title": title, "rating": float(rating),
            "director": directors, "tag": tags[i]}
        for i, (title, rating, directors) in SITES.DOUBAN_MOVIES.items()}
    # index, four tag pages (剧情 has two), five movies; the site answers 403 without crawl_config's User-Agent
    assert len(requests) == 1 + 4 + 5


def test_sina_gbk_xpath_and_response_encoding(proxy):
    results, _ = crawl(proxy, "sina_news.py")
    assert {url: (r["result"]["title"], r["result"]["content"], r["result"]["page_title"])
            for url, r in results.items()} == {
        f"http://news.sina.com.cn/c/{k}.shtml": (t, f"新浪新闻中心，{t}。", f"{t}|新浪新闻") for k, t in SITES.SINA_NEWS.items()}


def test_hackernews_one_result_per_message(proxy):
    results, requests = crawl(proxy, "hackernews_messages.py")
    base = "http://news.ycombinator.com/"
    assert {url: (r["taskid"], r["result"]) for url, r in results.items()} == {
        f"{base}#{i}": (_md5(f"{base}#{i}"), {"title": t, "link": h if h.startswith("http") else base + h,
                                              "rank": i + 1})
        for i, (t, h, _) in enumerate(SITES.HN_ITEMS)}
    assert requests == [("GET", base)]


def test_httpbin_catch_status_code_error(proxy):
    results, _ = crawl(proxy, "httpbin_status.py")
    assert {url: r["result"] for url, r in results.items()} == {
        "http://httpbin.org/status/200": {"url": "http://httpbin.org/status/200",
                                          "final_url": "http://httpbin.org/status/200", "status": 200, "ok": True},
        "http://httpbin.org/status/404": {"url": "http://httpbin.org/status/404",
                                          "final_url": "http://httpbin.org/status/404", "status": 404, "ok": False},
        "http://httpbin.org/status/500": {"url": "http://httpbin.org/status/500",
                                          "final_url": "http://httpbin.org/status/500", "status": 500, "ok": False},
        "http://httpbin.org/redirect-to?url=/get": {"url": "http://httpbin.org/redirect-to?url=/get",
                                                    "final_url": "http://httpbin.org/get", "status": 200, "ok": True},
    }


def test_httpbin_post_with_get_taskid(proxy):
    results = spiderflow.crawl(os.path.join(HERE, "httpbin_post_taskid.py"), settings=Settings(proxy=proxy.url))
    assert sorted(r["result"]["keyword"] for r in results) == ["crawler", "pyspider", "python"]
    for r in results:   # the script's get_taskid: md5(url + json of the POST data)
        assert r["taskid"] == r["result"]["taskid"] == _md5('http://httpbin.org/post{"q": "' + r["result"]["keyword"] + '"}')


def test_books_on_result_override(proxy):
    results, _ = crawl(proxy, "books_on_result.py")
    assert {r["result"]["title"]: r["result"]["price"] for r in results.values()} == {
        "A Light in the Attic": 51.77, "Tipping the Velvet": 53.74, "Sharp Objects": 47.82}   # no price: dropped


def test_books_every_runs_on_its_cron_tick():
    name = "books_on_result"
    projects = ProjectManager()
    project = projects.add(name, _read(name + ".py"))
    assert type(project.handler)._cron_jobs == (("on_start", 86400), ("refresh", 1800))
    assert type(project.handler)._min_tick == 1800
    processor = Processor(settings=Settings(), projects=projects)
    for tick, callbacks in ((1800, ["index_page"]), (86400, ["index_page"]), (1801, [])):
        task = special_task(name, "_on_cronjob", save={"tick": tick})
        outcome = processor.process(task, FetchResult(status_code=200, url=task.url, save={"tick": tick}))
        assert outcome.exception is None
        assert [t.process.callback for t in outcome.new_tasks] == callbacks
        if tick == 1800:    # refresh(): force_update
            assert outcome.new_tasks[0].schedule.force_update is True


def test_quotes_login_with_cookies_and_headers(proxy):
    results, requests = crawl(proxy, "quotes_login.py")
    assert {url: (r["result"]["logged_in"], [q["author"] for q in r["result"]["quotes"]])
            for url, r in results.items()} == {
        "http://quotes.toscrape.com/page/1/": (True, ["Albert Einstein", "J.K. Rowling", "Albert Einstein"]),
        "http://quotes.toscrape.com/page/2/": (True, ["Albert Einstein", "Steve Martin"]),
    }
    assert [m for m, _ in requests] == ["GET", "POST", "GET", "GET"]


def test_quotes_api_params_save_and_headers(proxy):
    results, _ = crawl(proxy, "quotes_api.py")
    api = "http://quotes.toscrape.com/api/quotes?page="
    assert {url: r["result"] for url, r in results.items()} == {
        api + "1": {"page": 1, "authors": ["Albert Einstein", "J.K. Rowling"], "count": 2},
        api + "2": {"page": 2, "authors": ["Albert Einstein"], "count": 2},
        api + "3": {"page": 3, "authors": ["Steve Martin"], "count": 1},
    }


def test_blog_taskid_and_pyspider_utils(proxy):
    results, requests = crawl(proxy, "blog_taskid.py")
    assert sorted((r["taskid"], r["result"]["url"], r["result"]["id"], r["result"]["title"]) for r in results.values()) \
        == sorted((_md5(f"http://blog.scrapinghub.com/{k}/"), f"http://blog.scrapinghub.com/{k}/",
                   _md5(f"http://blog.scrapinghub.com/{k}/"), t) for k, t in SITES.BLOG_POSTS.items())
    assert len(requests) == 1 + len(SITES.BLOG_POSTS)    # the "Read more" links are the same tasks


def test_age_and_itag_between_runs(proxy, tmp_path):
    """A second run fetches nothing before the age is up; a new itag in crawl_config fetches everything again."""
    settings = Settings(proxy=proxy.url, taskdb=f"sqlite:///{tmp_path}/task.db")
    script = _read("sina_news.py")
    counts = []
    for text in (script, script, script.replace("'itag': 'v2'", "'itag': 'v3'")):
        proxy.requests.clear()
        results = spiderflow.crawl(text, name="sina_news", settings=settings)
        counts.append((len(results), len(proxy.requests)))
    assert counts == [(2, 3), (0, 0), (2, 3)]


def test_the_web_ui_debugger_runs_pyspider_scripts(proxy):
    from spiderflow.webui.debug import run_debug

    script = _read("tutorial_imdb.py")
    task = Task.create("tutorial_imdb", SITES.IMDB_START, process=Process(callback="index_page"))
    report = run_debug("tutorial_imdb", script, task, Settings(proxy=proxy.url))
    assert report["ok"], report["exception"]
    assert [f["url"] for f in report["follows"]] == [
        "http://www.imdb.com/title/tt0111161/", "http://www.imdb.com/title/tt0068646/",
        "http://www.imdb.com/title/tt0133093/", "http://www.imdb.com/title/tt0071562/",
        "http://www.imdb.com/search/title?count=100&page=2"]


# -- the pyspider names, only in scripts ---------------------------------------------------------------------------------

STAR = """
from pyspider.libs.base_handler import *
NAMES = sorted(k for k in dir() if not k.startswith('_'))
class Handler(BaseHandler):
    pass
"""


def test_star_import_gives_pyspiders_names():
    module = load_project("star", STAR).module
    assert module.NAMES == sorted(["BaseHandler", "catch_status_code_error", "config", "every", "fractions",
                                   "functools", "inspect", "logger", "logging", "md5string", "not_send_status",
                                   "pprint", "quote_chinese", "sys"])
    assert (module.BaseHandler, module.every, module.config, module.catch_status_code_error,
            module.not_send_status) == (spiderflow.BaseHandler, spiderflow.every, spiderflow.config,
                                        spiderflow.catch_status_code_error, spiderflow.not_send_status)
    assert module.md5string("http://scrapy.org/") == _md5("http://scrapy.org/")


def test_the_other_pyspider_modules_and_imports_inside_callbacks():
    script = """
from pyspider.libs.base_handler import BaseHandler, every, config, catch_status_code_error, not_send_status
from pyspider.libs.response import Response
from pyspider.libs import utils
import pyspider.libs.url

class Handler(BaseHandler):
    def index_page(self, response):
        from pyspider.libs.utils import md5string, ObjectDict
        item = ObjectDict(title=response.doc('title').text())
        return {"ok": isinstance(response, Response), "id": md5string(response.url), "title": item.title,
                "text": utils.text(b"caf\\xc3\\xa9"), "url": pyspider.libs.url.quote_chinese("http://a/中")}
"""
    processor = Processor(settings=Settings(), projects=ProjectManager())
    processor.projects.add("mods", script)
    task = Task.create("mods", "data:,x", process=Process(callback="index_page"))
    outcome = processor.process(task, FetchResult(status_code=200, url="http://a/", content=b"<title>T</title>"))
    assert outcome.exception is None, outcome.exception
    assert outcome.results[0].result == {"ok": True, "id": _md5("http://a/"), "title": "T", "text": "café",
                                         "url": "http://a/%E4%B8%AD"}


@pytest.mark.parametrize("line, error", [
    ("from pyspider.libs.utils import run_in_thread", "cannot import name 'run_in_thread' from 'pyspider.libs.utils'"),
    ("import pyspider.webui.app", ("No module named 'pyspider.webui.app': spiderflow gives project scripts only "
                                   "pyspider.libs.base_handler")),
])
def test_what_is_not_provided_says_so(line, error):
    with pytest.raises(ScriptError, match=re.escape(error)):
        load_project("missing", line + "\n")


def test_import_pyspider_outside_scripts_is_untouched(tmp_path, monkeypatch):
    load_project("star", STAR)
    assert "pyspider" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("pyspider")
    with pytest.raises(ModuleNotFoundError):
        __import__("pyspider.libs.base_handler")

    # a real pyspider installed: ordinary code gets it, project scripts still get spiderflow's
    (tmp_path / "pyspider" / "libs").mkdir(parents=True)
    (tmp_path / "pyspider" / "__init__.py").write_text("REAL = True\n")
    (tmp_path / "pyspider" / "libs" / "__init__.py").write_text("")
    (tmp_path / "pyspider" / "libs" / "base_handler.py").write_text("class BaseHandler: REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        real = importlib.import_module("pyspider.libs.base_handler")
        assert real.BaseHandler.REAL is True
        module = load_project("star", STAR).module
        assert module.BaseHandler is spiderflow.BaseHandler
    finally:
        for name in [n for n in sys.modules if n == "pyspider" or n.startswith("pyspider.")]:
            del sys.modules[name]
