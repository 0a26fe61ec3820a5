"""Fetcher: every failure becomes a FetchResult (599 or the right code) with an error text."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest
from fetcher_proxy import TLSServer, make_self_signed

from spiderflow.exceptions import ConfigError
from spiderflow.fetcher import Fetcher, transport
from spiderflow.message import Fetch, Task
from spiderflow.settings import Settings

SETTINGS = Settings(poolsize=10, timeout=10.0, connect_timeout=5.0)
CLIENTS = ["curl", "simple"]


def fetch(url: str, settings: Settings = SETTINGS, http_client: str = "auto", **options):
    fetcher = Fetcher(None, None, settings, http_client=http_client)

    async def go():
        try:
            return await fetcher.fetch(Task.create("test", url, fetch=Fetch(**options)))
        finally:
            fetcher.close()
    return asyncio.run(go())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    cert, key = make_self_signed(str(tmp_path_factory.mktemp("tls")))
    with TLSServer(cert, key) as server:
        yield server


@pytest.mark.parametrize("client", CLIENTS)
def test_dns_failure(client):
    started = time.monotonic()
    result = fetch("http://nonexistent.invalid/", http_client=client)
    assert result.status_code == 599 and not result.ok
    assert "nonexistent.invalid" in result.error or "resolve" in result.error.lower() or "known" in result.error
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("client", CLIENTS)
def test_connection_refused(client):
    result = fetch(f"http://127.0.0.1:{closed_port()}/", http_client=client)
    assert result.status_code == 599
    assert "connect" in result.error.lower() or "refused" in result.error.lower()


@pytest.mark.parametrize("client", CLIENTS)
def test_timeout(httpbin, client):
    started = time.monotonic()
    result = fetch(httpbin.url + "/delay/3", http_client=client, timeout=0.5)
    assert result.status_code == 599 and "time" in result.error.lower()
    assert 0.4 < time.monotonic() - started < 2.5


def test_slow_body_hits_the_timeout(httpbin):
    result = fetch(httpbin.url + "/hostile/slow-body?seconds=3", timeout=0.6)
    assert result.status_code == 599 and "timed out" in result.error


def test_connect_timeout():
    # a listener whose accept queue is full drops new SYNs: the connect hangs
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        time.sleep(0.05)
        try:
            started = time.monotonic()
            result = fetch(f"http://127.0.0.1:{port}/", connect_timeout=0.3, timeout=5)
            elapsed = time.monotonic() - started
        finally:
            for s in fillers:
                s.close()
    assert result.status_code == 599
    assert elapsed < 2.5, (elapsed, result.error)
    assert "time" in result.error.lower()


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("path", ["/hostile/close", "/hostile/garbage"])
def test_hostile_servers(httpbin, client, path):
    result = fetch(httpbin.url + path, http_client=client)
    assert result.status_code == 599 and result.error


@pytest.mark.parametrize("client", CLIENTS)
def test_bad_gzip(httpbin, client):
    result = fetch(httpbin.url + "/hostile/bad-gzip", http_client=client)
    assert result.status_code == 599 and "cannot decode the gzip response body" in result.error


@pytest.mark.parametrize("client", CLIENTS)
def test_tls_validation(tls_server, client):
    bad = fetch(tls_server.url + "/page", http_client=client)
    assert bad.status_code == 599 and "certificate" in bad.error.lower()
    good = fetch(tls_server.url + "/page", http_client=client, validate_cert=False)
    assert (good.status_code, good.content) == (200, b"secure /page")


# -- max body size ----------------------------------------------------------------------------

@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("length", ["1", "0"])  # with Content-Length, and chunked
def test_body_is_cut_at_max_body_size(httpbin, client, length):
    settings = SETTINGS.replace(max_body_size=100_000)
    result = fetch(f"{httpbin.url}/large?size=1000000&length={length}", settings=settings, http_client=client)
    assert result.status_code == 200 and result.truncated
    assert len(result.content) == 100_000
    assert "max_body_size" in result.error and "truncated" in result.error


def test_huge_body_is_never_loaded(httpbin):
    settings = SETTINGS.replace(max_body_size=2**20)
    started = time.monotonic()
    result = fetch(f"{httpbin.url}/large?size={2**40}&length=0", settings=settings)
    assert result.truncated and len(result.content) == 2**20
    assert time.monotonic() - started < 3  # the transfer was stopped, not drained


def test_body_at_the_limit_is_whole(httpbin):
    result = fetch(httpbin.url + "/bytes/5000", settings=SETTINGS.replace(max_body_size=5000))
    assert len(result.content) == 5000 and not result.truncated and result.error is None


def test_decoded_size_is_what_counts(httpbin):
    result = fetch(httpbin.url + "/gzip", settings=SETTINGS.replace(max_body_size=50))
    assert result.truncated and result.content == b'{"gzipped": true, "method": "GET", "url": "http://1'[:50]


# -- bad options --------------------------------------------------------------------------------

@pytest.mark.parametrize("url, options, text", [
    ("ftp://example.invalid/", {}, "unsupported URL scheme"),
    ("{httpbin}/get", {"proxy": "gopher://h:1"}, "unsupported proxy scheme"),
    ("{httpbin}/get", {"headers": {"X-Bad": "\u2603"}}, "Error"),
    ("{httpbin}/get", {"method": "GET", "data": "body"}, "Body must be None for GET"),
    ("{httpbin}/post", {"method": "POST", "data": "raw", "files": {"f": b"x"}}, "data must be a dict"),
])
def test_bad_options_become_599(httpbin, url, options, text):
    result = fetch(url.format(httpbin=httpbin.url), **options)
    assert result.status_code == 599 and text in result.error


# -- the simple-client fallback --------------------------------------------------------------------

def test_simple_client_basics(httpbin):
    fetcher = Fetcher(None, None, SETTINGS, http_client="simple")
    assert fetcher.use_curl is False
    result = fetch(httpbin.url + "/gzip", http_client="simple", params={"q": "1"})
    assert result.status_code == 200 and b'"gzipped": true' in result.content


def test_simple_client_refuses_proxies_clearly(httpbin):
    result = fetch(httpbin.url + "/get", http_client="simple", proxy="http://127.0.0.1:1")
    assert result.status_code == 599 and "proxies need pycurl" in result.error


def test_auto_falls_back_without_pycurl(monkeypatch, caplog):
    monkeypatch.setattr(transport, "CurlClient", None)
    monkeypatch.setattr(transport, "_warned_fallback", False)
    with caplog.at_level(logging.WARNING, logger="spiderflow.fetcher.transport"):
        fetcher = Fetcher(None, None, SETTINGS)
    assert fetcher.use_curl is False
    assert "pycurl is not importable" in caplog.text
    with pytest.raises(ConfigError, match="needs pycurl"):
        Fetcher(None, None, SETTINGS, http_client="curl")
    with pytest.raises(ConfigError, match="unknown http_client"):
        Fetcher(None, None, SETTINGS, http_client="urllib")
