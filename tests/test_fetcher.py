"""Fetcher: every self.crawl fetch option, through Fetcher.fetch against the local httpbin."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json

import pytest

from spiderflow.fetcher import ACCEPT_ENCODING, Fetcher
from spiderflow.message import Fetch, Task, Track, special_task
from spiderflow.settings import Settings

SETTINGS = Settings(poolsize=10, timeout=10.0, connect_timeout=5.0)


def make_task(url: str, track: dict | None = None, **fetch) -> Task:
    return Task.create("test", url, fetch=Fetch(**fetch), track=Track(fetch=track or {}))


def fetch(url: str, settings: Settings = SETTINGS, track: dict | None = None, **options):
    fetcher = Fetcher(None, None, settings)

    async def go():
        try:
            return await fetcher.fetch(make_task(url, track, **options))
        finally:
            fetcher.close()
    return asyncio.run(go())


def echo(result) -> dict:
    assert result.status_code == 200, (result.status_code, result.error)
    return json.loads(result.content)


# -- requests ----------------------------------------------------------------------------

def test_get_merges_params_into_query(httpbin):
    url = httpbin.url + "/get?x=1#frag"
    result = fetch(url, params={"a": ["1", "2"], "b": "é"})
    assert result.ok and result.error is None
    assert echo(result)["args"] == {"x": "1", "a": ["1", "2"], "b": "é"}
    assert result.orig_url == url
    assert result.url == httpbin.url + "/get?x=1&a=1&a=2&b=%C3%A9"
    assert result.headers["Content-Type"] == "application/json"
    assert result.time > 0


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS"])
def test_methods(httpbin, method):
    assert echo(fetch(httpbin.url + "/anything", method=method))["method"] == method


def test_head_has_no_body(httpbin):
    result = fetch(httpbin.url + "/anything", method="head")
    assert result.status_code == 200 and result.content == b""


def test_post_form_from_dict(httpbin):
    body = echo(fetch(httpbin.url + "/post", method="POST", data={"a": "1", "b": ["x", "y"]}))
    assert body["form"] == {"a": "1", "b": ["x", "y"]}
    assert body["headers"]["Content-Type"] == "application/x-www-form-urlencoded"


@pytest.mark.parametrize("data", ['{"k": "é"}', '{"k": "é"}'.encode()])
def test_post_raw_body(httpbin, data):
    body = echo(fetch(httpbin.url + "/post", method="POST", data=data,
                      headers={"Content-Type": "application/json"}))
    assert body["json"] == {"k": "é"}
    assert body["form"] == {}


def test_post_without_data_sends_empty_body(httpbin):
    body = echo(fetch(httpbin.url + "/post", method="POST"))
    assert body["data"] == "" and body["headers"]["Content-Length"] == "0"


def test_files_are_multipart(httpbin):
    body = echo(fetch(httpbin.url + "/post", method="POST", data={"field": "v"},
                      files={"doc": ("a.txt", b"hello"), "raw": b"\x00\x01", "typed": ["t.bin", "xy", "x-app/y"]}))
    assert body["headers"]["Content-Type"].startswith("multipart/form-data; boundary=")
    assert body["form"] == {"field": "v"}
    assert body["files"]["doc"] == {"filename": "a.txt", "content_type": "text/plain", "size": 5, "content": "hello"}
    assert body["files"]["raw"]["filename"] == "raw" and body["files"]["raw"]["size"] == 2
    assert body["files"]["typed"]["content_type"] == "x-app/y"


def test_put_with_body(httpbin):
    assert echo(fetch(httpbin.url + "/put", method="PUT", data="payload"))["data"] == "payload"


def test_headers_and_user_agent(httpbin):
    body = echo(fetch(httpbin.url + "/headers", headers={"X-Test": "1", "accept": "text/x"}))
    assert body["headers"]["X-Test"] == "1"
    assert body["headers"]["Accept"] == "text/x"
    assert body["headers"]["User-Agent"] == SETTINGS.user_agent
    assert "Cookie" not in body["headers"]


def test_user_agent_precedence(httpbin):
    url = httpbin.url + "/user-agent"
    assert echo(fetch(url, user_agent="task-ua"))["user-agent"] == "task-ua"
    assert echo(fetch(url, headers={"User-Agent": "header-ua"}))["user-agent"] == "header-ua"
    assert echo(fetch(url, user_agent="task-ua", headers={"user-agent": "h"}))["user-agent"] == "task-ua"
    assert echo(fetch(url, settings=SETTINGS.replace(user_agent="settings-ua")))["user-agent"] == "settings-ua"


def test_cookies_from_dict_and_header(httpbin):
    result = fetch(httpbin.url + "/cookies", cookies={"a": "1", "b": "override"}, headers={"Cookie": "b=2; c=3"})
    assert echo(result)["cookies"] == {"a": "1", "b": "override", "c": "3"}
    assert result.cookies == {"a": "1", "b": "override", "c": "3"}


def test_set_cookie_is_captured(httpbin):
    result = fetch(httpbin.url + "/cookies/set?k=v&n=1")
    assert result.url == httpbin.url + "/cookies"
    assert echo(result)["cookies"] == {"k": "v", "n": "1"}
    assert result.cookies == {"k": "v", "n": "1"}


def test_authorization_header(httpbin):
    token = base64.b64encode(b"user:pw").decode()
    result = fetch(httpbin.url + "/basic-auth/user/pw", headers={"Authorization": f"Basic {token}"})
    assert echo(result) == {"authenticated": True, "user": "user"}
    assert fetch(httpbin.url + "/basic-auth/user/pw").status_code == 401


def test_response_headers_repeated_fields_are_joined(httpbin):
    result = fetch(httpbin.url + "/response-headers?X-Multi=a&X-Multi=b&x-one=1")
    assert result.headers["X-Multi"] == "a, b" and result.headers["X-One"] == "1"


def test_save_is_passed_through(httpbin):
    save = {"page": 3, "tags": ["a", "b"], "nested": {"x": None}}
    assert fetch(httpbin.url + "/get", save=save).save == save
    assert fetch("data:,x", save=save).save == save


def test_status_codes_are_kept(httpbin):
    for code in (201, 404, 500, 503):
        result = fetch(httpbin.url + f"/status/{code}")
        assert result.status_code == code and result.error is None
        assert result.ok is (code < 400)


# -- conditional requests ----------------------------------------------------------------

def test_etag_from_track_gives_304(httpbin):
    url = httpbin.url + "/etag/abc"
    first = fetch(url)
    assert first.status_code == 200 and first.headers["Etag"] == '"abc"'
    again = fetch(url, track={"etag": first.headers["Etag"]})
    assert again.status_code == 304 and again.ok and again.content == b""
    assert fetch(url, track={"etag": '"abc"'}, etag=False).status_code == 200
    assert fetch(url, etag='"abc"').status_code == 304
    assert fetch(url, track={"etag": '"other"'}).status_code == 200


def test_last_modified_from_track_gives_304(httpbin):
    url = httpbin.url + "/cache"
    first = fetch(url)
    assert first.status_code == 200
    stamp = first.headers["Last-Modified"]
    assert fetch(url, track={"last_modified": stamp}).status_code == 304
    assert fetch(url, track={"last_modified": stamp}, last_modified=False).status_code == 200
    assert fetch(url, last_modified=stamp).status_code == 304
    body = echo(fetch(url, etag=False, last_modified=False))
    assert "If-Modified-Since" not in body["headers"] and "If-None-Match" not in body["headers"]


# -- compression -------------------------------------------------------------------------

@pytest.mark.parametrize("path, flag", [("/gzip", "gzipped"), ("/deflate", "deflated")])
def test_compressed_bodies_are_decoded(httpbin, path, flag):
    result = fetch(httpbin.url + path)
    body = echo(result)
    assert body[flag] is True
    assert body["headers"]["Accept-Encoding"] == ACCEPT_ENCODING


def test_use_gzip_false_asks_for_nothing_and_keeps_bytes(httpbin):
    result = fetch(httpbin.url + "/gzip", use_gzip=False)
    assert result.content[:2] == b"\x1f\x8b"
    body = json.loads(gzip.decompress(result.content))
    assert "Accept-Encoding" not in body["headers"]


def test_brotli_only_when_decodable(httpbin):
    try:
        import brotli  # noqa: F401
    except ImportError:
        assert "br" not in ACCEPT_ENCODING
        assert fetch(httpbin.url + "/brotli").status_code == 501  # the server cannot make it either
    else:
        assert "br" in ACCEPT_ENCODING
        assert echo(fetch(httpbin.url + "/brotli"))["brotli"] is True


def test_charset_bytes_are_untouched(httpbin):
    result = fetch(httpbin.url + "/encoding/gbk")
    assert result.status_code == 200
    assert result.headers["Content-Type"] == "text/html; charset=gbk"
    result.content.decode("gbk")  # the processor decodes; we pass bytes as sent


# -- without network ---------------------------------------------------------------------

def test_special_task_data_url():
    fetcher = Fetcher(None, None, SETTINGS)
    task = special_task("proj", "on_start", save={"k": 1})
    result = asyncio.run(fetcher.fetch(task))
    assert (result.status_code, result.content, result.save) == (200, b"on_start", {"k": 1})
    assert result.url == result.orig_url == "data:,on_start"
    assert result.headers["Content-Type"] == "text/plain;charset=US-ASCII"
    assert fetcher._transport is not None  # made on demand; fetcher.close() releases it
    fetcher.close()


@pytest.mark.parametrize("url, ctype, content", [
    ("data:text/html;charset=utf-8,%3Cb%3Ehi%3C%2Fb%3E", "text/html;charset=utf-8", b"<b>hi</b>"),
    ("data:;base64," + base64.b64encode(b"\x00\xffbin").decode(), "text/plain;charset=US-ASCII", b"\x00\xffbin"),
    ("data:image/png;base64,iVBO Rw0K", "image/png", base64.b64decode("iVBORw0K")),
    ("DATA:,", "text/plain;charset=US-ASCII", b""),
])
def test_data_urls(url, ctype, content):
    result = fetch(url)
    assert (result.status_code, result.headers["Content-Type"], result.content) == (200, ctype, content)


@pytest.mark.parametrize("url", ["data:text/plain", "data:;base64,@@@"])
def test_malformed_data_urls_fail(url):
    result = fetch(url)
    assert result.status_code == 599 and "data: URL" in result.error


def test_an_unknown_fetch_type_is_not_supported(httpbin):
    # fetch_type='js' is rendered by the browser pool: tests/test_fetcher_js.py
    result = fetch(httpbin.url + "/html", fetch_type="splash")
    assert (result.status_code, result.ok) == (501, False)
    assert result.error == "fetch_type 'splash' is not supported; use 'http' (the default) or 'js'"
