"""The bench's site server: the test app's bytes for the bench pages, and sound HTTP/1.1 framing."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator

import pytest

from spiderflow.bench.server import MAX_HEAD, serve
from spiderflow.testing import ServerProcess, TestServer, follow_url, link_farm_url, serve_in_process


@pytest.fixture(scope="module")
def bench_site() -> Iterator[ServerProcess]:
    with serve_in_process(serve=serve) as server:
        yield server


def _raw(server: ServerProcess, data: bytes, chunks: int = 1) -> bytes:
    """Send *data* (in *chunks* pieces) on one connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        step = max(1, -(-len(data) // chunks))
        for i in range(0, len(data), step):
            sock.sendall(data[i:i + step])
        out = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                return out
            out += piece


def test_pages_are_the_test_apps_bytes(bench_site: ServerProcess, httpbin: TestServer) -> None:
    ours = http.client.HTTPConnection("127.0.0.1", bench_site.port, timeout=10)
    theirs = http.client.HTTPConnection("127.0.0.1", httpbin.port, timeout=10)
    for path in (link_farm_url(10_000, 20, 0), link_farm_url(100, 10, 99), follow_url(20, 0),
                 follow_url(20, 12345), follow_url(5, 7, total=30)):
        ours.request("GET", path)
        mine = ours.getresponse()
        body = mine.read()
        theirs.request("GET", path)
        reference = theirs.getresponse()
        assert (mine.status, body) == (reference.status, reference.read()) == (200, body)
        assert mine.getheader("Content-Type") == "text/html; charset=utf-8"
        assert int(mine.getheader("Content-Length")) == len(body)
        assert mine.getheader("Date")


def test_unknown_pages_methods_and_head(bench_site: ServerProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", bench_site.port, timeout=10)
    for path in ("/", "/links?total=10&show=2&n=10", "/links?total=x", "/follow?total=5&n=5", "/get"):
        conn.request("GET", path)
        reply = conn.getresponse()
        assert (reply.status, reply.read()) == (404, b"404 not found\n"), path
    conn.request("POST", follow_url(20, 1), body=b"x" * 1000)   # the body is read and skipped
    reply = conn.getresponse()
    assert (reply.status, reply.read()) == (405, b"only GET and HEAD\n")
    conn.request("HEAD", follow_url(20, 1))
    reply = conn.getresponse()
    assert reply.status == 200 and int(reply.getheader("Content-Length")) > 0 and reply.read() == b""
    conn.request("GET", follow_url(20, 1))   # the connection is still in step after all that
    assert conn.getresponse().read().count(b"<a href=") == 20


def test_pipelined_requests_split_anywhere(bench_site: ServerProcess) -> None:
    paths = [follow_url(20, n) for n in range(5)]
    data = b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % p.encode() for p in paths[:-1])
    data += b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % paths[-1].encode()
    for chunks in (1, 7, len(data)):    # all at once, in pieces, byte by byte
        out = _raw(bench_site, data, chunks)
        assert out.count(b"HTTP/1.1 200 OK\r\n") == 5
        for n in range(5):
            assert f"follow page {n}<".encode() in out
        assert out.index(b"follow page 0<") < out.index(b"follow page 4<")


def test_http10_closes_unless_keep_alive(bench_site: ServerProcess) -> None:
    out = _raw(bench_site, b"GET /follow?show=20&n=1 HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in out
    with socket.create_connection(("127.0.0.1", bench_site.port), timeout=10) as sock:
        sock.sendall(b"GET /follow?show=20&n=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" not in first
        sock.sendall(b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert b"404" in sock.recv(65536)


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET /follow HTTP/2\r\n\r\n",
    b"GET /follow?show=20&n=1 HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /follow?show=20&n=1 HTTP/1.1\r\nContent-Length: -3\r\n\r\n",
    b"POST /follow HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /" + b"a" * (MAX_HEAD + 10),
])
def test_bad_requests_get_400_and_a_closed_connection(bench_site: ServerProcess, request_bytes: bytes) -> None:
    out = _raw(bench_site, request_bytes)
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"Connection: close\r\n" in out
    assert out.count(b"HTTP/1.1") == 1


def test_non_ascii_target_is_not_found(bench_site: ServerProcess) -> None:
    out = _raw(bench_site, "GET /follow?n=\u00e9 HTTP/1.1\r\nConnection: close\r\n\r\n".encode("latin-1"))
    assert out.startswith(b"HTTP/1.1 404 Not Found\r\n")
