"""A cookie jar per task, kept by :mod:`http.cookiejar` across the redirects the fetcher follows.

The task's cookies (``Fetch.cookies`` and a ``Cookie`` header, parsed with
:class:`http.cookies.SimpleCookie`) seed the jar as cookies of the first URL's origin
(scheme, host and port), so they are sent on every hop to that origin but not to another
host (a subdomain included), port or scheme a redirect points at. Each response's
``Set-Cookie`` headers are added with the stdlib's usual domain, path, expiry and secure
rules. A task that starts without cookies and never gets one costs nothing: the jar is only
made when needed.
"""

from __future__ import annotations

import logging
import urllib.request
from http.cookiejar import Cookie, CookieJar, DefaultCookiePolicy, eff_request_host
from http.cookies import CookieError, SimpleCookie

from .request import url_origin

logger = logging.getLogger(__name__)

_ORIGIN = "spiderflow-origin"   # the nonstandard attribute that binds a task's cookie to its origin


def _origin_key(url: str) -> str:
    scheme, host, port = url_origin(url)
    return f"{scheme}://{host}:{port}"


class _Policy(DefaultCookiePolicy):
    """The stdlib's rules, and a task's own cookies only for the origin they were given for."""

    def return_ok(self, cookie: Cookie, request: urllib.request.Request) -> bool:
        origin = cookie.get_nonstandard_attr(_ORIGIN)
        if origin is not None and origin != _origin_key(request.full_url):
            return False
        return super().return_ok(cookie, request)


class _Response:
    """The part of a urllib response that CookieJar.extract_cookies reads."""

    __slots__ = ("_lines",)

    def __init__(self, lines: list[tuple[str, str]]):
        self._lines = lines

    def info(self) -> _Response:
        return self

    def get_all(self, name: str, default: list[str] | None = None) -> list[str] | None:
        name = name.lower()
        return [value for key, value in self._lines if key.lower() == name] or default


def parse_cookie_header(header: str) -> dict[str, str]:
    """``"a=1; b=2"`` → ``{"a": "1", "b": "2"}`` (values as sent)."""
    jar = SimpleCookie()
    try:
        jar.load(header)
    except CookieError as exc:
        logger.debug("ignoring malformed Cookie header %r: %s", header, exc)
    return {name: morsel.coded_value for name, morsel in jar.items()}


def new_jar(url: str, cookies: dict[str, str] | None = None, cookie_header: str | None = None) -> CookieJar | None:
    """A jar seeded with the task's cookies for *url*'s host, or None when there are none."""
    seed = parse_cookie_header(cookie_header) if cookie_header else {}
    if cookies:
        seed.update({str(k): str(v) for k, v in cookies.items()})
    if not seed:
        return None
    jar = CookieJar(_Policy())
    _, host = eff_request_host(urllib.request.Request(url))
    origin = _origin_key(url)
    for name, value in seed.items():
        jar.set_cookie(Cookie(
            version=0, name=name, value=value, port=None, port_specified=False,
            domain=host, domain_specified=False, domain_initial_dot=False,
            path="/", path_specified=False, secure=False, expires=None, discard=True,
            comment=None, comment_url=None, rest={_ORIGIN: origin},
        ))
    return jar


def cookie_header(jar: CookieJar, url: str) -> str | None:
    """The Cookie header the jar sends to *url*, if any."""
    request = urllib.request.Request(url)
    jar.add_cookie_header(request)
    return request.unredirected_hdrs.get("Cookie")


def extract(jar: CookieJar | None, url: str, set_cookies: list[tuple[str, str]]) -> CookieJar | None:
    """Add a response's ``(Set-Cookie name, value)`` lines (for *url*) to *jar*, making one if needed."""
    if not set_cookies:
        return jar
    if jar is None:
        jar = CookieJar()
    jar.extract_cookies(_Response(set_cookies), urllib.request.Request(url))
    return jar


def jar_dict(jar: CookieJar | None) -> dict[str, str]:
    """The jar as ``{name: value}`` (for FetchResult.cookies)."""
    if jar is None:
        return {}
    return {cookie.name: cookie.value or "" for cookie in jar}


__all__ = ["cookie_header", "extract", "jar_dict", "new_jar", "parse_cookie_header"]
