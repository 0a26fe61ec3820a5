"""Fetcher parts without network: request building, redirect rules, data: URLs, cookies, body sink."""

from __future__ import annotations

import gzip
import zlib

import pytest

from spiderflow.fetcher import body, cookies, request
from spiderflow.fetcher.request import FetchOptionError, build_spec, parse_proxy, redirect_target
from spiderflow.message import Fetch, Task, Track
from spiderflow.settings import Settings

SETTINGS = Settings()


def spec_for(url="http://h/p", track=None, **options):
    task = Task.create("test", url, fetch=Fetch(**options), track=Track(fetch=track or {}))
    return build_spec(task, SETTINGS, body.ACCEPT_ENCODING)


def test_defaults_come_from_settings():
    spec = spec_for()
    assert (spec.timeout, spec.connect_timeout, spec.max_body_size) == (
        SETTINGS.timeout, SETTINGS.connect_timeout, SETTINGS.max_body_size)
    assert spec.headers["User-Agent"] == SETTINGS.user_agent and spec.proxy is None
    assert spec.headers["Accept-Encoding"] == body.ACCEPT_ENCODING
    spec = spec_for(timeout=3, connect_timeout=1, use_gzip=False)
    assert (spec.timeout, spec.connect_timeout) == (3.0, 1.0) and "Accept-Encoding" not in spec.headers


def test_conditional_headers():
    track = {"etag": '"e1"', "last_modified": "Wed, 21 Oct 2015 07:28:00 GMT"}
    spec = spec_for(track=track)
    assert spec.headers["If-None-Match"] == '"e1"' and spec.headers["If-Modified-Since"] == track["last_modified"]
    assert "If-None-Match" not in spec_for(track=track, etag=False).headers
    assert "If-None-Match" not in spec_for().headers  # no track: nothing to send
    assert spec_for(etag="W/\"x\"").headers["If-None-Match"] == 'W/"x"'
    assert spec_for(track=track, headers={"if-none-match": "mine"}).headers["If-None-Match"] == "mine"


def test_params_and_iri():
    assert request.merge_params("http://h/p?a=1#f", {"b": [1, 2]}) == "http://h/p?a=1&b=1&b=2"
    assert request.merge_params("http://h/p", None) == "http://h/p"
    assert request.iri_to_uri("http://bücher.example/straße?q=ü") == \
        "http://xn--bcher-kva.example/stra%C3%9Fe?q=%C3%BC"
    assert request.iri_to_uri("http://h/a%20b?x=%41") == "http://h/a%20b?x=%41"
    assert request.iri_to_uri("http://h/a b?q=c d") == "http://h/a%20b?q=c%20d"


@pytest.mark.parametrize("url, expected", [
    ("http://u:p%40ss@proxy:3128", ("http", "proxy", 3128, "u", "p@ss")),
    ("proxy:8080", ("http", "proxy", 8080, None, None)),
    ("socks5://127.0.0.1", ("socks5", "127.0.0.1", 1080, None, None)),
    ("https://user@p", ("https", "p", 443, "user", "")),
])
def test_parse_proxy(url, expected):
    p = parse_proxy(url)
    assert (p.scheme, p.hostname, p.port, p.username, p.password) == expected
    assert p.host == f"{p.scheme}://{p.hostname}"


@pytest.mark.parametrize("url", ["ftp://p:1", "http://:1", "http://p:notaport"])
def test_bad_proxies(url):
    with pytest.raises(FetchOptionError):
        parse_proxy(url)


def test_proxy_choice():
    settings = SETTINGS.replace(proxy="http://default:1")
    task = Task.create("t", "http://h/", fetch=Fetch())
    assert build_spec(task, settings, "").proxy.hostname == "default"
    task.fetch.proxy = False
    assert build_spec(task, settings, "").proxy is None
    task.fetch.proxy = "socks5://other:2"
    assert build_spec(task, settings, "").proxy.scheme == "socks5"


def test_redirect_target_rules():
    spec = spec_for(method="POST", data={"a": "1"}, headers={"Authorization": "x", "X-Keep": "1"})
    assert spec.headers["Content-Type"] == "application/x-www-form-urlencoded"
    nxt = redirect_target(spec, 302, "/next#frag")
    assert (nxt.url, nxt.method, nxt.body) == ("http://h/next", "GET", None)
    assert "Content-Type" not in nxt.headers and nxt.headers["Authorization"] == "x"
    assert spec.headers["Content-Type"]  # the previous hop's spec is untouched
    kept = redirect_target(spec, 307, "https://other/x")
    assert (kept.method, kept.body) == ("POST", b"a=1") and "Authorization" not in kept.headers
    assert "X-Keep" not in kept.headers and kept.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert redirect_target(spec, 307, "/same").headers["X-Keep"] == "1"   # the task's headers stay on their origin
    head = redirect_target(spec_for(method="HEAD"), 303, "/y")
    assert head.method == "HEAD"
    with pytest.raises(FetchOptionError):
        redirect_target(spec, 301, "javascript:alert(1)")


