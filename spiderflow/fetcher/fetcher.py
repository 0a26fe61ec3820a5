"""The fetcher stage: tasks in from scheduler2fetcher, ``(task, FetchResult)`` out to fetcher2processor.

:class:`Fetcher` owns its HTTP client (created in :meth:`Fetcher.run`, closed on exit) and
runs up to ``poolsize`` fetches at once. It takes a task only while it has a free slot and
the outqueue has room, so a slow processor slows the fetcher down instead of growing a
queue; a delivery is acknowledged only once its result is on the outqueue. A fetch never
raises: failures are FetchResults with status 599 (or 403 for robots.txt, 501 for a
fetch_type it cannot do) and an error text. ``data:`` URLs are answered without network.
``fetch_type='js'`` tasks are rendered by a browser pool of the fetcher's own
(:class:`~.js.JsRenderer`, started on the first such task, on a thread of its own); they
take a ``poolsize`` slot like any fetch while they wait for one of ``js_poolsize`` pages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..exceptions import ConfigError, QueueClosed, QueueFull
from ..message import FetchResult, Task
from ..queues.base import BaseQueue, Delivery
from ..settings import Settings
from .body import ACCEPT_ENCODING
from .cookies import new_jar
from .counters import FetchCounters
from .js import JS_FETCH_TYPES, JsRenderer, build_job, js_unavailable
from .request import FetchOptionError, build_spec, decode_data_url
from .robots import RobotsCache
from .transport import Transport, resolve_client_kind

logger = logging.getLogger(__name__)

_POLL_MIN = 0.001
_POLL_MAX = 0.05
_SYNC_CLIENTS = 4  # fetch_sync: one fetch at a time (plus its robots.txt)


class Fetcher:
    """Fetch tasks from *inqueue* into *outqueue*; see the module docstring.

    ``http_client``: ``"auto"`` (curl when pycurl imports, else the simple client with a
    warning), ``"curl"`` or ``"simple"``. *clock* drives the counters and the robots.txt TTL.
    """

    def __init__(self, inqueue: BaseQueue | None, outqueue: BaseQueue | None, settings: Settings = Settings(),
                 *, clock: Callable[[], float] = time.time, http_client: str = "auto"):
        self.inqueue = inqueue
        self.outqueue = outqueue
        self.settings = settings
        self.jobs: Any = None    # a spiderflow.jobs.JobWatch when jobs are on (the composition root sets it)
        self.control: Any = None     # the remote-control panel (spiderflow.control.panels), when there is a bus
        self.poolsize = max(1, settings.poolsize)   # fetch slots; remote control may change it at run time
        self.use_curl = resolve_client_kind(http_client)
        self.robots = RobotsCache(settings.robots_txt_ttl, clock=clock)
        self._counters = FetchCounters(clock)
        self._in_flight = 0
        self._stops = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future | None = None
        self._tasks: set[asyncio.Task] = set()
        self._full_wait: asyncio.Lock | None = None   # made on the running loop, when first needed
        self._outbox: list[tuple[Any, Delivery, asyncio.Future]] = []   # pages for the next offer_encoded
        self._transport: Transport | None = None
        self._js: JsRenderer | None = None

    # -- public API -------------------------------------------------------------------
    @property
    def counters(self) -> dict[str, Any]:
        """Results by status class and bytes/s over 5m and 1h (see :mod:`.counters`), and in-flight."""
        return self._counters.snapshot(self._in_flight)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def stop(self) -> None:
        """Warm stop: take no more tasks, finish those in flight, return from run().

        A second call is a cold stop: in-flight fetches are cancelled and handed back.
        Safe to call from another thread or a signal handler.
        """
        self._stops += 1
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            if self._stops > 1:
                loop.call_soon_threadsafe(self._cancel_in_flight)
            loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop closed meanwhile
            pass

    async def fetch(self, task: Task) -> FetchResult:
        """Fetch one task on the running loop; never raises.

        Outside run() (the debugger, ``spiderflow one``) the first call makes a client for
        the running loop and keeps it for the next calls; :meth:`close` releases it.
        """
        transport = self._transport_here()
        self._in_flight += 1
        try:
            return await self._fetch(task, transport)
        finally:
            self._in_flight -= 1

    def fetch_sync(self, task: Task) -> FetchResult:
        """Fetch one task with a short-lived loop and client (debug runs); never raises.

        Works from a thread without a loop; called from inside a running loop, it runs the
        fetch on a helper thread (blocking the caller, as a synchronous call does).
        """
        async def once() -> FetchResult:
            transport = Transport(self.use_curl, _SYNC_CLIENTS, self.robots, self.settings.block_private_addresses)
            had_browser = self._js is not None
            try:
                return await self._fetch(task, transport)
            finally:
                transport.close()
                if not had_browser:  # a browser this call started goes with it
                    self._close_js()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(once())
        with ThreadPoolExecutor(1, thread_name_prefix="fetch_sync") as pool:
            return pool.submit(lambda: asyncio.run(once())).result()

    def close(self) -> None:
        """Close the client that :meth:`fetch` made outside run(), if any, and the browser pool."""
        self._close_transport()
        self._close_js()

    def _close_transport(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            try:
                transport.close()
            except Exception:  # its loop may be gone
                logger.debug("closing the HTTP client failed", exc_info=True)

    def _close_js(self) -> None:
        renderer, self._js = self._js, None
        if renderer is not None:
            renderer.close()

    # -- the loop -----------------------------------------------------------------------
    async def run(self, burst: bool = False) -> None:
        """Pull, fetch and push until stop() (or, with *burst*, until the inqueue is drained)."""
        if self.inqueue is None or self.outqueue is None:
            raise ConfigError("Fetcher.run() needs an inqueue and an outqueue")
        self._loop = asyncio.get_running_loop()
        transport = self._transport_here()
        inqueue, outqueue, poolsize = self.inqueue, self.outqueue, self.poolsize
        delay = _POLL_MIN
        reason = "stopped"
        logger.info("fetcher started (%s client, poolsize %d%s)",
                    "curl" if self.use_curl else "simple", poolsize, ", burst" if burst else "")
        try:
            outage = False
            while not self._stops:
                free = self.poolsize - self._in_flight
                deliveries: list[Delivery] = []
                try:
                    if free > 0 and not outqueue.full():
                        deliveries = inqueue.receive_many(free, 0)
                    drained = burst and not deliveries and not self._in_flight and inqueue.empty()
                    if outage:
                        logger.warning("fetcher: the queues answer again")
                        outage = False
                except QueueClosed:
                    reason = "queue closed"
                    break
                except Exception as exc:  # a broker outage is temporary: wait and go on
                    if not outage:
                        logger.error("fetcher: queue backend unavailable (%s); retrying", exc)
                        outage = True
                    drained = False
                    delay = _POLL_MAX
                for delivery in deliveries:
                    self._start(delivery, transport)
                if deliveries:
                    delay = _POLL_MIN
                    await asyncio.sleep(0)
                    continue
                if drained:
                    reason = "burst done: inqueue empty"
                    break
                await self._idle(delay)
                delay = min(delay * 2, _POLL_MAX)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        finally:
            if self._tasks:  # run() itself was cancelled: hand back what is left
                self._cancel_in_flight()
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self._loop = None
            self._full_wait = None
            self._stops = 0
            self.close()
            logger.info("fetcher exits: %s (%d fetched)", reason, self._counters.total_count())

    def _start(self, delivery: Delivery, transport: Transport) -> None:
        self._in_flight += 1
        task = self._loop.create_task(self._work(delivery, transport))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _work(self, delivery: Delivery, transport: Transport) -> None:
        """Handle *delivery*, then the next task while the inqueue has one, in one pool slot.

        Taking the next task here rather than in run() saves a task and a wake-up of the
        loop per fetch; when the inqueue runs dry the slot is freed and run() polls.
        """
        try:
            while True:
                await self._handle(delivery, transport)
                if self._stops or self.outqueue.full():   # redis: answered by the last push's reply
                    return
                try:
                    more = self.inqueue.receive_many(1, 0)
                except Exception:  # closed or failing: run() reports it
                    return
                if not more:
                    return
                delivery = more[0]
        finally:
            self._in_flight -= 1
            self._wake()

    async def _handle(self, delivery: Delivery, transport: Transport) -> None:
        try:
            task = delivery.message
            if not isinstance(task, Task):
                try:
                    task = Task.from_dict(task)
                except ValueError as exc:  # SerializationError, InvalidProjectName
                    logger.error("fetcher: dropping a message that is not a task: %s", exc)
                    delivery.ack()
                    return
            jobs = self.jobs
            if jobs is not None and task.schedule.job is not None and jobs.cancelled(task.schedule.job):
                jobs.drop("fetcher", task)    # nothing of a cancelled job is fetched (spiderflow.jobs)
                delivery.ack()
                return
            control = self.control
            if control is not None and not control.fetching(task, delivery):
                return      # revoked: acked and dropped (spiderflow.control)
            try:
                result = await self._fetch(task, transport)
            finally:
                if control is not None:
                    control.fetched(delivery)
            item = (task, result)
            outqueue = self.outqueue
            if not await self._hand_over(item, delivery):
                # backpressure: this slot stays busy meanwhile; one slot at a time polls the
                # full outqueue, the others wait their turn without waking up
                if self._full_wait is None:
                    self._full_wait = asyncio.Lock()
                async with self._full_wait:
                    await outqueue.aput(item)
            delivery.ack()
        except asyncio.CancelledError:
            if self.control is not None and self.control.terminated(delivery):
                delivery.ack()      # `control revoke --terminate`: dropped, not handed back
            else:
                delivery.hand_back()
            raise
        except QueueClosed:
            logger.warning("fetcher: %s is closed; handing a task back", self.outqueue.name)
            delivery.hand_back()
        except Exception:
            logger.exception("fetcher: handling a task failed")
            delivery.hand_back()

    async def _hand_over(self, item: tuple[Task, FetchResult], delivery: Delivery) -> bool:
        """Queue *item* and ack *delivery* if the outqueue has room now; False if it has not.

        The pages fetched in one turn of the loop go out together, in one
        :meth:`~spiderflow.queues.base.BaseQueue.offer_encoded` on the next turn (one round
        trip, and on amqp one wait for the broker's confirms, for all of them; while that
        wait blocks the loop, the pages finished meanwhile make the next batch larger)."""
        outqueue = self.outqueue
        if not hasattr(outqueue, "offer_encoded"):
            try:
                outqueue.put_nowait(item)
            except QueueFull:
                return False
            return True
        encoded = outqueue.encode(item)     # a page that cannot be packed fails alone, here
        queued = self._loop.create_future()
        self._outbox.append((encoded, delivery, queued))
        if len(self._outbox) == 1:
            self._loop.call_soon(self._send_outbox)
        return await queued

    def _send_outbox(self) -> None:
        """Offer the pages waiting in the outbox (see :meth:`_hand_over`) to the outqueue.

        A page whose slot was cancelled meanwhile (a cold stop) is left out: its slot hands
        the delivery back."""
        box = [entry for entry in self._outbox if not entry[2].done()]
        self._outbox = []
        if not box:
            return
        try:
            queued = self.outqueue.offer_encoded([e for e, _d, _f in box], [d for _e, d, _f in box])
        except BaseException as exc:    # QueueClosed, an outage: each slot hands its delivery back
            for _e, _d, waiter in box:
                waiter.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_e, _d, waiter), ok in zip(box, queued):
            waiter.set_result(ok)

    async def _idle(self, delay: float) -> None:
        """Sleep up to *delay*, or until a fetch finishes or stop() is called."""
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(delay, self._wake)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _cancel_in_flight(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def _transport_here(self) -> Transport:
        loop = asyncio.get_running_loop()
        transport = self._transport
        if transport is None or transport.loop is not loop:
            if transport is not None:
                self._close_transport()   # (the browser pool serves any loop)
            transport = self._transport = Transport(self.use_curl, max(1, self.settings.poolsize), self.robots,
                                                    self.settings.block_private_addresses)
        return transport

    # -- one fetch -----------------------------------------------------------------------
    async def _fetch(self, task: Task, transport: Transport) -> FetchResult:
        start = time.perf_counter()
        url = task.url
        fetch = task.fetch
        try:
            if url[:5].lower() == "data:":
                content_type, content = decode_data_url(url)
                result = FetchResult(200, url, url, headers={"Content-Type": content_type}, content=content)
            elif fetch.fetch_type in JS_FETCH_TYPES:
                result = await self._fetch_js(task, transport)
            elif fetch.fetch_type not in (None, "", "http", "https"):
                result = FetchResult(501, url, url, error=f"fetch_type {fetch.fetch_type!r} is not supported; "
                                                           "use 'http' (the default) or 'js'")
            else:
                spec = build_spec(task, self.settings, ACCEPT_ENCODING)
                jar = new_jar(spec.url, fetch.cookies, spec.cookie_header) \
                    if fetch.cookies or spec.cookie_header else None
                result = await transport.fetch(spec, jar, url)
        except FetchOptionError as exc:
            result = FetchResult(599, url, url, error=str(exc))
        except Exception as exc:
            logger.exception("fetcher: unexpected error fetching %s", url)
            result = FetchResult(599, url, url, error=f"fetcher error: {type(exc).__name__}: {exc}")
        result.time = time.perf_counter() - start
        result.save = fetch.save
        self._counters.record(result.status_code, len(result.content))
        if result.error is not None:
            logger.debug("fetch %s: %d %s", url, result.status_code, result.error)
        return result

    async def _fetch_js(self, task: Task, transport: Transport) -> FetchResult:
        """Render *task* in the browser pool (robots.txt is checked over HTTP first)."""
        renderer = self._js
        if renderer is None:
            reason = js_unavailable(self.settings.chromium_path)
            if reason:
                return FetchResult(501, task.url, task.url, error=reason)
            renderer = self._js = JsRenderer(self.settings)
        spec = build_spec(task, self.settings, ACCEPT_ENCODING)
        job = build_job(task, spec, self.settings)
        if spec.robots_txt and not await transport._robots_allow(spec):
            return FetchResult(403, spec.url, task.url,
                               error=f"robots.txt disallows {spec.url} for user agent {spec.user_agent!r}")
        return await renderer.fetch(job)


__all__ = ["Fetcher"]
