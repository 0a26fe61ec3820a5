"""The test HTTP server, tested through real HTTP with http.client (no redirects, no decoding)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import json
import re
import signal
import subprocess
import sys
import time
import zlib
from collections import deque
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import pytest
from tornado.httpclient import AsyncHTTPClient

from spiderflow.testing import (
    ENCODING_SAMPLES,
    TestServer,
    follow_links,
    follow_url,
    link_farm_links,
    link_farm_reachable,
    link_farm_url,
    serve_in_process,
    serve_in_thread,
)
from spiderflow.testing.app import LAST_MODIFIED, REDIRECT_CODES


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def request(server: TestServer, path: str, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 5) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def hrefs(body: bytes) -> list[str]:
    return re.findall(r'href="([^"]+)"', body.decode())


# --- pages ----------------------------------------------------------------------------------

def test_index_html_json_image(httpbin: TestServer) -> None:
    index = request(httpbin, "/")
    assert index.status == 200 and "/html" in hrefs(index.body)
    page = request(httpbin, "/html")
    assert page.headers["Content-Type"].startswith("text/html")
    assert b"<title>spiderflow test page</title>" in page.body
    assert {"/get?x=1", "links?total=10&show=2&n=1"} <= set(hrefs(page.body))
    assert b'<img src="/image/png"' in page.body and b'<form action="/post"' in page.body
    assert request(httpbin, "/json").json()["name"] == "spiderflow test document"
    assert request(httpbin, "/image/png").body.startswith(b"\x89PNG")
    assert request(httpbin, "/no/such/route").status == 404


def test_robots_and_private(httpbin: TestServer) -> None:
    robots = request(httpbin, "/robots.txt").body.decode()
    assert "User-agent: *" in robots and "Disallow: /private" in robots
    assert request(httpbin, "/private/secret.html").status == 200
    assert request(httpbin, "/private").status == 200


# --- echo -----------------------------------------------------------------------------------

def test_get_echo(httpbin: TestServer) -> None:
    data = request(httpbin, "/get?a=1&a=2&b=x", headers={"X-Test": "yes"}).json()
    assert data["method"] == "GET"
    assert data["url"] == f"{httpbin.url}/get?a=1&a=2&b=x"
    assert data["args"] == {"a": ["1", "2"], "b": "x"}
    assert data["headers"]["X-Test"] == "yes"
    assert (data["form"], data["files"], data["data"], data["json"]) == ({}, {}, "", None)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_anything_any_method(httpbin: TestServer, method: str) -> None:
    body = None if method in ("GET", "OPTIONS") else b'{"k": [1, 2]}'
    data = request(httpbin, "/anything/some/path", method, body, {"Content-Type": "application/json"}).json()
    assert data["method"] == method
    assert data["url"].endswith("/anything/some/path")
    if body:
        assert data["data"] == '{"k": [1, 2]}' and data["json"] == {"k": [1, 2]}


def test_head_has_no_body(httpbin: TestServer) -> None:
    reply = request(httpbin, "/get", "HEAD")
    assert reply.status == 200 and reply.body == b""


def test_post_form_and_files(httpbin: TestServer) -> None:
    boundary = "b0undary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="field"\r\n\r\nvalue\r\n',
        f'--{boundary}\r\nContent-Disposition: form-data; name="up"; filename="a.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\nhello file\r\n",
        f'--{boundary}\r\nContent-Disposition: form-data; name="bin"; filename="b.bin"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n",
    ]
    body = "".join(parts).encode() + b"\xff\xfe\x00\r\n" + f"--{boundary}--\r\n".encode()
    data = request(httpbin, "/post", "POST", body,
                   {"Content-Type": f"multipart/form-data; boundary={boundary}"}).json()
    assert data["form"] == {"field": "value"}
    assert data["files"]["up"] == {"filename": "a.txt", "content_type": "text/plain", "size": 10,
                                   "content": "hello file"}
    assert data["files"]["bin"]["size"] == 3 and data["files"]["bin"]["content"] is None
    form = request(httpbin, "/post", "POST", b"a=1&b=%C3%A9",
                   {"Content-Type": "application/x-www-form-urlencoded"}).json()
    assert form["form"] == {"a": "1", "b": "é"} and form["data"] == "a=1&b=%C3%A9"


def test_post_and_put_only_their_method(httpbin: TestServer) -> None:
    assert request(httpbin, "/put", "PUT", b"x").json()["data"] == "x"
    assert request(httpbin, "/post").status == 405
    assert request(httpbin, "/put", "POST", b"x").status == 405


def test_headers_user_agent_response_headers(httpbin: TestServer) -> None:
    assert request(httpbin, "/headers", headers={"X-A": "b"}).json()["headers"]["X-A"] == "b"
    assert request(httpbin, "/user-agent", headers={"User-Agent": "spider/1"}).json() == {"user-agent": "spider/1"}
    reply = request(httpbin, "/response-headers?X-One=1&X-Multi=a&X-Multi=b")
    assert reply.headers["X-One"] == "1" and reply.headers.get_all("X-Multi") == ["a", "b"]
    assert reply.json() == {"X-One": "1", "X-Multi": ["a", "b"]}


# --- status, delay, redirects ---------------------------------------------------------------

@pytest.mark.parametrize("code", [200, 201, 204, 301, 304, 400, 404, 418, 500, 503, 599])
def test_status(httpbin: TestServer, code: int) -> None:
    reply = request(httpbin, f"/status/{code}")
    assert reply.status == code
    assert reply.body == (b"" if code in (204, 304) else f"status {code}".encode())


def test_status_out_of_range(httpbin: TestServer) -> None:
    assert request(httpbin, "/status/600").status == 400


def test_delay(httpbin: TestServer) -> None:
    start = time.monotonic()
    reply = request(httpbin, "/delay/0.3?x=1")
    assert time.monotonic() - start >= 0.3
    assert reply.json()["args"] == {"x": "1"}
    with pytest.raises(TimeoutError):
        request(httpbin, "/delay/3", timeout=0.2)


def follow(server: TestServer, path: str, limit: int = 10) -> list[tuple[int, str]]:
    """(status, Location) of every hop, following Location headers by hand."""
    hops = []
    url = server.url + path
    for _ in range(limit):
        reply = request(server, url[len(server.url):])
        if reply.status not in REDIRECT_CODES:
            return hops
        hops.append((reply.status, reply.headers["Location"]))
        url = urljoin(url, reply.headers["Location"])
    return hops


def test_redirect_chains(httpbin: TestServer) -> None:
    assert follow(httpbin, "/redirect/3") == [(302, "/redirect/2"), (302, "/redirect/1"), (302, "/get")]
    assert [loc for _, loc in follow(httpbin, "/relative-redirect/3")] == ["2", "1", "../get"]
    assert [loc for _, loc in follow(httpbin, "/absolute-redirect/2")] == [
        f"{httpbin.url}/absolute-redirect/1", f"{httpbin.url}/get"]
    assert request(httpbin, "/redirect/0").status == 400


@pytest.mark.parametrize("code", REDIRECT_CODES)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_redirect_to(httpbin: TestServer, code: int, method: str) -> None:
    reply = request(httpbin, f"/redirect-to?url=/anything%3Fa%3D1&status_code={code}", method,
                    b"x=1" if method == "POST" else None)
    assert (reply.status, reply.headers["Location"]) == (code, "/anything?a=1")


def test_redirect_to_default_and_errors(httpbin: TestServer) -> None:
    reply = request(httpbin, "/redirect-to?url=http://127.0.0.1:1/x")
    assert (reply.status, reply.headers["Location"]) == (302, "http://127.0.0.1:1/x")
    assert request(httpbin, "/redirect-to?url=/get&status_code=300").status == 400
    assert request(httpbin, "/redirect-to").status == 400


def test_redirect_loop(httpbin: TestServer) -> None:
    reply = request(httpbin, "/redirect-loop")
    assert (reply.status, reply.headers["Location"]) == (302, "/redirect-loop")


# --- cookies, auth, conditional ---------------------------------------------------------------

def test_cookies(httpbin: TestServer) -> None:
    assert request(httpbin, "/cookies", headers={"Cookie": "a=1; b=two"}).json() == {
        "cookies": {"a": "1", "b": "two"}}
    set_ = request(httpbin, "/cookies/set?a=1&b=2")
    assert (set_.status, set_.headers["Location"]) == (302, "/cookies")
    assert sorted(c.split(";")[0] for c in set_.headers.get_all("Set-Cookie")) == ["a=1", "b=2"]
    delete = request(httpbin, "/cookies/delete?a")
    assert delete.status == 302
    cookie = delete.headers["Set-Cookie"]
    assert cookie.split(";")[0] in ("a=", 'a=""') and "expires=" in cookie.lower()


def test_basic_auth(httpbin: TestServer) -> None:
    def auth(user: str, passwd: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{passwd}".encode()).decode()}

    assert request(httpbin, "/basic-auth/u/p", headers=auth("u", "p")).json() == {"authenticated": True, "user": "u"}
    denied = request(httpbin, "/basic-auth/u/p", headers=auth("u", "wrong"))
    assert denied.status == 401 and denied.headers["WWW-Authenticate"].startswith("Basic")
    assert request(httpbin, "/basic-auth/u/p").status == 401


def test_etag(httpbin: TestServer) -> None:
    fresh = request(httpbin, "/etag/abc")
    assert (fresh.status, fresh.headers["ETag"]) == (200, '"abc"')
    assert request(httpbin, "/etag/abc", headers={"If-None-Match": '"x", "abc"'}).status == 304
    assert request(httpbin, "/etag/abc", headers={"If-None-Match": '"x"'}).status == 200


def test_cache(httpbin: TestServer) -> None:
    assert request(httpbin, "/cache").headers["Last-Modified"] == LAST_MODIFIED
    assert request(httpbin, "/cache", headers={"If-Modified-Since": LAST_MODIFIED}).status == 304
    assert request(httpbin, "/cache", headers={"If-Modified-Since": "Thu, 01 Jan 2026 00:00:00 GMT"}).status == 304
    assert request(httpbin, "/cache", headers={"If-Modified-Since": "Wed, 21 Oct 2015 07:27:59 GMT"}).status == 200
    assert request(httpbin, "/cache", headers={"If-Modified-Since": "garbage"}).status == 200


# --- bodies -----------------------------------------------------------------------------------

def test_gzip_and_deflate(httpbin: TestServer) -> None:
    gz = request(httpbin, "/gzip")
    assert gz.headers["Content-Encoding"] == "gzip" and json.loads(gzip.decompress(gz.body))["gzipped"] is True
    df = request(httpbin, "/deflate")
    assert df.headers["Content-Encoding"] == "deflate" and json.loads(zlib.decompress(df.body))["deflated"] is True


def test_brotli(httpbin: TestServer) -> None:
    reply = request(httpbin, "/brotli")
    try:
        import brotli
    except ImportError:
        assert reply.status == 501
    else:
        assert json.loads(brotli.decompress(reply.body))["brotli"] is True


def test_bad_gzip(httpbin: TestServer) -> None:
    reply = request(httpbin, "/hostile/bad-gzip")
    assert reply.headers["Content-Encoding"] == "gzip"
    with pytest.raises(gzip.BadGzipFile):
        gzip.decompress(reply.body)


def test_hostile_close(httpbin: TestServer) -> None:
    with pytest.raises(http.client.RemoteDisconnected):
        request(httpbin, "/hostile/close")


def test_hostile_garbage(httpbin: TestServer) -> None:
    with pytest.raises(http.client.BadStatusLine):
        request(httpbin, "/hostile/garbage")


def test_slow_body(httpbin: TestServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", httpbin.port, timeout=5)
    start = time.monotonic()
    conn.request("GET", "/hostile/slow-body?seconds=0.5")
    response = conn.getresponse()
    assert time.monotonic() - start < 0.3  # headers at once
    assert len(response.read()) == int(response.headers["Content-Length"]) == 60
    assert time.monotonic() - start >= 0.5
    conn.close()


@pytest.mark.parametrize("charset", sorted(ENCODING_SAMPLES))
@pytest.mark.parametrize("declare", ["header", "meta", "none"])
def test_encodings(httpbin: TestServer, charset: str, declare: str) -> None:
    reply = request(httpbin, f"/encoding/{charset}?declare={declare}")
    assert ENCODING_SAMPLES[charset] in reply.body.decode(charset)
    content_type = reply.headers["Content-Type"]
    assert (f"charset={charset}" in content_type) == (declare == "header")
    assert "charset" in content_type or declare != "header"
    assert (f'<meta charset="{charset}">'.encode() in reply.body) == (declare == "meta")
    if charset != "utf-8":
        with pytest.raises(UnicodeDecodeError):
            reply.body.decode("utf-8")


def test_encoding_broken_and_unknown(httpbin: TestServer) -> None:
    reply = request(httpbin, "/encoding/broken")
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    with pytest.raises(UnicodeDecodeError):
        reply.body.decode("utf-8")
    assert "café" in reply.body.decode("utf-8", "replace")
    assert request(httpbin, "/encoding/klingon").status == 404


def test_bytes_deterministic(httpbin: TestServer) -> None:
    first = request(httpbin, "/bytes/1000").body
    assert len(first) == 1000 and first == request(httpbin, "/bytes/1000?seed=0").body
    assert request(httpbin, "/bytes/1000?seed=7").body != first
    assert request(httpbin, "/bytes/0").body == b""


@pytest.mark.parametrize("length", ["", "&length=0"])
def test_large(httpbin: TestServer, length: str) -> None:
    size = 3_000_001
    conn = http.client.HTTPConnection("127.0.0.1", httpbin.port, timeout=5)
    conn.request("GET", f"/large?size={size}{length}")
    response = conn.getresponse()
    if length:
        assert response.headers["Content-Length"] is None and response.headers["Transfer-Encoding"] == "chunked"
    else:
        assert response.headers["Content-Length"] == str(size)
    received = 0
    while chunk := response.read(1 << 16):
        received += len(chunk)
    assert received == size
    conn.close()


def test_large_abandoned_midway(httpbin: TestServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", httpbin.port, timeout=5)
    conn.request("GET", "/large?size=100000000")
    assert len(conn.getresponse().read(1000)) == 1000
    conn.close()  # the server stops streaming; the next request is served normally
    assert request(httpbin, "/get").status == 200


# --- crawlable sites --------------------------------------------------------------------------

def test_link_farm_functions() -> None:
    links = link_farm_links(1000, 10, 5)
    assert links == link_farm_links(1000, 10, 5) and len(links) == 10
    assert all(0 <= j < 1000 for j in links)
    assert links != link_farm_links(1000, 10, 6)
    assert link_farm_reachable(1, 3) == {0}
    assert link_farm_reachable(50, 0) == {0}
    assert link_farm_url(50, 5, 3) == "/links?total=50&show=5&n=3"
    assert follow_links(20, 0) == list(range(1, 21))
    assert follow_links(3, 2) == [7, 8, 9] and follow_links(3, 2, total=9) == [7, 8]
    assert follow_url(3, 2) == "/follow?show=3&n=2" and follow_url(3, 2, 10) == "/follow?total=10&show=3&n=2"


def test_link_farm_pages(httpbin: TestServer) -> None:
    page = request(httpbin, "/links?total=100&show=7&n=42")
    assert page.status == 200 and b"<title>" in page.body
    assert hrefs(page.body) == [link_farm_url(100, 7, j) for j in link_farm_links(100, 7, 42)]
    assert request(httpbin, "/links?total=100&show=7").body == request(httpbin, link_farm_url(100, 7, 0)).body
    assert request(httpbin, "/links?total=100&show=7&n=100").status == 404
    assert request(httpbin, "/links?total=x").status == 400
    assert request(httpbin, "/links?total=100&show=7&n=42", "HEAD").body == b""
    assert request(httpbin, "/links", "POST", b"").status == 405


def test_link_farm_crawl_matches_reachable(httpbin: TestServer) -> None:
    """A breadth-first crawl over HTTP finds exactly link_farm_reachable's pages."""
    total, show = 50, 5
    conn = http.client.HTTPConnection("127.0.0.1", httpbin.port, timeout=5)
    seen = {link_farm_url(total, show, 0)}
    todo = deque(seen)
    while todo:
        conn.request("GET", todo.popleft())
        response = conn.getresponse()
        assert response.status == 200
        for href in hrefs(response.read()):
            if href not in seen:
                seen.add(href)
                todo.append(href)
    conn.close()
    crawled = {int(urlsplit(url).query.rpartition("n=")[2]) for url in seen}
    assert crawled == link_farm_reachable(total, show)
    assert 1 < len(crawled) <= total


