"""Fetcher security: decompression bombs, block_private_addresses, headers on redirects, request injection.

Every fetch here goes to servers on 127.0.0.1: the test app (``httpbin``), and recording
servers of this module that answer ``?to=URL`` with a redirect and anything else with the
request's headers as JSON. One of them also plays an HTTP proxy for an address that is
public (it answers requests for any host itself, so nothing leaves the machine).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fetcher_proxy import ServerThread
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from spiderflow.fetcher import Fetcher
from spiderflow.fetcher.addresses import ConnectGuard, blocked_kind
from spiderflow.fetcher.body import ACCEPT_ENCODING
from spiderflow.fetcher.request import build_spec, redirect_target
from spiderflow.message import Fetch, Task
from spiderflow.queues.memory import MemoryQueue
from spiderflow.settings import Settings

SETTINGS = Settings(poolsize=10, timeout=20.0, connect_timeout=5.0)
BLOCKING = SETTINGS.replace(block_private_addresses=True)
CLIENTS = ["curl", "simple"]
LIMIT = 2**20
#: a public address (example.com's) that only the recording proxy ever "serves": no packet goes there
PUBLIC = "93.184.215.14"

needs_brotli = pytest.mark.skipif("br" not in ACCEPT_ENCODING, reason="brotli >= 1.2 is not installed")


def fetch(url: str, settings: Settings = SETTINGS, http_client: str = "curl", **options):
    fetcher = Fetcher(None, None, settings, http_client=http_client)

    async def go():
        try:
            return await fetcher.fetch(Task.create("test", url, fetch=Fetch(**options)))
        finally:
            fetcher.close()
    return asyncio.run(go())


class _Recorder(RequestHandler):
    """Records every request; ``?to=URL[&status=N]`` redirects, anything else echoes the headers."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE", "M-SEARCH")

    def initialize(self, records: list) -> None:
        self.records = records

    def prepare(self) -> None:
        request = self.request
        self.records.append((request.method, request.uri, dict(request.headers)))
        target = self.get_query_argument("to", None)
        if target is not None:
            self.redirect(target, status=int(self.get_query_argument("status", "302")))
        else:
            self.finish({"method": request.method, "uri": request.uri, "headers": dict(request.headers)})

    def check_xsrf_cookie(self) -> None:
        pass


