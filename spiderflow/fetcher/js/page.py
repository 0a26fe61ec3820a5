"""One render in one fresh browser context: load the page, run ``js_script``, take the DOM.

:func:`render` runs on the renderer's loop (see :mod:`.pool`). The context gets the task's
viewport, user agent, proxy and cookies; its requests pass a :class:`_Guard` (the route
handler) that aborts image requests unless ``load_images``, puts the task's method, body and
headers on the main request (and its headers but the conditional and body ones on the
page's requests to the same origin), and with ``block_private_addresses`` aborts every
request whose host is, or resolves to, an address that is not public. ``document-start``
scripts are init scripts, ``document-end`` ones run after the load event, as pyspider's;
then the page has up to ``js_idle_wait`` seconds to go network-idle (pyspider waited a
second). The content is the DOM serialized as UTF-8 HTML (the Content-Type says so) for an
HTML page, the body as received for anything else, capped at ``max_body_size``.

Limits of ``block_private_addresses`` here: Chromium resolves the name again when it
connects (a DNS-rebinding name can pass the check); redirect hops are not routed, so a hop
to a blocked address is sent and the fetch then fails without its content; requests of
workers may bypass the route (service workers are blocked outright).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
from typing import Any
from urllib.parse import urlsplit

from ...message import FetchResult
from ..addresses import check_host
from ..request import normalize_name, url_origin
from .job import RenderJob

logger = logging.getLogger(__name__)

#: The page's DOM is served as this: it was serialized as UTF-8 whatever the page's charset.
_HTML_TYPES = ("text/html", "application/xhtml+xml", "")
_SCHEMES_CHECKED = ("http", "https", "ws", "wss")
_MARK = "__spiderflow_js"     # where a document-start script leaves its value
_CALL = re.compile(r"^\w+\.\w+: ")


class Crashed(Exception):
    """The browser died during a render (the pool restarts it and retries)."""


def _first_line(exc: BaseException) -> str:
    """A Playwright error's first line, without the API call it names (``Page.goto: ``)."""
    text = (getattr(exc, "message", None) or str(exc)).strip()
    return _CALL.sub("", text.splitlines()[0]) if text else type(exc).__name__


def start_script(source: str) -> str:
    """An init script that runs *source* (a function, or an expression) in the top frame and keeps its value."""
    return (f"(() => {{ if (window !== window.top) return; const mark = {{done: false, error: null}};"
            f" Object.defineProperty(window, {json.dumps(_MARK)}, {{value: mark}});"
            f" try {{ const f = ({source}\n); mark.value = typeof f === 'function' ? f() : f; mark.done = true; }}"
            f" catch (e) {{ mark.error = String(e && e.stack || e); }} }})();")


def plain(value: Any, depth: int = 0) -> Any:
    """*value* (as Playwright gives a JS value) as data a message can carry; anything else as its text."""
    if value is None or isinstance(value, (bool, float, str)):
        return value
    if isinstance(value, int):
        return value if -(1 << 63) <= value < (1 << 64) else str(value)
    if depth >= 32:
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return str(value)