def test_follow_pages(httpbin: TestServer) -> None:
    assert hrefs(request(httpbin, "/follow?show=4&n=3").body) == [follow_url(4, j) for j in (13, 14, 15, 16)]
    assert len(hrefs(request(httpbin, "/follow").body)) == 20
    assert hrefs(request(httpbin, "/follow?total=15&show=4&n=3").body) == [follow_url(4, j, 15) for j in (13, 14)]
    assert request(httpbin, "/follow?total=15&show=4&n=15").status == 404


# --- running it -------------------------------------------------------------------------------

def test_serve_in_thread_from_a_running_loop() -> None:
    async def main() -> tuple[int, bytes]:
        with serve_in_thread() as server:
            client = AsyncHTTPClient(force_instance=True)
            try:
                response = await client.fetch(server.url + "/links?total=10&show=2&n=1")
            finally:
                client.close()
        return response.code, response.body

    code, body = asyncio.run(main())
    assert code == 200 and hrefs(body) == [link_farm_url(10, 2, j) for j in link_farm_links(10, 2, 1)]


def test_stopped_thread_server_refuses_connections() -> None:
    server = serve_in_thread()
    assert request(server, "/get").status == 200
    server.stop()
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        request(server, "/get")


def test_serve_in_process() -> None:
    with serve_in_process() as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.pid is not None and server.pid != 0
        assert request(server, "/get").json()["url"] == f"{server.url}/get"
    assert server._process.exitcode == 0
    with pytest.raises(ConnectionRefusedError):
        request(server, "/get")


def test_busy_port_raises() -> None:
    with serve_in_thread() as taken:
        with pytest.raises(OSError, match="cannot serve"):
            serve_in_process(port=taken.port)
        with pytest.raises(OSError):
            serve_in_thread(port=taken.port)


def test_server_process_stops_when_its_parent_goes_away() -> None:
    server = serve_in_process()
    server._conn.close()  # what the parent's death looks like from the child
    server._process.join(10)
    assert server._process.exitcode == 0


def test_command_line_serves_and_exits_on_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "spiderflow.testing", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"spiderflow test server listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, line
        conn = http.client.HTTPConnection("127.0.0.1", int(match[2]), timeout=5)
        conn.request("GET", "/get")
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_command_line_refuses_remote_host() -> None:
    done = subprocess.run([sys.executable, "-m", "spiderflow.testing", "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--allow-remote" in done.stderr
