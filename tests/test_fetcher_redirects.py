"""Fetcher: redirects followed by the fetcher itself (method rules, cookies per hop, limits)."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import pytest

from spiderflow.fetcher import Fetcher
from spiderflow.message import Fetch, Task
from spiderflow.settings import Settings

SETTINGS = Settings(poolsize=10, timeout=10.0, connect_timeout=5.0)


def fetch(url: str, settings: Settings = SETTINGS, http_client: str = "auto", **options):
    fetcher = Fetcher(None, None, settings, http_client=http_client)

    async def go():
        try:
            return await fetcher.fetch(Task.create("test", url, fetch=Fetch(**options)))
        finally:
            fetcher.close()
    return asyncio.run(go())


def redirect_to(httpbin, target: str, status: int = 302) -> str:
    return f"{httpbin.url}/redirect-to?url={quote(target, safe='')}&status_code={status}"


@pytest.mark.parametrize("path", ["/redirect/3", "/relative-redirect/3", "/absolute-redirect/3"])
def test_redirects_are_followed(httpbin, path):
    result = fetch(httpbin.url + path)
    assert result.status_code == 200
    assert (result.url, result.orig_url) == (httpbin.url + "/get", httpbin.url + path)
    assert json.loads(result.content)["url"] == httpbin.url + "/get"


def test_allow_redirects_false_returns_the_redirect(httpbin):
    result = fetch(httpbin.url + "/redirect/2", allow_redirects=False)
    assert result.status_code == 302 and result.ok
    assert result.headers["Location"] == "/redirect/1"
    assert result.url == httpbin.url + "/redirect/2"


def test_too_many_redirects(httpbin):
    result = fetch(httpbin.url + "/redirect/3", max_redirects=2)
    assert result.status_code == 599 and "too many redirects" in result.error
    assert fetch(httpbin.url + "/redirect/3", max_redirects=3).status_code == 200
    loop = fetch(httpbin.url + "/redirect-loop")
    assert loop.status_code == 599 and "too many redirects: more than 5" in loop.error


# (status, method) -> method that reaches the target, and whether the body comes along
METHOD_RULES = [
    (301, "POST", "GET", False),
    (302, "POST", "GET", False),
    (303, "POST", "GET", False),
    (303, "PUT", "GET", False),
    (303, "DELETE", "GET", False),
    (307, "POST", "POST", True),
    (308, "PUT", "PUT", True),
    (307, "PATCH", "PATCH", True),
    (302, "PUT", "PUT", True),   # only POST changes on 301/302
    (301, "GET", "GET", False),
]


@pytest.mark.parametrize("status, method, expected, keeps_body", METHOD_RULES)
def test_redirect_method_rules(httpbin, status, method, expected, keeps_body):
    data = None if method in ("GET", "DELETE") else "payload"
    result = fetch(redirect_to(httpbin, "/anything/target", status), method=method, data=data)
    assert result.status_code == 200, result.error
    body = json.loads(result.content)
    assert body["method"] == expected
    assert body["url"].endswith("/anything/target")
    if keeps_body:
        assert body["data"] == "payload"
    else:
        assert body["data"] == ""
        assert "Content-Type" not in body["headers"] and body["headers"].get("Content-Length", "0") == "0"


def test_303_keeps_head(httpbin):
    result = fetch(redirect_to(httpbin, "/anything/x", 303), method="HEAD")
    assert result.status_code == 200 and result.url.endswith("/anything/x") and result.content == b""


def test_cookies_are_kept_across_hops(httpbin):
    # hop 1 sets k=v and redirects; the task's own cookie t rides along on every hop
    result = fetch(httpbin.url + "/cookies/set?k=v", cookies={"t": "x"})
    assert json.loads(result.content)["cookies"] == {"k": "v", "t": "x"}
    assert result.cookies == {"k": "v", "t": "x"}


def test_cookie_set_on_a_middle_hop_reaches_the_end(httpbin):
    url = redirect_to(httpbin, "/cookies/set?mid=1")
    result = fetch(url)
    assert json.loads(result.content)["cookies"] == {"mid": "1"}


def test_task_cookies_and_authorization_stay_on_their_host(httpbin):
    other = httpbin.url.replace("127.0.0.1", "localhost")
    result = fetch(redirect_to(httpbin, other + "/anything"), cookies={"secret": "1"},
                   headers={"Authorization": "Basic dTpw"})
    body = json.loads(result.content)
    assert body["url"].startswith("http://localhost:")
    assert "Cookie" not in body["headers"] and "Authorization" not in body["headers"]
    same = json.loads(fetch(redirect_to(httpbin, "/anything"), cookies={"secret": "1"},
                            headers={"Authorization": "Basic dTpw"}).content)
    assert same["headers"]["Cookie"] == "secret=1" and same["headers"]["Authorization"] == "Basic dTpw"


def test_redirect_to_unsupported_scheme_fails(httpbin):
    result = fetch(redirect_to(httpbin, "ftp://example.invalid/file"))
    assert result.status_code == 599 and "unsupported URL" in result.error


def test_redirects_with_the_simple_client(httpbin):
    result = fetch(httpbin.url + "/cookies/set?s=1", http_client="simple")
    assert result.status_code == 200 and result.cookies == {"s": "1"}
    post = fetch(redirect_to(httpbin, "/anything", 307), http_client="simple", method="POST", data="b")
    assert json.loads(post.content)["data"] == "b"
