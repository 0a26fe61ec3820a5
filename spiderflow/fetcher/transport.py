"""The HTTP side of the fetcher: one HTTP client, one request chain per task.

A :class:`Transport` owns the fetcher's HTTP client for one event loop: libcurl driven
directly (:class:`~.curl.CurlClient`) when pycurl imports, else tornado's
``SimpleAsyncHTTPClient`` with a warning.
:meth:`Transport.fetch` sends a :class:`~.request.RequestSpec` and follows redirects itself
(libcurl's FOLLOWLOCATION stays off) so that every hop's Set-Cookie lands in the task's
cookie jar and robots.txt is checked for every hop; with ``block_private_addresses`` every
hop's address is checked too (:mod:`.addresses`). Every failure becomes a FetchResult:
transport errors (DNS, refused, timeout, TLS, a proxy that fails, a blocked address) are
status 599 with the client's error text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from http.cookiejar import CookieJar
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.simple_httpclient import HTTPStreamClosedError, SimpleAsyncHTTPClient

from ..exceptions import ConfigError
from ..message import FetchResult
from .addresses import BlockedAddress, BlockingResolver, ConnectGuard, check_host
from .body import ACCEPT_ENCODING, BodyLimitReached, ResponseSink
from .cookies import cookie_header, extract, jar_dict
from .request import REDIRECT_CODES, FetchOptionError, RequestSpec, redirect_target, url_origin
from .robots import RobotsCache

try:
    from .curl import CurlClient, CurlError
except ImportError:  # pycurl is missing
    CurlClient = CurlError = None

logger = logging.getLogger(__name__)

#: robots.txt is read up to this size (Google reads 500 KiB) and within this many seconds.
ROBOTS_MAX_BYTES = 512 * 1024
ROBOTS_TIMEOUT = 30.0

_warned_fallback = False


def resolve_client_kind(kind: str) -> bool:
    """``"auto"``, ``"curl"`` or ``"simple"`` → whether to use curl (auto falls back with a warning)."""
    global _warned_fallback
    if kind not in ("auto", "curl", "simple"):
        raise ConfigError(f"unknown http_client {kind!r}; use 'auto', 'curl' or 'simple'")
    if kind == "simple":
        return False
    if CurlClient is not None:
        return True
    if kind == "curl":
        raise ConfigError('http_client="curl" needs pycurl; install it with: pip install pycurl')
    if not _warned_fallback:
        _warned_fallback = True
        logger.warning("pycurl is not importable: the fetcher falls back to tornado's simple HTTP "
                       "client (slower, and proxies are not supported)")
    return False


def _not_our_abort(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], BodyLimitReached))


def make_client(use_curl: bool, max_clients: int, resolver: BlockingResolver | None = None
                ) -> CurlClient | AsyncHTTPClient:
    """A new client of our own on the running loop (tornado's: ``force_instance``).

    *resolver* is the simple client's (curl checks addresses per request, see :mod:`.addresses`).
    """
    if use_curl:
        return CurlClient(max_clients)
    # The simple client can only be stopped mid-body by an exception from the streaming
    # callback, which tornado logs as uncaught: keep our deliberate aborts out of the log.
    app_log = logging.getLogger("tornado.application")
    if _not_our_abort not in app_log.filters:
        app_log.addFilter(_not_our_abort)
    # the body limit is ours (ResponseSink); tornado's own would refuse a big body outright
    return SimpleAsyncHTTPClient(force_instance=True, max_clients=max_clients, max_body_size=1 << 62,
                                 resolver=resolver)


def _error_text(error: BaseException | None) -> str:
    if error is None:
        return "no HTTP response"
    if isinstance(error, BlockedAddress):
        return str(error)
    if CurlError is not None and isinstance(error, CurlError):
        return str(error)
    if isinstance(error, HTTPStreamClosedError):
        return "the connection closed before a complete response"
    if isinstance(error, HTTPClientError):  # CurlError, HTTPTimeoutError, HTTPStreamClosedError
        errno = getattr(error, "errno", None)
        return f"{error.message} (curl error {errno})" if errno is not None else str(error.message)
    return f"{type(error).__name__}: {error}"


class Transport:
    """One HTTP client on one loop; :meth:`fetch` runs a task's request chain.

    With *block_private*, no request reaches an address that is not public (see :mod:`.addresses`).
    """

    def __init__(self, use_curl: bool, max_clients: int, robots: RobotsCache, block_private: bool = False):
        self.use_curl = use_curl
        self.block_private = block_private
        self.loop = asyncio.get_running_loop()
        self._resolver = BlockingResolver() if block_private and not use_curl else None
        self.client = make_client(use_curl, max_clients, self._resolver)
        self.robots = robots

    def close(self) -> None:
        self.client.close()
        if self._resolver is not None:
            self._resolver.close()

    async def fetch(self, spec: RequestSpec, jar: CookieJar | None, orig_url: str) -> FetchResult:
        """Send *spec*, following redirects; never raises for HTTP or network failures."""
        def result(status: int, error: str | None, headers: dict[str, str] | None = None, **extra) -> FetchResult:
            return FetchResult(status, spec.url, orig_url, headers=headers or {}, cookies=jar_dict(jar),
                               error=error, **extra)

        if spec.proxy is not None and not self.use_curl:
            return result(599, f"cannot use proxy {spec.proxy.host}:{spec.proxy.port}: proxies need pycurl "
                               "(the fetcher runs on tornado's simple HTTP client)")
        deadline = time.monotonic() + spec.timeout
        hops = 0
        while True:
            if spec.robots_txt and not await self._robots_allow(spec):
                return result(403, f"robots.txt disallows {spec.url} for user agent {spec.user_agent!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return result(599, f"timeout: {spec.timeout:g}s spent after {hops} redirect(s)")
            if jar is not None:
                header = cookie_header(jar, spec.url)
                if header:
                    spec.headers["Cookie"] = header
                else:
                    spec.headers.pop("Cookie", None)
            sink, error = await self._send(spec, remaining)
            headers, status = sink.headers, sink.status
            if sink.set_cookies:
                jar = extract(jar, spec.url, sink.set_cookies)
            if error is None and status in REDIRECT_CODES and spec.allow_redirects and "Location" in headers:
                location = headers["Location"]
                if hops >= spec.max_redirects:
                    return result(599, f"too many redirects: more than {spec.max_redirects} "
                                       f"(the last one to {location!r})", headers)
                try:
                    spec = redirect_target(spec, status, location)
                except FetchOptionError as exc:
                    return result(599, str(exc), headers)
                hops += 1
                continue
            content = sink.body() if error is None else b""
            if error is not None or sink.error:  # sink.error: the decoder's final flush failed
                return result(599, error or sink.error, headers)
            if sink.truncated:
                return result(status, f"body larger than max_body_size ({spec.max_body_size} bytes): truncated",
                              headers, content=content, truncated=True)
            return result(status, None, headers, content=content)

    async def _send(self, spec: RequestSpec, timeout: float) -> tuple[ResponseSink, str | None]:
        """One request (no redirects); returns the sink and a transport error text (or None).

        A body cut at max_body_size is not an error here: the sink says ``truncated``.
        """
        proxy = spec.proxy
        sink = ResponseSink(spec.max_body_size, spec.use_gzip, no_proxy=proxy is None,
                            proxy_insecure=proxy is not None and proxy.scheme == "https" and not spec.validate_cert)
        connect_timeout = min(spec.connect_timeout, timeout)
        guard, blocked = await self._guard(spec, connect_timeout) if self.block_private else (None, None)
        if blocked:
            return sink, blocked
        prepare = sink.prepare_curl
        if guard is not None:
            def prepare(curl: Any) -> None:
                sink.prepare_curl(curl)
                guard.install(curl)
        try:
            if self.use_curl:
                await self.client.fetch(spec.url, spec.method, spec.headers, spec.body, connect_timeout, timeout,
                                        spec.validate_cert, proxy, prepare)
                response = None
            else:
                # (tornado's fetch() copies the headers into its own HTTPHeaders: spec.headers stays as is)
                request = HTTPRequest(
                    spec.url, method=spec.method, headers=spec.headers, body=spec.body,
                    connect_timeout=connect_timeout, request_timeout=timeout,
                    follow_redirects=False, decompress_response=False, validate_cert=spec.validate_cert,
                    allow_nonstandard_methods=True, header_callback=sink.header_line,
                    streaming_callback=sink.simple_write,
                )
                response = await self.client.fetch(request, raise_error=False)
        except Exception as exc:
            # transport failures raise even with raise_error=False; so does our own abort
            # (a body cut at the limit, or one that does not decode)
            if sink.truncated and sink.status:
                return sink, None
            blocked = guard.error() if guard is not None else None
            return sink, blocked or sink.error or _error_text(exc)
        finally:
            if guard is not None:
                guard.close()
        if not sink.status:  # pragma: no cover - a response without a status line
            return sink, _error_text(response.error if response is not None else None)
        return sink, None

    async def _guard(self, spec: RequestSpec, timeout: float) -> tuple[ConnectGuard | None, str | None]:
        """block_private_addresses for curl: a guard for a direct connection, the target's check behind a proxy.

        (The simple client checks in its resolver, and has no proxies.)
        """
        if not self.use_curl:
            return None, None
        _, host, port = url_origin(spec.url)
        if spec.proxy is None:
            return ConnectGuard(host), None
        return None, await check_host(host, port or 0, timeout)

    async def _robots_allow(self, spec: RequestSpec) -> bool:
        async def fetch_robots(robots_url: str) -> FetchResult:
            robots_spec = RequestSpec(
                url=robots_url, method="GET",
                headers={"User-Agent": spec.user_agent, "Accept-Encoding": ACCEPT_ENCODING},
                body=None, cookie_header=None, proxy=spec.proxy,
                timeout=min(spec.timeout, ROBOTS_TIMEOUT), connect_timeout=spec.connect_timeout,
                validate_cert=spec.validate_cert, use_gzip=True, allow_redirects=True, max_redirects=5,
                max_body_size=ROBOTS_MAX_BYTES, robots_txt=False, user_agent=spec.user_agent,
            )
            return await self.fetch(robots_spec, None, robots_url)

        return await self.robots.allowed(spec.url, spec.user_agent, fetch_robots)


__all__ = ["Transport", "make_client", "resolve_client_kind"]
