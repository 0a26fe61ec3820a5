"""Local copies of the pages the pyspider scripts of this directory crawl, and the HTTP proxy serving them.

The scripts keep their real URLs (``http://www.imdb.com/...``); the crawl's fetcher goes
through :class:`SiteProxy` (``Settings(proxy=...)``), which answers every request from
:data:`PAGES` by its absolute URL and nothing else: no request leaves 127.0.0.1. A URL
that is not here gets a 404, and every request is recorded in :attr:`SiteProxy.requests`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

Answer = tuple[int, dict[str, str], bytes]
PAGES: dict[str, Any] = {}      # URL without fragment -> HTML text, (bytes, content type) or a callable(request)


def page(url: str) -> Callable:
    def register(func: Callable) -> Callable:
        PAGES[url] = func
        return func
    return register


def html(body: str, title: str = "", head: str = "") -> str:
    return f"<!DOCTYPE html><html><head><title>{title}</title>{head}</head><body>{body}</body></html>"


# -- IMDb (pyspider's tutorial, level 1) ---------------------------------------------------------------

IMDB_START = "http://www.imdb.com/search/title?count=100&title_type=feature,tv_series,tv_movie&ref_=nv_ch_mm_1"
IMDB_MOVIES = {
    "tt0111161": ("The Shawshank Redemption", "9.3", ["Frank Darabont"]),
    "tt0068646": ("The Godfather", "9.2", ["Francis Ford Coppola"]),
    "tt0133093": ("The Matrix", "8.7", ["Lana Wachowski", "Lilly Wachowski"]),
    "tt0071562": ("The Godfather: Part II", "9.0", ["Francis Ford Coppola"]),
    "tt0050083": ("12 Angry Men", "8.9", ["Sidney Lumet"]),
    "tt0108052": ("Schindler's List", "8.9", ["Steven Spielberg"]),
}


def _imdb_list(ids: list[str], relative: list[str], next_href: str) -> str:
    rows = "".join(f'<tr><td class="title"><a href="http://www.imdb.com/title/{i}/">{IMDB_MOVIES[i][0]}</a>'
                   f' <a href="http://www.imdb.com/title/{i}/reviews">reviews</a></td></tr>' for i in ids)
    rows += "".join(f'<tr><td class="title"><a href="/title/{i}/">{IMDB_MOVIES[i][0]}</a></td></tr>' for i in relative)
    return html(f'<div id="nav"><a href="http://www.imdb.com/chart/top">Top 250</a>'
                f'<a href="/name/nm0000151/">Morgan Freeman</a></div><table class="results">{rows}</table>'
                f'<div id="right"><a href="{next_href}">Next &raquo;</a></div>', "IMDb: Feature Film")


PAGES[IMDB_START] = _imdb_list(["tt0111161", "tt0068646", "tt0133093"], ["tt0071562"], "/search/title?count=100&page=2")
PAGES["http://www.imdb.com/search/title?count=100&page=2"] = _imdb_list(
    ["tt0050083", "tt0111161"], ["tt0108052"], IMDB_START.replace("http://www.imdb.com", ""))
for _id, (_title, _rating, _directors) in IMDB_MOVIES.items():
    PAGES[f"http://www.imdb.com/title/{_id}/"] = html(
        f'<table><tr><td id="overview-top"><h1 class="header"><span class="itemprop" itemprop="name">{_title}'
        f'</span> <span class="nobr">(19xx)</span></h1><div class="star-box-giga-star"> {_rating} </div>'
        + "".join(f'<div itemprop="director"><a href="/name/nm{n}/"><span itemprop="name">{d}</span></a></div>'
                  for n, d in enumerate(_directors)) + "</td></tr></table>", f"{_title} - IMDb")

# -- scrapy.org (pyspider's sample handler) -------------------------------------------------------------

PAGES["http://scrapy.org/"] = html(
    '<a href="http://scrapy.org/">Scrapy</a> <a href="/download/">Download</a> '
    '<a href="doc/">Documentation</a> <a href="http://scrapy.org/community/">Community</a> '
    '<a href="mailto:info@scrapy.org">mail</a> <a href="#top">top</a>', "Scrapy | A Fast and Powerful Scraping Framework")
PAGES["http://scrapy.org/download/"] = html('<a href="/">home</a>', "Download Scrapy")
PAGES["http://scrapy.org/doc/"] = html('<a href="/">home</a>', "Scrapy Documentation")
PAGES["http://scrapy.org/community/"] = html('<a href="/">home</a>', "Scrapy Community")

# -- twitch API (pyspider's tutorial, level 2) -----------------------------------------------------------

TWITCH_START = "http://api.twitch.tv/kraken/streams?limit=20&offset=0&game=Dota+2&broadcaster_language=&on_site=1"
PAGES[TWITCH_START] = (json.dumps({"_total": 2, "streams": [
    {"viewers": 10234, "channel": {"display_name": "dendi", "status": "Ranked grind"}},
    {"viewers": 877, "channel": {"display_name": "Purge"}},
]}).encode(), "application/json")

# -- douban movies (UTF-8, a User-Agent check, save=, pagination) ------------------------------------------

DOUBAN_MOVIES = {
    "1292052": ("肖申克的救赎 The Shawshank Redemption", "9.7", ["弗兰克·德拉邦特"]),
    "1291546": ("霸王别姬", "9.6", ["陈凯歌"]),
    "1292720": ("阿甘正传 Forrest Gump", "9.5", ["罗伯特·泽米吉斯"]),
    "1295644": ("这个杀手不太冷 Léon", "9.4", ["吕克·贝松"]),
    "1291561": ("千与千寻 千と千尋の神隠し", "9.4", ["宫崎骏"]),
}
DOUBAN_TAGS = {"剧情": [["1292052", "1291546"], ["1292720"]], "动画": [["1291561"]], "犯罪": [["1295644"]]}


def _douban(render: Callable[[], str]) -> Callable:
    def answer(request) -> Answer:
        if "Mozilla" not in request.headers.get("User-Agent", ""):
            return 403, {}, b"<html><body>403 Forbidden</body></html>"
        return 200, {"Content-Type": "text/html; charset=utf-8"}, render().encode("utf-8")
    return answer


PAGES["http://movie.douban.com/tag/"] = _douban(lambda: html(
    '<table class="tagCol">' + "".join(f'<tr><td><a href="/tag/{t}">{t}</a></td></tr>' for t in DOUBAN_TAGS)
    + "</table>", "豆瓣电影标签"))
for _tag, _pages in DOUBAN_TAGS.items():
    for _n, _ids in enumerate(_pages):
        _url = f"http://movie.douban.com/tag/{_tag}" + (f"?start={_n * 20}&type=T" if _n else "")
        _next = (f'<span class="next"><a href="/tag/{_tag}?start={(_n + 1) * 20}&type=T">后页&gt;</a></span>'
                 if _n + 1 < len(_pages) else '<span class="next">后页&gt;</span>')
        _items = "".join(f'<tr class="item"><td><div class="pl2"><a href="http://movie.douban.com/subject/{i}/">'
                         f'{DOUBAN_MOVIES[i][0].split()[0]}</a></div></td></tr>' for i in _ids)
        PAGES[_url] = _douban(lambda _items=_items, _next=_next, _tag=_tag: html(
            f'<table>{_items}</table><div class="paginator">{_next}</div>', f"豆瓣电影标签: {_tag}"))
for _id, (_title, _rating, _directors) in DOUBAN_MOVIES.items():
    PAGES[f"http://movie.douban.com/subject/{_id}/"] = _douban(
        lambda _title=_title, _rating=_rating, _directors=_directors: html(
            f'<h1><span property="v:itemreviewed">{_title}</span></h1>'
            f'<strong class="ll rating_num" property="v:average">{_rating}</strong>'
            + "".join(f'<a href="/celebrity/{n}/" rel="v:directedBy">{d}</a>' for n, d in enumerate(_directors)),
            f"{_title} (豆瓣)"))

# -- sina news (GBK pages: one declared in a <meta>, the others not declared at all) -----------------------------

SINA_NEWS = {"2015-06-01/doc-1": "国务院常务会议部署推进简政放权", "2015-06-01/doc-2": "长江客轮翻沉事件救援进展"}
PAGES["http://news.sina.com.cn/china/"] = (html(
    "".join(f'<ul class="list"><li><a href="http://news.sina.com.cn/c/{k}.shtml">{v}</a></li></ul>'
            for k, v in SINA_NEWS.items()), "国内新闻_新浪网",
    '<meta http-equiv="Content-Type" content="text/html; charset=gb2312">').encode("gbk"), "text/html")
for _key, _title in SINA_NEWS.items():
    PAGES[f"http://news.sina.com.cn/c/{_key}.shtml"] = (html(
        f'<h1 id="artibodyTitle">{_title}</h1><div id="artibody"><p>新浪新闻中心，{_title}。</p></div>',
        f"{_title}|新浪新闻").encode("gbk"), "text/html")

# -- Hacker News (one page, one result per row through self.send_message) -----------------------------------

HN_ITEMS = [("Show HN: A crawler in 100 lines", "http://example.org/crawler", "1."),
            ("Why SQLite is so great", "https://www.sqlite.org/whentouse.html", "2."),
            ("Ask HN: What are you working on?", "item?id=4242", "3.")]
PAGES["http://news.ycombinator.com/"] = html("<table>" + "".join(
    f'<tr class="athing"><td class="rank">{rank}</td><td class="title"><a class="storylink" href="{href}">{title}</a>'
    f'</td></tr><tr><td class="subtext">42 points</td></tr>' for title, href, rank in HN_ITEMS) + "</table>",
    "Hacker News")

# -- httpbin (status codes, redirects, a POST form echo) --------------------------------------------------------


@page("http://httpbin.org/status/200")
@page("http://httpbin.org/status/404")
@page("http://httpbin.org/status/500")
def _status(request) -> Answer:
    code = int(urlsplit(request.uri).path.rsplit("/", 1)[1])
    return code, {"Content-Type": "text/html"}, b""


@page("http://httpbin.org/redirect-to?url=/get")
def _redirect(request) -> Answer:
    return 302, {"Location": "/get"}, b""


@page("http://httpbin.org/get")
def _get(request) -> Answer:
    return 200, {"Content-Type": "application/json"}, json.dumps({"url": "http://httpbin.org/get"}).encode()


@page("http://httpbin.org/post")
def _post(request) -> Answer:
    if request.method != "POST":
        return 405, {}, b"method not allowed"
    form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
    return 200, {"Content-Type": "application/json"}, json.dumps({"form": form, "url": "http://httpbin.org/post"}).encode()

# -- books.toscrape.com (prices, an out-of-stock book, pagination) ----------------------------------------------

BOOKS = {
    "a-light-in-the-attic_1000": ("A Light in the Attic", "£51.77"),
    "tipping-the-velvet_999": ("Tipping the Velvet", "£53.74"),
    "soumission_998": ("Soumission", None),
    "sharp-objects_997": ("Sharp Objects", "£47.82"),
}
_BOOK_PAGES = [["a-light-in-the-attic_1000", "tipping-the-velvet_999"], ["soumission_998", "sharp-objects_997"]]
for _n, _slugs in enumerate(_BOOK_PAGES, 1):
    _next = f'<li class="next"><a href="page-{_n + 1}.html">next</a></li>' if _n < len(_BOOK_PAGES) else ""
    PAGES[f"http://books.toscrape.com/catalogue/page-{_n}.html"] = html(
        "<ol>" + "".join(f'<li><article class="product_pod"><h3><a href="{s}/index.html" title="{BOOKS[s][0]}">'
                         f'{BOOKS[s][0][:10]}...</a></h3></article></li>' for s in _slugs)
        + f'</ol><ul class="pager">{_next}</ul>', "All products | Books to Scrape")
for _slug, (_title, _price) in BOOKS.items():
    _info = f'<p class="price_color">{_price}</p>' if _price else '<p class="availability">Out of stock</p>'
    PAGES[f"http://books.toscrape.com/catalogue/{_slug}/index.html"] = html(
        f'<div class="product_main"><h1>{_title}</h1>{_info}</div>', f"{_title} | Books to Scrape")

# -- quotes.toscrape.com (a login with a CSRF token and cookies; the JSON API) -----------------------------------

QUOTES = [
    ("“The world as we have created it is a process of our thinking.”", "Albert Einstein", "albert-einstein"),
    ("“It is our choices, Harry, that show what we truly are.”", "J.K. Rowling", "j-k-rowling"),
    ("“There are only two ways to live your life.”", "Albert Einstein", "albert-einstein"),
    ("“Try not to become a man of success.”", "Albert Einstein", "albert-einstein"),
    ("“A day without sunshine is like, you know, night.”", "Steve Martin", "steve-martin"),
]
_CSRF, _SESSION = "Kq9vXbYtRsUwZ", "logged-in-7f3a"


@page("http://quotes.toscrape.com/login")
def _login(request) -> Answer:
    if request.method == "GET":
        body = html(f'<form action="/login" method="post"><input type="hidden" name="csrf_token" value="{_CSRF}">'
                    '<input name="username"><input name="password" type="password"></form>', "Quotes to Scrape")
        return 200, {"Set-Cookie": "csrf=ok; Path=/"}, body.encode()
    form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
    cookies = {k: v.value for k, v in request.cookies.items()}
    if form.get("csrf_token") != _CSRF or cookies.get("csrf") != "ok" or form.get("username") != "admin":
        return 403, {}, b"bad login"
    return 200, {"Set-Cookie": f"session={_SESSION}; Path=/"}, html('<a href="/logout">Logout</a>').encode()


def _quotes_page(n: int) -> Callable:
    def answer(request) -> Answer:
        logged_in = request.cookies.get("session") is not None and request.cookies["session"].value == _SESSION
        chosen = QUOTES[(n - 1) * 3:n * 3]
        items = "".join(f'<div class="quote"><span class="text">{t}</span><small class="author">{a}</small>'
                        f'<a href="/author/{slug}">(about)</a></div>' for t, a, slug in chosen)
        nav = '<a href="/logout">Logout</a>' if logged_in else '<a href="/login">Login</a>'
        more = f'<li class="next"><a href="/page/{n + 1}/">Next</a></li>' if n * 3 < len(QUOTES) else ""
        return 200, {}, html(f'<div class="header">{nav}</div>{items}<ul class="pager">{more}</ul>').encode()
    return answer


for _n in (1, 2):
    PAGES[f"http://quotes.toscrape.com/page/{_n}/"] = _quotes_page(_n)
PAGES["http://quotes.toscrape.com/"] = PAGES["http://quotes.toscrape.com/page/1/"]


def _api(request) -> Answer:
    if request.headers.get("X-Requested-With") != "XMLHttpRequest":
        return 400, {}, b"an XMLHttpRequest only"
    n = int(parse_qs(urlsplit(request.uri).query).get("page", ["1"])[0])
    chosen = QUOTES[(n - 1) * 2:n * 2]
    data = {"has_next": n * 2 < len(QUOTES), "page": n,
            "quotes": [{"author": {"name": a, "slug": s}, "text": t} for t, a, s in chosen]}
    return 200, {"Content-Type": "application/json"}, json.dumps(data).encode()


for _n in (1, 2, 3):
    PAGES[f"http://quotes.toscrape.com/api/quotes?page={_n}"] = _api

# -- a blog whose links carry tracking parameters (a taskid that ignores them) ------------------------------------

BLOG_POSTS = {"2015/08/scrapy-tips": "Scrapy Tips from the Pros", "2015/07/pyspider-intro": "An Introduction to pyspider"}
PAGES["http://blog.scrapinghub.com/"] = html("".join(
    f'<h2 class="entry-title"><a href="/{k}/?utm_source=feed">{v}</a></h2>'
    f'<a class="more" href="/{k}/?utm_source=more&amp;utm_medium=web">Read more</a>' for k, v in BLOG_POSTS.items()),
    "Scrapinghub Blog")
for _key, _title in BLOG_POSTS.items():
    for _query in ("utm_source=feed", "utm_source=more&utm_medium=web"):
        PAGES[f"http://blog.scrapinghub.com/{_key}/?{_query}"] = html(f'<h1 class="entry-title">{_title}</h1>', _title)


# -- serving ---------------------------------------------------------------------------------------------------

def answer(request) -> Answer:
    """What the site answers *request* (an absolute-form proxy request) with."""
    url = request.uri if request.uri.startswith("http://") else f"http://{request.host}{request.uri}"
    found = PAGES.get(unquote(url.split("#", 1)[0]))    # a server reads its paths percent-decoded
    if found is None:
        return 404, {"Content-Type": "text/html"}, b"<html><body>not here</body></html>"
    if callable(found):
        return found(request)
    if isinstance(found, tuple):
        return 200, {"Content-Type": found[1]}, found[0]
    return 200, {"Content-Type": "text/html; charset=utf-8"}, found.encode("utf-8")


class _Proxy(RequestHandler):
    SUPPORTED_METHODS = ("GET", "POST", "HEAD")

    def compute_etag(self) -> None:
        return None

    def _serve(self) -> None:
        request = self.request
        self.application.settings["requests"].append((request.method, request.uri))
        status, headers, body = answer(request)
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name, value)
        self.finish(body)

    get = post = head = _serve


class SiteProxy:
    """An HTTP proxy on 127.0.0.1 (port 0) serving :data:`PAGES`, on its own loop in a daemon thread."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pyspider-sites")
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the site proxy did not start")
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        server = HTTPServer(Application([(r".*", _Proxy)], requests=self.requests))
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        server.add_sockets(sockets)
        self._ready.set()
        await self._stop.wait()
        server.stop()
        await server.close_all_connections()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
