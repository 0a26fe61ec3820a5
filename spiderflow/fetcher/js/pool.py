"""The fetcher's browser pool: one Chromium, driven by Playwright on a thread and event loop of its own.

:class:`JsRenderer` starts its thread when first asked for a render, and Playwright and the
browser (the system's Chromium: ``executable_path``, nothing is downloaded) on the first
render there. The fetcher's loop only awaits a future per render, so a page that takes
seconds costs plain fetches nothing. At most ``js_poolsize`` pages render at once, each in a
fresh context of the one browser. When the browser dies under a render (a crash, a kill, an
out-of-memory), the render's caller gets the page rendered by a relaunched browser: the
render is retried once; a second death is a 599 the scheduler retries later. A render that
cannot start (Playwright or Chromium missing) answers 501 with the fix in its error.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from ...message import FetchResult
from ...settings import Settings
from .job import RenderJob, find_chromium, js_unavailable
from .page import Crashed, render

logger = logging.getLogger(__name__)

LAUNCH_TIMEOUT = 30.0
CLOSE_TIMEOUT = 10.0
#: Chromium's flags (Playwright adds --headless, --no-sandbox and its automation ones).
LAUNCH_ARGS = ("--disable-dev-shm-usage", "--disable-gpu", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-default-apps", "--mute-audio")
#: With block_private_addresses: no WebRTC UDP around the route (it could reach local addresses).
PRIVATE_ARGS = ("--force-webrtc-ip-handling-policy=disable_non_proxied_udp",)


class _Unavailable(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status


class JsRenderer:
    """Renders :class:`~.job.RenderJob`\\ s in a pool of browser contexts; see the module docstring.

    :meth:`fetch` may be awaited on any event loop; :meth:`close` stops the browser and the
    thread (a later fetch starts them again).
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.poolsize = max(1, settings.js_poolsize)
        self.launches = 0          # browsers started, a relaunch after a crash included
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool: _Pool | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    async def fetch(self, job: RenderJob) -> FetchResult:
        """Render *job*; never raises (failures are FetchResults), but for the caller's cancellation."""
        pool, loop = self._start()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(pool.render(job), loop))

    def close(self) -> None:
        """Close the browser and Playwright, then end the thread (waits up to about CLOSE_TIMEOUT seconds)."""
        with self._lock:
            loop, thread, pool = self._loop, self._thread, self._pool
            self._loop = self._thread = self._pool = None
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(pool.shutdown(), loop).result(CLOSE_TIMEOUT + 5)
        except Exception as exc:
            logger.warning("js: closing the browser failed: %s", exc or type(exc).__name__)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CLOSE_TIMEOUT)

    def _start(self) -> tuple[_Pool, asyncio.AbstractEventLoop]:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._pool = _Pool(self)
                self._thread = threading.Thread(target=_serve, args=(loop,), name="spiderflow-js", daemon=True)
                self._thread.start()
                self._loop = loop
            return self._pool, self._loop


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


class _Pool:
    """The renderer loop's side: the browser, its launch, and the slots. Used on that loop only."""

    def __init__(self, owner: JsRenderer):
        self.owner = owner
        self.settings = owner.settings
        self.slots = asyncio.Semaphore(owner.poolsize)
        self.launching = asyncio.Lock()
        self.playwright: Any = None
        self.browser: Any = None
        self.closing = False

    async def render(self, job: RenderJob) -> FetchResult:
        async with self.slots:
            for attempt in (1, 2):
                try:
                    browser = await self._browser()
                except _Unavailable as exc:
                    return job.failed(exc.status, str(exc))
                try:
                    return await render(browser, job)
                except Crashed as exc:
                    if self.closing:
                        return job.failed(599, "js: the fetcher closed the browser during the render")
                    await self._forget(browser)
                    if attempt == 2:
                        return job.failed(599, f"js: the browser died twice rendering this page ({exc}); "
                                               "it is restarted for the next task")
                    logger.warning("js: the browser died rendering %s (%s); restarting it and retrying", job.url, exc)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _browser(self) -> Any:
        browser = self.browser
        if browser is not None and browser.is_connected():
            return browser
        async with self.launching:
            browser = self.browser
            if browser is not None and browser.is_connected():
                return browser
            if browser is not None:
                await self._drop(browser)
            if self.closing:
                raise _Unavailable(599, "js: the fetcher is closing")
            reason = js_unavailable(self.settings.chromium_path)
            if reason:
                raise _Unavailable(501, reason)
            path = find_chromium(self.settings.chromium_path)
            args = list(LAUNCH_ARGS) + (list(PRIVATE_ARGS) if self.settings.block_private_addresses else [])
            try:
                if self.playwright is None:
                    from playwright.async_api import async_playwright

                    self.playwright = await async_playwright().start()
                # the fetcher handles signals: the browser must outlive a warm stop's SIGINT
                self.browser = await self.playwright.chromium.launch(
                    executable_path=path, args=args, timeout=LAUNCH_TIMEOUT * 1000,
                    handle_sigint=False, handle_sigterm=False, handle_sighup=False)
            except Exception as exc:
                await self._stop_playwright()
                text = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).strip().splitlines()
                raise _Unavailable(599, f"js: cannot start Chromium ({path}): {text[0] if text else exc!r}") from exc
            self.owner.launches += 1
            logger.info("js: Chromium %s started (%s, %d pages at once)", self.browser.version, path,
                        self.owner.poolsize)
            return self.browser

    async def _forget(self, browser: Any) -> None:
        """Drop a dead browser, and Playwright with it: the next render starts both anew."""
        async with self.launching:   # (renders that saw it die drop it once, before any relaunch)
            await self._drop(browser)

    async def _drop(self, browser: Any) -> None:
        if self.browser is not browser:
            return
        self.browser = None
        try:
            await asyncio.wait_for(browser.close(), CLOSE_TIMEOUT)
        except Exception:
            logger.debug("js: closing a dead browser failed", exc_info=True)
        await self._stop_playwright()

    async def _stop_playwright(self) -> None:
        playwright, self.playwright = self.playwright, None
        if playwright is not None:
            try:
                await asyncio.wait_for(playwright.stop(), CLOSE_TIMEOUT)
            except Exception:
                logger.debug("js: stopping Playwright failed", exc_info=True)

    async def shutdown(self) -> None:
        self.closing = True
        async with self.launching:
            if self.browser is not None:
                await self._drop(self.browser)
            await self._stop_playwright()


__all__ = ["LAUNCH_ARGS", "JsRenderer"]
