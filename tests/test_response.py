"""Response: lazy decoding (header → meta → detection), json, doc, etree, status helpers.

Pages come from the local test server through the real Fetcher, so the bytes and headers
are exactly what a crawl sees.
"""

from __future__ import annotations

import pytest

from spiderflow.fetcher import Fetcher
from spiderflow.message import FetchResult, Task
from spiderflow.processor import HTTPError, Response
from spiderflow.processor.response import detect_encoding, sniff_encoding
from spiderflow.settings import Settings
from spiderflow.testing import ENCODING_SAMPLES


@pytest.fixture(scope="module")
def fetch(httpbin):
    fetcher = Fetcher(None, None, Settings())

    def get(path: str) -> Response:
        task = Task.create("test", httpbin.url + path)
        return Response.from_fetch_result(fetcher.fetch_sync(task), task)
    return get


@pytest.mark.parametrize("charset", sorted(ENCODING_SAMPLES))
@pytest.mark.parametrize("declare", ["header", "meta", "none"])
def test_text_decodes_every_sample(fetch, charset, declare):
    response = fetch(f"/encoding/{charset}?declare={declare}")
    assert response.status_code == 200
    assert response.doc("#sample").text() == ENCODING_SAMPLES[charset]
    assert ENCODING_SAMPLES[charset] in response.text


def test_declared_charset_skips_detection(fetch, monkeypatch):
    import charset_normalizer

    def boom(*args, **kwargs):
        raise AssertionError("detection must not run when a charset is declared")
    monkeypatch.setattr(charset_normalizer, "from_bytes", boom)
    for declare in ("header", "meta"):
        response = fetch(f"/encoding/gbk?declare={declare}")
        assert response.encoding == "gb18030"  # gbk is decoded as its superset
        assert ENCODING_SAMPLES["gbk"] in response.text


def test_broken_encoding_is_replaced_not_raised(fetch):
    response = fetch("/encoding/broken")
    text = response.text
    assert response.encoding == "utf-8"
    assert "valid café" in text and "\ufffd" in text and "the end." in text
    assert "the end." in response.doc("#sample").text()


def test_encoding_can_be_set():
    body = "Größe".encode("windows-1252")
    response = Response(200, "http://example.com/", content=body, headers={"Content-Type": "text/plain; charset=utf-8"})
    assert response.text == "Gr\ufffd\ufffde"
    response.encoding = "windows-1252"
    assert response.text == "Größe"
    with pytest.raises(LookupError):
        response.encoding = "no-such-codec"


def test_sniffing_order():
    html = b'<html><head><meta charset="shift_jis"></head></html>'
    assert sniff_encoding("text/html; charset=gbk", html) == "gb18030"
    assert sniff_encoding("text/html", html) == "shift_jis"
    assert sniff_encoding("text/html; charset=bogus", html) == "shift_jis"
    assert sniff_encoding(None, b'<meta http-equiv="Content-Type" content="text/html; charset=windows-1251">') == "windows-1251"
    assert sniff_encoding(None, b'<?xml version="1.0" encoding="ISO-8859-1"?><rss/>') == "windows-1252"
    assert sniff_encoding(None, "\ufeffhi".encode("utf-8")) == "utf-8-sig"
    assert sniff_encoding(None, b"<html></html>") is None
    assert detect_encoding(b"plain ascii") == "utf-8"
    assert detect_encoding("naïve".encode()) == "utf-8"


def test_json_headers_cookies(fetch):
    response = fetch("/json")
    assert response.json["name"] == "spiderflow test document"
    assert response.json["unicode"] == "café 日本語"
    assert response.headers["content-type"] == response.headers["Content-Type"] == "application/json"
    assert "CONTENT-TYPE" in response.headers
    assert response.isok() and response.ok
    response.raise_for_status()


def test_doc_makes_links_absolute_and_etree_parses(fetch, httpbin):
    response = fetch("/html")
    hrefs = [a.attr.href for a in response.doc("a").items()]
    assert hrefs == [httpbin.url + "/get?x=1", httpbin.url + "/links?total=10&show=2&n=1"]
    assert response.doc("img").attr.src == httpbin.url + "/image/png"
    assert response.doc("form").attr.action == httpbin.url + "/post"
    assert response.etree.findtext(".//title") == "spiderflow test page"