def _headers(pairs: list[dict[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name = normalize_name(pair["name"])
        out[name] = pair["value"] if name not in out else f"{out[name]}, {pair['value']}"
    return out


def _utf8(content_type: str) -> str:
    """*content_type* with its charset made utf-8."""
    params = [p for p in content_type.split(";")[1:] if p.strip() and not p.strip().lower().startswith("charset=")]
    return ";".join([content_type.split(";")[0].strip() or "text/html", *params, " charset=utf-8"])


class _Guard:
    """The route handler of one render (see the module docstring)."""

    def __init__(self, job: RenderJob):
        self.job = job
        self.first = True
        self.blocked: str | None = None          # why the main request (or a redirect hop) was refused
        self._verdicts: dict[tuple[str, int], asyncio.Future] = {}
        self.hop_checks: list[asyncio.Task] = []
        self.page: Any = None

    async def check(self, url: str) -> str | None:
        """The refusal text for *url* under block_private_addresses, or None."""
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES_CHECKED or not parts.hostname:
            return None
        _, host, port = url_origin(url)
        key = (host, port or 0)
        verdict = self._verdicts.get(key)
        if verdict is None:   # once per host and port of a render
            verdict = asyncio.ensure_future(check_host(host, port or 0, min(10.0, self.job.timeout)))
            self._verdicts[key] = verdict
        return await asyncio.shield(verdict)

    async def route(self, route: Any, request: Any) -> None:
        from playwright.async_api import Error

        job = self.job
        first = self.first and request.is_navigation_request()   # a fresh page's first request: goto's
        self.first = False
        try:
            if job.block_private:
                blocked = await self.check(request.url)
                if blocked:
                    if first:
                        self.blocked = blocked
                    logger.debug("js: %s", blocked)
                    await route.abort("blockedbyclient")
                    return
            if not job.load_images and request.resource_type == "image":
                await route.abort("blockedbyclient")
                return
            if first:
                overrides: dict[str, Any] = {}
                if job.method != "GET":
                    overrides["method"] = job.method
                if job.body is not None:
                    overrides["post_data"] = job.body
                if job.main_headers:
                    overrides["headers"] = self._merged(await request.all_headers(), job.main_headers)
                await route.continue_(**overrides)
            elif job.origin_headers and url_origin(request.url) == job.origin:
                await route.continue_(headers=self._merged(await request.all_headers(), job.origin_headers))
            else:
                await route.continue_()
        except Error:   # the page or its context closed meanwhile
            pass

    def _merged(self, sent: dict[str, str], ours: dict[str, str]) -> dict[str, str]:
        """The browser's headers with ours in place of its own of the same names."""
        names = {name.lower() for name in ours}
        out = {k: v for k, v in sent.items() if k.lower() not in names}
        out.update(ours)
        return out

    def on_request(self, request: Any) -> None:
        """block_private_addresses on redirect hops, which the route does not see."""
        if request.redirected_from is not None:
            self.hop_checks.append(asyncio.ensure_future(self._check_hop(request.url)))

    async def _check_hop(self, url: str) -> None:
        from playwright.async_api import Error

        blocked = await self.check(url)
        if blocked and self.blocked is None:
            self.blocked = f"{blocked} (a redirect hop)"
            try:   # stop what came from there: its script, and any later content
                await self.page.close()
            except Error:
                pass

    async def web_socket(self, ws: Any) -> None:
        blocked = await self.check(ws.url)
        if blocked:
            logger.debug("js: %s", blocked)
            await ws.close(code=1008, reason="blocked")
        else:
            ws.connect_to_server()


async def render(browser: Any, job: RenderJob) -> FetchResult:
    """Render *job* in a new context of *browser*; raises :class:`Crashed` when the browser dies meanwhile.

    The render races the browser's ``disconnected`` event: a call to a dead browser may never
    answer. The task's timeout bounds the whole of it, the context's opening included.
    """
    from playwright.async_api import Error

    dead = asyncio.get_running_loop().create_future()

    def disconnected(_: Any = None) -> None:
        if not dead.done():
            dead.set_result(None)

    browser.on("disconnected", disconnected)
    if not browser.is_connected():
        disconnected()
    opened: list[Any] = []
    work = asyncio.ensure_future(_open_and_load(browser, job, opened))
    try:
        done, _ = await asyncio.wait((work, dead), timeout=job.timeout, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            try:
                return work.result()
            except Error as exc:
                if not browser.is_connected():
                    raise Crashed(_first_line(exc)) from exc
                return job.failed(599, f"js: {_first_line(exc)}")
        if dead in done:
            raise Crashed("the browser disconnected")
        return job.failed(599, f"timeout: the page did not render in {job.timeout:g}s")
    finally:
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        browser.remove_listener("disconnected", disconnected)
        if opened and browser.is_connected():
            try:
                await asyncio.wait_for(opened[0].close(), 10)
            except (Error, asyncio.TimeoutError) as exc:
                if browser.is_connected():
                    logger.warning("js: a browser context did not close (%s)", _first_line(exc) or "timeout")


async def _open_and_load(browser: Any, job: RenderJob, opened: list[Any]) -> FetchResult:
    width, height = job.viewport
    context = await browser.new_context(
        viewport={"width": width, "height": height}, user_agent=job.user_agent, proxy=job.proxy,
        ignore_https_errors=not job.validate_cert, service_workers="block", accept_downloads=False)
    opened.append(context)
    return await _load(context, job)


async def _load(context: Any, job: RenderJob) -> FetchResult:
    from playwright.async_api import Error

    guard = _Guard(job)
    context.set_default_timeout(0)          # the task's timeout bounds the render (see render())
    if job.cookies:
        host = urlsplit(job.url).hostname or ""
        await context.add_cookies([{"name": k, "value": v, "domain": host, "path": "/"}
                                   for k, v in job.cookies.items()])
    if job.needs_route:
        await context.route("**/*", guard.route)
    if job.block_private and hasattr(context, "route_web_socket"):   # Playwright >= 1.48
        await context.route_web_socket("**", guard.web_socket)
    if job.script and job.run_at == "document-start":
        await context.add_init_script(script=start_script(job.script))
    page = guard.page = await context.new_page()
    if job.block_private:
        page.on("request", guard.on_request)
    try:
        return await _loaded(context, page, guard)
    except Error:
        if guard.blocked:   # a blocked main request or redirect hop: the page was stopped
            return job.failed(599, guard.blocked)
        raise


async def _loaded(context: Any, page: Any, guard: _Guard) -> FetchResult:
    from playwright.async_api import Error
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    job = guard.job
    response = await page.goto(job.url, wait_until="load")
    result, js_error = None, None
    if job.script:
        try:
            if job.run_at == "document-end":
                result = await page.evaluate(job.script)
            else:
                mark = await page.evaluate(f"() => window[{json.dumps(_MARK)}] || null")
                if mark is None:
                    js_error = "it did not run at document-start (a syntax error?)"
                elif mark.get("error"):
                    js_error = mark["error"]
                else:
                    result = await page.evaluate(f"() => window[{json.dumps(_MARK)}].value")
        except Error as exc:
            if not context.browser or not context.browser.is_connected() or guard.blocked:
                raise
            js_error = _first_line(exc)
    if job.idle_wait > 0:
        try:
            await page.wait_for_load_state("networkidle", timeout=job.idle_wait * 1000)
        except PlaywrightTimeout:
            pass
    if guard.hop_checks:
        await asyncio.gather(*guard.hop_checks)
    if guard.blocked:
        return job.failed(599, guard.blocked, page.url)
    return await _result(context, page, response, job, plain(result), js_error)


async def _result(context: Any, page: Any, response: Any, job: RenderJob, js_result: Any,
                  js_error: str | None) -> FetchResult:
    from playwright.async_api import Error

    status = response.status if response is not None else 200
    headers = _headers(await response.headers_array()) if response is not None else {}
    content_type = headers.get("Content-Type", "")
    if status == 304:
        content = b""
    elif content_type.split(";")[0].strip().lower() in _HTML_TYPES:
        try:
            html = await page.content()
        except Error:   # a navigation started by the page's script was under way: take the page it led to
            await page.wait_for_load_state("load")
            html = await page.content()
        content = html.encode("utf-8", "replace")
        headers["Content-Type"] = _utf8(content_type)
    else:
        content = await response.body()
    errors = []
    if js_error:
        errors.append(f"js_script failed: {js_error}")
    truncated = len(content) > job.max_body_size
    if truncated:
        content = content[:job.max_body_size]
        errors.append(f"body larger than max_body_size ({job.max_body_size} bytes): truncated")
    cookies = {c["name"]: c["value"] for c in await context.cookies()}
    return FetchResult(status, page.url, job.orig_url, headers=headers, content=content, cookies=cookies,
                       error="; ".join(errors) or None, truncated=truncated, js_script_result=js_result)


__all__ = ["Crashed", "plain", "render", "start_script"]