class Recorder:
    """A recording server on 127.0.0.1 in its own thread; ``records`` holds (method, uri, headers)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, str]]] = []

        async def start():
            server = HTTPServer(Application([(r".*", _Recorder, {"records": self.records})]))
            [sock] = bind_sockets(0, "127.0.0.1")
            server.add_sockets([sock])
            return sock.getsockname()[1], server.stop

        self._thread = ServerThread(start)
        self.port = self._thread.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._thread.stop()


@pytest.fixture
def origin() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.stop()


@pytest.fixture
def other() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.stop()


def redirect(server: Recorder, target: str, status: int = 302) -> str:
    return f"{server.url}/hop?to={quote(target, safe='')}&status={status}"


# -- decompression bombs ---------------------------------------------------------------------

BOMBS = ["gzip", "deflate", pytest.param("br", marks=needs_brotli), pytest.param("gzip,br", marks=needs_brotli),
         pytest.param("br,gzip", marks=needs_brotli), "gzip,deflate"]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("coding", BOMBS)
def test_bomb_is_cut_at_max_body_size(httpbin, client, coding):
    result = fetch(f"{httpbin.url}/hostile/bomb?coding={coding}", SETTINGS.replace(max_body_size=LIMIT),
                   http_client=client)
    assert result.status_code == 200 and result.truncated
    assert result.error == f"body larger than max_body_size ({LIMIT} bytes): truncated"
    assert len(result.content) == LIMIT and result.content.count(0) == LIMIT  # decoded zeros, not the packed bytes


@pytest.mark.parametrize("coding", ["gzip,br", "br,gzip", "deflate,gzip"])
def test_stacked_codings_decode_whole_under_the_limit(httpbin, coding):
    if "br" in coding and "br" not in ACCEPT_ENCODING:
        pytest.skip("brotli >= 1.2 is not installed")
    result = fetch(f"{httpbin.url}/hostile/bomb?coding={coding}&mib=2", SETTINGS.replace(max_body_size=4 * 2**20))
    assert result.status_code == 200 and result.error is None and not result.truncated
    assert result.content == b"\0" * 2 * 2**20


@pytest.mark.parametrize("client", CLIENTS)
def test_too_many_stacked_codings_are_refused(httpbin, client):
    result = fetch(f"{httpbin.url}/hostile/bomb?coding=gzip,gzip,gzip,gzip&mib=1", http_client=client)
    assert result.status_code == 599
    assert result.error == ("refused: 4 stacked content codings (gzip, gzip, gzip, gzip); at most 3 are decoded")


_MEASURE = textwrap.dedent("""
    import asyncio, json, sys
    from spiderflow.fetcher import Fetcher
    from spiderflow.message import Task
    from spiderflow.settings import Settings

    def kib(field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

    base, coding, client, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    fetcher = Fetcher(None, None, Settings(max_body_size=limit, timeout=60.0), http_client=client)

    async def go():
        await fetcher.fetch(Task.create("warm", base + "/hostile/bomb?coding=" + coding + "&mib=1"))
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")   # VmHWM (the peak resident size) starts again from VmRSS
        before = kib("VmRSS")
        result = await fetcher.fetch(Task.create("bomb", base + "/hostile/bomb?coding=" + coding + "&mib=256"))
        growth = kib("VmHWM") - before
        fetcher.close()
        print(json.dumps({"growth_kib": growth, "size": len(result.content),
                          "truncated": result.truncated, "error": result.error}))

    asyncio.run(go())
""")


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("coding", ["gzip", pytest.param("br", marks=needs_brotli),
                                    pytest.param("gzip,br", marks=needs_brotli)])
def test_bomb_memory_stays_bounded(httpbin, client, coding):
    # 256 MiB of zeros in a body of 400 bytes (br) to 260 KB (gzip); the peak resident size of
    # the fetching process may grow by the 1 MiB body and the decoders' pieces, not by 256 MiB
    packed = fetch(f"{httpbin.url}/hostile/bomb?coding={coding}&mib=256", use_gzip=False)
    assert packed.status_code == 200 and len(packed.content) < 2**20   # made (and cached) by the server
    proc = subprocess.run([sys.executable, "-c", _MEASURE, httpbin.url, coding, client, str(LIMIT)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["size"] == LIMIT and report["truncated"], report
    assert report["growth_kib"] < 48 * 1024, report


# -- block_private_addresses -------------------------------------------------------------------

@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "a loopback address"), ("127.8.9.10", "a loopback address"), ("::1", "a loopback address"),
    ("::ffff:127.0.0.1", "a loopback address"), ("10.1.2.3", "a private address"),
    ("172.16.0.1", "a private address"), ("192.168.1.1", "a private address"), ("fd00::1", "a private address"),
    ("169.254.169.254", "a link-local address"), ("fe80::1", "a link-local address"),
    ("224.0.0.251", "a multicast address"), ("ff02::1", "a multicast address"),
    ("0.0.0.0", "an unspecified address"), ("::", "an unspecified address"),
    ("100.64.0.1", "not a public address"), ("2002:7f00:1::", "a loopback address"),
    ("64:ff9b::a9fe:a9fe", "a link-local address"),
    (PUBLIC, None), ("2606:4700:4700::1111", None), ("8.8.8.8", None),
])
def test_address_kinds(address, kind):
    assert blocked_kind(address) == kind


def test_the_connect_guard_opens_sockets_for_public_addresses_only():
    import pycurl
    curl_address = collections.namedtuple("CurlSockAddr", "family socktype protocol addr")
    guard = ConnectGuard("example.com")
    assert guard.opensocket(0, curl_address(socket.AF_INET6, socket.SOCK_STREAM, 6, ("::1", 80, 0, 0))) \
        == pycurl.SOCKET_BAD
    assert guard.error() == "blocked: example.com resolves to ::1, a loopback address; block_private_addresses is on"
    sock = guard.opensocket(0, curl_address(socket.AF_INET, socket.SOCK_STREAM, 6, (PUBLIC, 80)))
    assert sock.family == socket.AF_INET and sock.fileno() >= 0     # a socket, not connected: libcurl connects
    assert guard.error() is None   # one address was allowed: a failure is that address's, not a refusal
    guard.close()
    assert sock.fileno() == -1


@pytest.mark.parametrize("client", CLIENTS)
def test_loopback_is_refused_when_blocking(origin, client):
    result = fetch(origin.url + "/x", BLOCKING, http_client=client)
    assert result.status_code == 599
    assert result.error == "blocked: 127.0.0.1 is a loopback address; block_private_addresses is on"
    assert origin.records == []
    allowed = fetch(origin.url + "/x", SETTINGS, http_client=client)   # the default: off
    assert allowed.status_code == 200 and len(origin.records) == 1


@pytest.mark.parametrize("client", CLIENTS)
def test_a_name_resolving_to_loopback_is_refused(origin, client):
    result = fetch(f"http://localhost:{origin.port}/x", BLOCKING, http_client=client)
    assert result.status_code == 599
    assert result.error.startswith("blocked: localhost resolves to ")
    assert result.error.endswith(", a loopback address; block_private_addresses is on")
    assert origin.records == []


@pytest.mark.parametrize("client", CLIENTS)
def test_robots_txt_is_not_fetched_from_a_blocked_host(origin, client):
    result = fetch(origin.url + "/x", BLOCKING, http_client=client, robots_txt=True)
    assert result.status_code == 599 and result.error.startswith("blocked: 127.0.0.1")
    assert origin.records == []


def test_behind_a_proxy_the_target_is_checked_on_every_hop(origin, other):
    proxy = origin  # answers for any host itself: PUBLIC is never contacted
    public = fetch(f"http://{PUBLIC}/page", BLOCKING, proxy=proxy.url)
    assert public.status_code == 200, public.error
    assert origin.records[-1][1] == f"http://{PUBLIC}/page"   # the proxy itself (on loopback) is allowed
    hop = fetch(f"http://{PUBLIC}/hop?to={other.url}/secret", BLOCKING, proxy=proxy.url)
    assert hop.status_code == 599
    assert hop.error == "blocked: 127.0.0.1 is a loopback address; block_private_addresses is on"
    assert [uri for _, uri, _ in origin.records] == [f"http://{PUBLIC}/page",
                                                     f"http://{PUBLIC}/hop?to={other.url}/secret"]
    direct = fetch(other.url + "/secret", BLOCKING, proxy=proxy.url)
    assert direct.status_code == 599 and direct.error.startswith("blocked: 127.0.0.1 is a loopback address")
    assert len(origin.records) == 2 and other.records == []
    assert fetch(f"http://{PUBLIC}/hop?to={other.url}/secret", SETTINGS, proxy=proxy.url).status_code == 200


@pytest.mark.parametrize("client", CLIENTS)
def test_a_blocked_task_fails_and_the_fetcher_goes_on(origin, client):
    inqueue, outqueue = MemoryQueue("in", 10), MemoryQueue("out", 10)
    inqueue.put_nowait(Task.create("test", origin.url + "/x"))
    inqueue.put_nowait(Task.create("test", "data:,still%20here"))
    asyncio.run(Fetcher(inqueue, outqueue, BLOCKING, http_client=client).run(burst=True))
    results = {task.url: result for task, result in (outqueue.get_nowait() for _ in range(2))}
    assert results[origin.url + "/x"].status_code == 599
    assert "block_private_addresses is on" in results[origin.url + "/x"].error
    assert results["data:,still%20here"].content == b"still here"
    assert origin.records == []


# -- headers on redirects ------------------------------------------------------------------------

TASK_HEADERS = {"Authorization": "Bearer secret", "Proxy-Authorization": "Basic cDpw", "X-Api-Key": "k",
                "Cookie": "session=1", "If-None-Match": '"v1"', "Accept-Language": "fr"}


@pytest.mark.parametrize("client", CLIENTS)
def test_task_headers_stay_on_their_origin(origin, other, client):
    result = fetch(redirect(origin, other.url + "/landing"), http_client=client, headers=TASK_HEADERS)
    assert result.status_code == 200 and result.url == other.url + "/landing"
    [(_, _, seen)] = other.records
    for name in ("Authorization", "Proxy-Authorization", "X-Api-Key", "Cookie", "If-None-Match"):
        assert name not in seen, name
    assert seen["Accept-Language"] == "fr" and seen["User-Agent"] == SETTINGS.user_agent
    assert origin.records[0][2]["Authorization"] == "Bearer secret"


@pytest.mark.parametrize("client", CLIENTS)
def test_a_same_origin_redirect_keeps_the_task_headers(origin, client):
    result = fetch(redirect(origin, "/landing", 307), http_client=client, headers=TASK_HEADERS)
    assert result.status_code == 200
    seen = origin.records[-1][2]
    assert origin.records[-1][1] == "/landing"
    for name, value in TASK_HEADERS.items():
        assert seen[name] == value, name


def test_the_default_port_is_the_same_origin():
    spec = build_spec(Task.create("t", "http://example.com/a", fetch=Fetch(headers={"Authorization": "x"})),
                      SETTINGS, ACCEPT_ENCODING)
    assert redirect_target(spec, 302, "http://example.com:80/b").headers["Authorization"] == "x"
    assert "Authorization" not in redirect_target(spec, 302, "https://example.com/b").headers
    assert "Authorization" not in redirect_target(spec, 302, "http://example.com:8080/b").headers


# -- request injection ---------------------------------------------------------------------------

@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("method", ["GET /evil HTTP/1.1\r\nX-Injected: 1\r\nX:", "GET\n", "G ET", "G\0ET", "GET\t",
                                    "DELETE(1)", "G\u00e9T"])
def test_a_bad_method_never_reaches_the_wire(origin, client, method):
    result = fetch(origin.url + "/x", http_client=client, method=method)
    assert result.status_code == 599
    assert result.error.startswith("invalid HTTP method ") and "a method is a token" in result.error
    assert origin.records == []


@pytest.mark.parametrize("client", CLIENTS)
def test_token_methods_are_sent(origin, client):
    for method in ("PURGE", "M-SEARCH"):
        result = fetch(origin.url + "/x", http_client=client, method=method)
        assert json.loads(result.content)["method"] == method


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("options, text", [
    ({"headers": {"X-A": "a\r\nX-Injected: 1"}}, "invalid value for header X-A"),
    ({"headers": {"X-A": "a\nb"}}, "invalid value for header X-A"),
    ({"headers": {"X-A": "a\0b"}}, "invalid value for header X-A"),
    ({"headers": {"X-A\r\nX-Injected": "1"}}, "invalid header name"),
    ({"headers": {"X A": "1"}}, "invalid header name"),
    ({"headers": {"X:A": "1"}}, "invalid header name"),
    ({"user_agent": "ua\r\nX-Injected: 1"}, "invalid value for header User-Agent"),
    ({"cookies": {"a": "b\r\nX-Injected: 1"}}, "invalid value for header Cookie"),
    ({"etag": "\"e\"\r\nX-Injected: 1"}, "invalid value for header If-None-Match"),
])
def test_bad_header_fields_never_reach_the_wire(origin, client, options, text):
    result = fetch(origin.url + "/x", http_client=client, **options)
    assert result.status_code == 599 and result.error.startswith(text), result.error
    assert origin.records == []


def test_a_tab_in_a_header_value_is_allowed(origin):
    result = fetch(origin.url + "/x", headers={"X-A": "a\tb"})
    assert json.loads(result.content)["headers"]["X-A"] == "a\tb"
