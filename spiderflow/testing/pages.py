"""What the test server serves, computed without a server.

The crawlable sites are pure functions of their query: the link farm (``/links``, pyspider's
bench) picks each page's links from an RNG seeded by the page, and the growth tree
(``/follow``, scrapy's bench) links every page to new children. Tests compute the exact
result of a crawl with :func:`link_farm_reachable` or :func:`follow_links`. Static pages
and the charset samples are rendered once, at import.
"""

from __future__ import annotations

import base64
import collections
import json
import random

#: The sentence ``/encoding/<charset>`` serves, encoded in that charset.
ENCODING_SAMPLES = {
    "utf-8": "Unicode test: naïve café, Größe, żółw, 日本語, русский, ελληνικά — ✓",
    "gbk": "这是一个用于测试网页编码检测的中文句子，包含常用的汉字和标点符号。",
    "shift_jis": "これは文字コードの判定をテストするための日本語の文章です。",
    "windows-1251": "Это русское предложение для проверки определения кодировки страницы.",
    "iso-8859-1": "Voilà une phrase française pour vérifier l'encodage : élève, garçon, où, déjà.",
}
DECLARE = ("header", "meta", "none")


# --- crawlable sites ------------------------------------------------------------------------

def link_farm_links(total: int, show: int, n: int) -> list[int]:
    """The pages link-farm page *n* links to: *show* picks in ``[0, total)``, seeded by the page."""
    return random.Random(f"links:{total}:{show}:{n}").choices(range(total), k=show)


def link_farm_reachable(total: int, show: int, start: int = 0) -> set[int]:
    """Every link-farm page that a crawl from page *start* reaches (breadth first)."""
    seen = {start}
    todo = collections.deque([start])
    while todo:
        for page in link_farm_links(total, show, todo.popleft()):
            if page not in seen:
                seen.add(page)
                todo.append(page)
    return seen


def link_farm_url(total: int, show: int, n: int = 0) -> str:
    """The path of link-farm page *n*, spelled exactly as the pages link to it."""
    return f"/links?total={total}&show={show}&n={n}"


def follow_links(show: int, n: int, total: int | None = None) -> list[int]:
    """The children of growth page *n*: ``n*show+1 .. n*show+show``, those below *total*."""
    children = range(n * show + 1, n * show + show + 1)
    return [c for c in children if total is None or c < total]


def follow_url(show: int, n: int, total: int | None = None) -> str:
    """The path of growth page *n*, spelled exactly as the pages link to it."""
    prefix = "" if total is None else f"total={total}&"
    return f"/follow?{prefix}show={show}&n={n}"


def links_page(title: str, paths: list[str]) -> bytes:
    """A small HTML page: a title, a short paragraph and one link per path."""
    links = "".join(f'<a href="{p}">{p}</a><br>\n' for p in paths)
    return (f"<!DOCTYPE html>\n<html><head><title>{title}</title></head><body>\n"
            f"<h1>{title}</h1>\n<p>A page of the spiderflow test site with {len(paths)} links.</p>\n"
            f"{links}</body></html>\n").encode()


# --- static pages ---------------------------------------------------------------------------

INDEX = links_page("spiderflow test server", [
    "/html", "/json", "/get", "/headers", "/status/418", "/redirect/2", "/cookies",
    "/gzip", "/encoding/utf-8", "/robots.txt", link_farm_url(100, 10), follow_url(20, 0),
])

HTML = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>spiderflow test page</title></head>
<body>
<h1>spiderflow test page</h1>
<p>A small page with <a href="/get?x=1">an absolute-path link</a>,
<a href="links?total=10&show=2&n=1">a relative link</a>, an image and a form.</p>
<img src="/image/png" alt="one pixel" width="1" height="1">
<form action="/post" method="post">
<input type="text" name="q" value="spiderflow"><input type="submit" value="Send">
</form>
</body></html>
"""

JSON = json.dumps({
    "name": "spiderflow test document",
    "version": 1,
    "items": [{"id": i, "title": f"item {i}", "tags": ["test", f"t{i}"]} for i in range(1, 4)],
    "unicode": "café 日本語",
    "nested": {"null": None, "true": True, "float": 1.5},
}).encode()

PNG = base64.b64decode(  # one pixel
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")

ROBOTS_TXT = b"User-agent: *\nDisallow: /private\nAllow: /\n"

PRIVATE = links_page("private page", ["/"])


def _encoding_page(charset: str, declare: str) -> bytes:
    meta = f'<meta charset="{charset}">' if declare == "meta" else ""
    page = (f"<!DOCTYPE html>\n<html><head>{meta}<title>encoding test</title></head>\n"
            f'<body><p id="sample">{ENCODING_SAMPLES[charset]}</p></body></html>\n')
    return page.encode(charset)


#: ``/encoding/<charset>?declare=<declare>`` bodies by (charset, declare).
ENCODING_PAGES = {(c, d): _encoding_page(c, d) for c in ENCODING_SAMPLES for d in DECLARE}

#: ``/encoding/broken``: declared utf-8, with invalid sequences among valid text.
BROKEN_UTF8 = (b'<!DOCTYPE html>\n<html><head><title>broken utf-8</title></head>\n'
               b'<body><p id="sample">valid caf\xc3\xa9, then \xff\xfe invalid, a cut \xe6\x97 sequence'
               b' and \xc3( a bad continuation; the end.</p></body></html>\n')

#: One chunk of ``/large``: 65,550 printable bytes.
LARGE_CHUNK = bytes(range(32, 127)) * 690
