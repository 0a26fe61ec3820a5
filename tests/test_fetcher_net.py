"""Fetcher: robots.txt and proxies (HTTP forwarding, CONNECT, SOCKS5, credentials, bypass)."""

from __future__ import annotations

import asyncio
import json

import pytest
from fetcher_proxy import VIA_HEADER, ProxyServer, TLSServer, make_self_signed, server_context

from spiderflow.fetcher import Fetcher, RobotsCache
from spiderflow.message import Fetch, FetchResult, Task
from spiderflow.settings import Settings

SETTINGS = Settings(poolsize=10, timeout=10.0, connect_timeout=5.0)


def task(url: str, **options) -> Task:
    return Task.create("test", url, fetch=Fetch(**options))


def fetch_all(tasks: list[Task], settings: Settings = SETTINGS, fetcher: Fetcher | None = None):
    fetcher = fetcher or Fetcher(None, None, settings)

    async def go():
        try:
            return await asyncio.gather(*(fetcher.fetch(t) for t in tasks))
        finally:
            fetcher.close()
    return asyncio.run(go())


def fetch(url: str, settings: Settings = SETTINGS, **options):
    return fetch_all([task(url, **options)], settings)[0]


@pytest.fixture
def proxy():
    with ProxyServer() as server:
        yield server


@pytest.fixture
def auth_proxy():
    with ProxyServer(username="user", password="p@ss word") as server:
        yield server


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_self_signed(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="module")
def tls_server(certificate):
    with TLSServer(*certificate) as server:
        yield server


# -- robots.txt ------------------------------------------------------------------------------

def test_robots_disallowed_url_gets_403(httpbin):
    result = fetch(httpbin.url + "/private/secret", robots_txt=True)
    assert result.status_code == 403 and not result.ok
    assert "robots.txt disallows" in result.error and SETTINGS.user_agent in result.error
    assert result.content == b""


def test_robots_allowed_and_off(httpbin):
    assert fetch(httpbin.url + "/html", robots_txt=True).status_code == 200
    assert fetch(httpbin.url + "/private/secret").status_code == 200  # robots_txt=False: not asked


def test_robots_checked_on_every_redirect_hop(httpbin):
    result = fetch(f"{httpbin.url}/redirect-to?url=/private/x", robots_txt=True)
    assert result.status_code == 403 and result.url == httpbin.url + "/private/x"


def test_robots_fetched_once_for_concurrent_tasks(httpbin, proxy):
    tasks = [task(f"{httpbin.url}/anything/{i}", robots_txt=True, proxy=proxy.url) for i in range(8)]
    tasks.append(task(httpbin.url + "/private/1", robots_txt=True, proxy=proxy.url))
    fetcher = Fetcher(None, None, SETTINGS)
    results = fetch_all(tasks, fetcher=fetcher)
    assert [r.status_code for r in results] == [200] * 8 + [403]
    robots = [r for r in proxy.records if r.target.endswith("/robots.txt")]
    assert len(robots) == 1 and len(fetcher.robots) == 1
    # cached: a second round asks nothing
    fetch_all(tasks[:2], fetcher=fetcher)
    assert len([r for r in proxy.records if r.target.endswith("/robots.txt")]) == 1


def test_unreachable_robots_allows(tmp_path):
    # nothing listens: robots.txt cannot be fetched (allowed), then the page fails on its own
    result = fetch("http://127.0.0.1:9/page", robots_txt=True, connect_timeout=1)
    assert result.status_code == 599 and "robots" not in result.error


def run_cache(coro):
    return asyncio.run(coro)


class FakeRobots:
    """A robots.txt source for RobotsCache unit tests, counting its fetches."""

    def __init__(self, status: int = 200, body: bytes = b"User-agent: *\nDisallow: /private\n", delay: float = 0):
        self.status, self.body, self.delay, self.calls = status, body, delay, []

    async def __call__(self, url: str) -> FetchResult:
        self.calls.append(url)
        await asyncio.sleep(self.delay)
        return FetchResult(self.status, url, content=self.body)


def test_robots_cache_shares_one_fetch_and_expires():
    now = [1000.0]
    cache = RobotsCache(ttl=60, clock=lambda: now[0])
    source = FakeRobots(delay=0.05)

    async def check(path):
        return await cache.allowed(f"http://Example.com:80{path}", "bot/1.0", source)

    async def burst():
        return await asyncio.gather(*(check(p) for p in ["/a", "/b", "/private/c"] * 5))

    assert run_cache(burst()) == [True, True, False] * 5
    assert source.calls == ["http://example.com:80/robots.txt"]
    now[0] += 59
    assert run_cache(check("/private")) is False and len(source.calls) == 1
    now[0] += 2
    assert run_cache(check("/a")) is True and len(source.calls) == 2


@pytest.mark.parametrize("status, allowed, ttl", [(404, True, 60), (403, True, 60), (500, True, 5), (599, True, 5)])
def test_robots_cache_statuses(status, allowed, ttl):
    now = [0.0]
    cache = RobotsCache(ttl=60, error_ttl=5, clock=lambda: now[0])
    source = FakeRobots(status=status)
    assert run_cache(cache.allowed("http://h/private/x", "bot", source)) is allowed
    now[0] += ttl - 0.5
    run_cache(cache.allowed("http://h/x", "bot", source))
    assert len(source.calls) == 1
    now[0] += 1
    run_cache(cache.allowed("http://h/x", "bot", source))
    assert len(source.calls) == 2