def test_base_href_and_odd_links():
    html = (b'<html><head><base href="/sub/"></head><body><a href="a.html">a</a><a href="../b">b</a>'
            b'<a href="http://other.org/x">x</a><a href="mailto:me@example.com">m</a>'
            b'<a href="//cdn.example.com/y">y</a><a href="http://[bad">bad</a></body></html>')
    response = Response(200, "http://example.com/dir/page", content=html, headers={"Content-Type": "text/html"})
    assert [a.get("href") for a in response.doc("a")] == [
        "http://example.com/sub/a.html", "http://example.com/b", "http://other.org/x",
        "mailto:me@example.com", "http://cdn.example.com/y", "http://[bad"]


@pytest.mark.parametrize("href", ["http://[bad", "http://[bad/x/", "//[bad", "https://::1]/", "javascript:void(0)",
                                  "data:text/html,x"])
def test_an_unusable_base_href_is_ignored(href):
    html = (f'<html><head><base href="{href}"><title>t</title></head>'
            '<body><a href="a.html">a</a><img src="/i.png"></body></html>').encode()
    response = Response(200, "http://example.com/dir/page", content=html, headers={"Content-Type": "text/html"})
    assert response.doc("title").text() == "t"
    assert response.doc("a").attr.href == "http://example.com/dir/a.html"     # against the page URL
    assert response.doc("img").attr.src == "http://example.com/i.png"


def test_a_page_url_that_cannot_be_a_base_leaves_the_links_alone():
    response = Response(200, "http://[bad/page", content=b'<a href="a.html">a</a>', headers={"Content-Type": "text/html"})
    assert response.doc("a").attr.href == "a.html"


def test_cheap_attributes_stay_lazy():
    response = Response(200, "http://example.com/", content=b"<html><title>t</title></html>",
                        headers={"Content-Type": "text/html; charset=utf-8"})
    assert response.known_encoding is None
    assert response.status_code == 200 and response.content and response.headers
    assert response._text is None and response._doc is None and response._etree is None
    assert response.text.startswith("<html>")
    assert response._doc is None and response._etree is None
    assert response.known_encoding == "utf-8"
    assert response.doc("title").text() == "t"
    assert response.doc is response.doc


def test_empty_and_non_html_content():
    response = Response(200, "http://example.com/", content=b"")
    assert response.text == ""
    assert response.doc("a").length == 0
    assert Response(200, "http://example.com/", content=b"\x00\x01\x02").doc("a").length == 0


@pytest.mark.parametrize("status,error,ok", [
    (200, None, True), (304, None, True), (301, None, True), (404, None, False), (500, None, False),
    (599, "timed out", False),
])
def test_raise_for_status(status, error, ok):
    response = Response(status, "http://example.com/x", error=error)
    assert response.isok() is ok
    if ok:
        response.raise_for_status()
    else:
        with pytest.raises(HTTPError, match=f"HTTP {status}"):
            response.raise_for_status()
    if 300 <= status < 400 and status != 304:
        with pytest.raises(HTTPError, match="Redirection"):
            response.raise_for_status(allow_redirects=False)


def test_from_fetch_result_keeps_every_field():
    task = Task.create("p", "http://example.com/a")
    result = FetchResult(200, "http://example.com/b", headers={"X-A": "1"}, content=b"x", cookies={"c": "1"},
                         time=0.5, save={"k": [1]}, truncated=True)
    response = Response.from_fetch_result(result, task)
    assert (response.url, response.orig_url, response.cookies, response.time, response.save, response.truncated) == (
        "http://example.com/b", "http://example.com/a", {"c": "1"}, 0.5, {"k": [1]}, True)
    assert repr(response) == "<Response [200] http://example.com/b>"


# -- make_links_absolute gives what one pass over every link attribute gives --------------------------

def _links_absolute_reference(root, base_url):
    """make_links_absolute as it was, every link attribute in one XPath union: the oracle."""
    from lxml.etree import XPath

    from spiderflow.processor.response import LINK_ATTRIBUTES
    from spiderflow.processor.urls import url_joiner

    def join_or_keep(join, href):
        try:
            return join(href.strip())
        except ValueError:
            return href
    base = root.find(".//base[@href]")
    if base is not None:
        base_url = join_or_keep(url_joiner(base_url), base.get("href"))
    join = url_joiner(base_url)
    for value in XPath("|".join(f"//@{name}" for name in LINK_ATTRIBUTES))(root):
        fixed = join_or_keep(join, value)
        if fixed != value:
            value.getparent().set(value.attrname, fixed)