def test_multipart_encoding():
    ctype, data = request.encode_multipart({"f": ["1", "2"]}, {"up": ('a"b.txt', "é")})
    boundary = ctype.split("boundary=")[1]
    assert data.count(f"--{boundary}\r\n".encode()) == 3 and data.endswith(f"--{boundary}--\r\n".encode())
    assert b'filename="a%22b.txt"' in data and "é".encode() in data
    with pytest.raises(FetchOptionError):
        request.encode_multipart(None, {"bad": ("only-a-name",)})


def test_data_url_decoding():
    assert request.decode_data_url("data:,a%20b") == ("text/plain;charset=US-ASCII", b"a b")
    assert request.decode_data_url("data:text/plain;charset=utf-8;base64,w6k=") == \
        ("text/plain;charset=utf-8", "é".encode())
    assert request.decode_data_url("data:;base64,YQ") == ("text/plain;charset=US-ASCII", b"a")  # padding restored


# -- cookies ---------------------------------------------------------------------------------------

def test_cookie_jar_seeded_for_its_host():
    jar = cookies.new_jar("http://localhost:8000/a", {"a": "1"}, "b=2; c=\"q\"")
    assert cookies.cookie_header(jar, "http://localhost:8000/other") == 'b=2; c="q"; a=1'
    assert cookies.cookie_header(jar, "http://elsewhere.example/") is None
    assert cookies.new_jar("http://h/", {}, None) is None
    assert cookies.parse_cookie_header("not a cookie;;") == {}


def test_set_cookie_extraction_rules():
    lines = [("Set-Cookie", "s=1; Path=/"), ("Set-Cookie", "secure_one=2; Secure"),
             ("Set-Cookie", "other=3; Domain=other.example")]  # not ours: refused
    jar = cookies.extract(None, "http://site.example/x", lines)
    assert cookies.jar_dict(jar) == {"s": "1", "secure_one": "2"}
    assert cookies.cookie_header(jar, "http://site.example/") == "s=1"
    assert "secure_one=2" in cookies.cookie_header(jar, "https://site.example/")
    assert cookies.extract(None, "http://h/", []) is None


# -- the response sink --------------------------------------------------------------------------------

def feed(sink, lines, chunks):
    for line in lines:
        sink.header_line(line + "\r\n")
    return [sink.write(c) for c in chunks]


def test_sink_resets_on_a_new_status_line():
    sink = body.ResponseSink(100, decode=True)
    feed(sink, ["HTTP/1.1 200 Connection established", "X-Proxy: 1", "", "HTTP/1.1 404 Not Found", "a: b",
                "set-cookie: x=1", "Set-Cookie: y=2"], [b"xy"])
    assert sink.status == 404 and sink.body() == b"xy"
    assert sink.headers == {"A": "b", "Set-Cookie": "x=1, y=2"}
    assert sink.set_cookies == [("Set-Cookie", "x=1"), ("Set-Cookie", "y=2")]
    sink.header_line("no colon here\r\n")
    sink.header_line(" folded\r\n")
    assert sink.headers == {"A": "b", "Set-Cookie": "x=1, y=2"}


def test_sink_decodes_and_caps():
    data = b"x" * 10_000
    sink = body.ResponseSink(1000, decode=True)
    packed = gzip.compress(data)
    assert feed(sink, ["HTTP/1.1 200 OK", "Content-Encoding: gzip"], [packed[:50], packed[50:]])[-1] is False
    assert sink.truncated and sink.body() == data[:1000]
    raw_deflate = zlib.compressobj(wbits=-15)
    payload = raw_deflate.compress(b"raw deflate") + raw_deflate.flush()
    sink = body.ResponseSink(1000, decode=True)
    feed(sink, ["HTTP/1.1 200 OK", "Content-Encoding: deflate"], [payload])
    assert sink.body() == b"raw deflate" and not sink.error
    sink = body.ResponseSink(1000, decode=False)
    feed(sink, ["HTTP/1.1 200 OK", "Content-Encoding: gzip"], [packed[:20]])
    assert sink.body() == packed[:20]