def test_robots_cache_is_bounded():
    now = [0.0]
    cache = RobotsCache(ttl=60, max_origins=3, clock=lambda: now[0])
    source = FakeRobots(status=404)
    for host in ("a", "b", "c", "d"):
        run_cache(cache.allowed(f"http://{host}/", "bot", source))
        now[0] += 1
    assert len(cache) == 3
    run_cache(cache.allowed("http://a/", "bot", source))  # "a" was the oldest: forgotten, asked again
    assert len(source.calls) == 5


def test_robots_agent_specific_rules():
    body = b"User-agent: spiderflow\nDisallow: /\n\nUser-agent: *\nAllow: /\n"
    cache = RobotsCache(ttl=60)
    source = FakeRobots(body=body)
    assert run_cache(cache.allowed("http://h/x", "Mozilla/5.0 (compatible; spiderflow/0.1)", source)) is False
    assert run_cache(cache.allowed("http://h/x", "otherbot", source)) is True


# -- proxies ----------------------------------------------------------------------------------

def test_http_proxy_forwards(httpbin, proxy):
    result = fetch(httpbin.url + "/headers", proxy=proxy.url)
    assert json.loads(result.content)["headers"][VIA_HEADER] == "fetcher_proxy"
    assert [(r.kind, r.target, r.authorized) for r in proxy.records] == [("http", httpbin.url + "/headers", True)]


def test_http_proxy_with_credentials(httpbin, auth_proxy):
    good = f"http://user:p%40ss%20word@127.0.0.1:{auth_proxy.port}"
    result = fetch(httpbin.url + "/headers", proxy=good)
    assert result.status_code == 200
    headers = json.loads(result.content)["headers"]
    assert headers[VIA_HEADER] == "fetcher_proxy" and "Proxy-Authorization" not in headers
    denied = fetch(httpbin.url + "/headers", proxy=f"http://user:wrong@127.0.0.1:{auth_proxy.port}")
    assert denied.status_code == 407
    anonymous = fetch(httpbin.url + "/headers", proxy=auth_proxy.url)
    assert anonymous.status_code == 407
    assert [r.authorized for r in auth_proxy.records] == [True, False, False]


def test_connect_proxy_for_https(tls_server, auth_proxy):
    proxy_url = f"http://user:p%40ss%20word@127.0.0.1:{auth_proxy.port}"
    result = fetch(tls_server.url + "/through", proxy=proxy_url, validate_cert=False)
    assert (result.status_code, result.content) == (200, b"secure /through")
    assert [(r.kind, r.target) for r in auth_proxy.records] == [("connect", f"127.0.0.1:{tls_server.port}")]


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
def test_socks5_proxy_with_credentials(httpbin, auth_proxy, scheme):
    result = fetch(httpbin.url + "/get", proxy=f"{scheme}://user:p%40ss%20word@127.0.0.1:{auth_proxy.port}")
    assert result.status_code == 200, result.error
    assert [(r.kind, r.authorized) for r in auth_proxy.records] == [("socks5", True)]
    denied = fetch(httpbin.url + "/get", proxy=f"{scheme}://user:bad@127.0.0.1:{auth_proxy.port}")
    assert denied.status_code == 599 and denied.error


def test_https_proxy(httpbin, certificate):
    with ProxyServer(username="u", password="p", ssl_context=server_context(*certificate)) as proxy:
        url = f"https://u:p@127.0.0.1:{proxy.port}"
        refused = fetch(httpbin.url + "/headers", proxy=url)  # our proxy's certificate is self-signed
        assert refused.status_code == 599 and "certificate" in refused.error.lower()
        result = fetch(httpbin.url + "/headers", proxy=url, validate_cert=False)
        assert result.status_code == 200, result.error
        assert VIA_HEADER in json.loads(result.content)["headers"]
        assert [(r.kind, r.authorized) for r in proxy.records] == [("http", True)]


def test_default_proxy_and_per_task_bypass(httpbin, proxy):
    settings = SETTINGS.replace(proxy=proxy.url)
    via = fetch(httpbin.url + "/headers", settings=settings)
    assert VIA_HEADER in json.loads(via.content)["headers"]
    direct = fetch(httpbin.url + "/headers", settings=settings, proxy=False)
    assert VIA_HEADER not in json.loads(direct.content)["headers"]
    other = ProxyServer().start()
    try:
        fetch(httpbin.url + "/headers", settings=settings, proxy=other.url)
        assert len(other.records) == 1
    finally:
        other.stop()
    assert len(proxy.records) == 1


def test_environment_proxy_is_ignored(httpbin, proxy, monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy.url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    result = fetch(httpbin.url + "/headers")
    assert result.status_code == 200 and VIA_HEADER not in json.loads(result.content)["headers"]
    assert proxy.records == []


def test_unreachable_proxy_fails(httpbin):
    result = fetch(httpbin.url + "/get", proxy="http://127.0.0.1:9")
    assert result.status_code == 599 and result.error