LINK_PAGES = {
    "every attribute": (
        '<html><head><link rel="stylesheet" href="s.css"><script src="/a.js"></script></head>'
        '<body background="bg.png"><a href="a.html#frag">a</a><a href=" ../b?x=1 ">b</a><a href="#top">t</a>'
        '<a href="?page=2">p</a><a href="">empty</a><a href="//cdn.example.org/c">c</a><a href="a&amp;b">amp</a>'
        '<img src="i.png" longdesc="d.html" usemap="#map"><video poster="p.jpg" src="v.mp4"></video>'
        '<form action="post"><button formaction="/alt">go</button></form><blockquote cite="q.html">q</blockquote>'
        '<div href="odd">div</div><img srcset="x.png 2x"><p>src href action as words</p></body></html>'),
    "upper case names only": '<HTML><BODY><IMG SRC="up.png"><FORM ACTION="send"><A HREF="x">x</A></FORM></BODY></HTML>',
    "mixed case": '<html><body><Video PoStEr="p.jpg"></Video><Q CiTe="c"></Q></body></html>',
    "odd schemes": (
        '<html><body><a href="javascript:void(0)">j</a><a href="mailto:me@example.com">m</a>'
        '<a href="data:,x">d</a><a href="http://[bad">ipv6</a><a href="HTTP://Other.ORG/x">u</a>'
        '<a href="ftp://f.example.com/">f</a><a href="\\\\back\\slash">bs</a></body></html>'),
    "relative base": '<html><head><base href="/sub/"></head><body><a href="a">a</a><img src="../i.png"></body></html>',
    "absolute base": '<html><head><base href="https://other.org/x/"></head><body><a href="a">a</a></body></html>',
    "namespaced": '<html><body><svg><use xlink:href="#s"></use><a href="svg-link">s</a></svg></body></html>',
    "no links": '<html><body><p>nothing to see</p></body></html>',
    "nul in a name": '<html><body><a hr\x00ef="x" src\x00="y">n</a></body></html>',
}


@pytest.mark.parametrize("name", sorted(LINK_PAGES))
@pytest.mark.parametrize("url", ["http://example.com/dir/page.html", "https://example.com/"])
def test_doc_makes_the_links_absolute_as_a_pass_over_every_attribute_does(name, url):
    import lxml.html

    response = Response(200, url, content=LINK_PAGES[name].encode(), headers={"Content-Type": "text/html; charset=utf-8"})
    expected = lxml.html.document_fromstring(response.text)
    _links_absolute_reference(expected, url)
    response.doc
    assert lxml.html.tostring(response.etree) == lxml.html.tostring(expected)


def test_doc_makes_links_absolute_that_the_callback_added_to_the_etree():
    response = Response(200, "http://example.com/dir/", content=b"<html><body><a href='a'>a</a></body></html>",
                        headers={"Content-Type": "text/html"})
    body = response.etree.find("body")
    body.append(body.makeelement("video", {"poster": "p.jpg", "src": "v.mp4"}))
    assert response.doc("video").attr.poster == "http://example.com/dir/p.jpg"
    assert response.doc("video").attr.src == "http://example.com/dir/v.mp4"
    assert response.doc("a").attr.href == "http://example.com/dir/a"


def test_doc_after_a_new_encoding_makes_links_absolute_again():
    response = Response(200, "http://example.com/", content="<a href='caf\u00e9'>x</a>".encode("latin-1"),
                        headers={"Content-Type": "text/html; charset=utf-8"})
    assert response.doc("a").attr.href == "http://example.com/caf\ufffd"
    response.encoding = "latin-1"
    assert response.doc("a").attr.href == "http://example.com/caf\u00e9"


@pytest.mark.parametrize("base", [
    "http://example.com", "http://example.com/", "https://example.com:8443/a/b?c=1#d", "http://example.com?q=1",
    "http://example.com#frag", "http://user:pw@example.com:80/p", "http://EXAMPLE.com/Path", "http://",
    "http:///path", "https://example.com/a//b", "http://[::1]:8080/x", "http://[::1/x", "http://::1]/x",
    "http://[bad/", "http://ex\tample.com/", "http://example.com\n/x", "http://ex\rample.com/", "http://b\u00fccher.de/x",
    "http://example.com/\u00e9", "HTTP://EXAMPLE.COM/x", "Https://example.com/", "ftp://example.com/x",
    "mailto:me@example.com", "data:,x", "//example.com/x", "/just/a/path", "", " http://example.com/",
    "http://example.com\\x\\y", "http://a.b/c;d?e#f/g", "http://evil\uff0fexample.com/", "http://a\u2100b/",
])
def test_origin_is_scheme_and_netloc_as_urlsplit_gives_them(base):
    from urllib.parse import urlsplit

    from spiderflow.processor.urls import origin

    try:
        parts = urlsplit(base)
    except ValueError:
        with pytest.raises(ValueError):
            origin(base)
    else:
        assert origin(base) == f"{parts.scheme}://{parts.netloc}"
