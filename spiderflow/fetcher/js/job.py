"""What one JavaScript render does, resolved from a task before it reaches the browser; and whether it can run.

:func:`build_job` turns a task's fetch options (through :func:`~..request.build_spec`, so
they are checked as for an HTTP fetch) into a :class:`RenderJob`: the URL, the main
request's method, body and headers, the headers that also go to the page's own origin,
cookies, user agent, proxy, timeout, the ``js_*`` options and the limits. Nothing here
imports Playwright: :func:`js_unavailable` tells without importing it whether a render can run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from typing import Any

from ...message import FetchResult, Task
from ...settings import Settings
from ..cookies import parse_cookie_header
from ..request import FetchOptionError, RequestSpec, url_origin

#: Looked up on PATH when ``chromium_path`` is not set (Debian's package is ``chromium``).
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
RUN_AT = ("document-start", "document-end")
#: fetch_type values rendered by the browser (pyspider took "phantomjs" too).
JS_FETCH_TYPES = frozenset(("js", "phantomjs"))

#: The browser sends these itself: the task's values go through the context (User-Agent) or not at all.
_BROWSER_HEADERS = frozenset(("User-Agent", "Accept-Encoding", "Cookie", "Host", "Content-Length",
                              "Transfer-Encoding", "Connection"))
#: Headers of the main request only: the page's own requests to its origin get the task's others.
_MAIN_ONLY = frozenset(("If-None-Match", "If-Modified-Since", "Accept", "Content-Type", "Content-Encoding"))
_PROXY_SCHEMES = {"http": "http", "https": "https", "socks4": "socks4", "socks4a": "socks4",
                  "socks5": "socks5", "socks5h": "socks5"}


def find_chromium(path: str | None = None) -> str | None:
    """*path* if it is an executable, or (without *path*) the first of :data:`CHROMIUM_NAMES` on PATH."""
    if path:
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def js_unavailable(chromium_path: str | None = None) -> str | None:
    """Why a js fetch cannot run here (the text names the fix), or None when it can."""
    if importlib.util.find_spec("playwright") is None:
        return ("js fetch needs Playwright: pip install 'spiderflow[js]' (it drives the system's Chromium; "
                "never run `playwright install`)")
    if find_chromium(chromium_path) is None:
        where = f"at chromium_path {chromium_path!r}" if chromium_path else f"on PATH ({', '.join(CHROMIUM_NAMES)})"
        return (f"js fetch needs Chromium and found none {where}: install it (apt-get install chromium) "
                "or set chromium_path")
    return None


@dataclass(slots=True)
class RenderJob:
    """One render, as :mod:`.page` carries it out."""

    url: str
    orig_url: str
    method: str
    body: bytes | None
    main_headers: dict[str, str]       # on the main request (as well as the browser's own)
    origin_headers: dict[str, str]     # on the page's requests to the main request's origin
    origin: tuple[str, str, int | None]
    cookies: dict[str, str]
    user_agent: str
    proxy: dict[str, str] | None       # Playwright's proxy settings
    timeout: float
    validate_cert: bool
    max_body_size: int
    script: str | None
    run_at: str
    viewport: tuple[int, int]
    load_images: bool
    block_private: bool
    idle_wait: float

    def failed(self, status: int, error: str, url: str | None = None) -> FetchResult:
        return FetchResult(status, url or self.url, self.orig_url, error=error)

    @property
    def needs_route(self) -> bool:
        """Whether requests must pass through the route handler (else the browser loads freely)."""
        return (not self.load_images or self.block_private or bool(self.main_headers) or bool(self.origin_headers)
                or self.method != "GET" or self.body is not None)


def _proxy(spec: RequestSpec) -> dict[str, str] | None:
    proxy = spec.proxy
    if proxy is None:
        return None
    scheme = _PROXY_SCHEMES[proxy.scheme]
    if scheme.startswith("socks") and proxy.username is not None:
        raise FetchOptionError(f"js fetch: Chromium cannot log in to a SOCKS proxy ({proxy.host}:{proxy.port})")
    host = f"[{proxy.hostname}]" if ":" in proxy.hostname else proxy.hostname
    # "<-loopback>": loopback targets go through the proxy too, as with an HTTP fetch
    out = {"server": f"{scheme}://{host}:{proxy.port}", "bypass": "<-loopback>"}
    if proxy.username is not None:
        out["username"] = proxy.username
        out["password"] = proxy.password or ""
    return out


def _positive_int(value: Any, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16384:
        raise FetchOptionError(f"{name} must be a whole number of pixels in [1, 16384], not {value!r}")
    return value


def build_job(task: Task, spec: RequestSpec, settings: Settings) -> RenderJob:
    """The render of *task*, whose request *spec* is built already; FetchOptionError for unusable js options."""
    fetch = task.fetch
    run_at = fetch.js_run_at or "document-end"
    if run_at not in RUN_AT:
        raise FetchOptionError(f"js_run_at must be 'document-start' or 'document-end', not {run_at!r}")
    script = fetch.js_script if fetch.js_script and fetch.js_script.strip() else None
    viewport = (_positive_int(fetch.js_viewport_width, "js_viewport_width", settings.js_viewport_width),
                _positive_int(fetch.js_viewport_height, "js_viewport_height", settings.js_viewport_height))
    main = {name: value for name, value in spec.headers.items() if name not in _BROWSER_HEADERS}
    cookies = parse_cookie_header(spec.cookie_header) if spec.cookie_header else {}
    cookies.update({str(k): str(v) for k, v in (fetch.cookies or {}).items()})
    return RenderJob(
        url=spec.url, orig_url=task.url, method=spec.method, body=spec.body,
        main_headers=main, origin_headers={k: v for k, v in main.items() if k not in _MAIN_ONLY},
        origin=url_origin(spec.url), cookies=cookies, user_agent=spec.user_agent, proxy=_proxy(spec),
        timeout=spec.timeout, validate_cert=spec.validate_cert, max_body_size=spec.max_body_size,
        script=script, run_at=run_at, viewport=viewport, load_images=bool(fetch.load_images),
        block_private=settings.block_private_addresses, idle_wait=max(0.0, settings.js_idle_wait),
    )


__all__ = ["CHROMIUM_NAMES", "JS_FETCH_TYPES", "RUN_AT", "RenderJob", "build_job", "find_chromium", "js_unavailable"]
