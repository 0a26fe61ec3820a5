"""The queue interface every backend shares; blocking, batching, async waits and ack live here.

A backend implements five primitives on raw items (``_put``, ``_get``, ``_qsize``,
``_close`` and, for reliable backends, ``_ack``/``_reject``). This base class adds
serialization (msgpack through :mod:`spiderflow.message` for backends that cross a
process), timeouts, batch helpers and asyncio-friendly waits.

Two ways to consume:

* ``get()`` returns a message that is already acknowledged (at-most-once from the queue's
  point of view; the scheduler's lease re-sends anything lost).
* ``receive()`` returns a :class:`Delivery`: call ``ack()`` once the message is handled,
  or ``reject()`` to hand it back. On reliable backends (redis, amqp) a consumer that dies
  before acking has its messages redelivered. On memory and multiprocessing queues ``ack``
  is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from ..exceptions import QueueClosed, QueueEmpty, QueueFull, SerializationError
from ..message import pack, unpack

logger = logging.getLogger(__name__)

_POLL_MIN = 0.001
_POLL_MAX = 0.05


def _ack_all(deliveries: Iterable[Delivery]) -> None:
    """Ack *deliveries*, with one ``ack_many`` per queue they came from."""
    by_queue: dict[int, tuple[BaseQueue, list[Delivery]]] = {}
    for delivery in deliveries:
        entry = by_queue.setdefault(id(delivery._queue), (delivery._queue, []))
        entry[1].append(delivery)
    for queue, group in by_queue.values():
        queue.ack_many(group)


class Delivery:
    """A received message that must be acknowledged (or rejected) by its consumer."""

    __slots__ = ("message", "tag", "_queue", "_settled")

    def __init__(self, message: Any, tag: Any, queue: BaseQueue):
        self.message = message
        self.tag = tag
        self._queue = queue
        self._settled = False

    def ack(self) -> None:
        """The message is handled: the queue may forget it."""
        if not self._settled:
            self._settled = True
            self._queue._ack(self.tag)

    def reject(self, requeue: bool = True) -> None:
        """Hand the message back (``requeue=True``) or drop it."""
        if not self._settled:
            self._settled = True
            self._queue._reject(self.tag, requeue)

    def hand_back(self) -> None:
        """Return an unhandled message to its queue where the backend can (redis, amqp);
        elsewhere let it go: the scheduler's lease re-sends the task."""
        try:
            self.reject(requeue=True)
        except NotImplementedError:
            pass
        except Exception:
            logger.debug("queue %s: handing a message back failed", self._queue.name, exc_info=True)

    def __repr__(self) -> str:
        return f"<Delivery {type(self.message).__name__} tag={self.tag!r}>"


class BaseQueue:
    """A bounded FIFO of spiderflow messages. Subclasses implement the underscore methods.

    ``serialize``: whether items travel as msgpack bytes (every backend that crosses a
    process boundary). ``reliable``: whether unacked deliveries survive a dead consumer.
    ``prefixed``: whether the queue has a name on a server, which takes a ``prefix`` keyword.
    """

    scheme: str = ""
    serialize: bool = True
    reliable: bool = False
    prefixed: bool = False

    def __init__(self, name: str, maxsize: int = 0):
        self.name = name
        self.maxsize = maxsize
        self.closed = False

    # -- backend primitives -------------------------------------------------
    def _put(self, item: Any, timeout: float | None) -> None:
        """Append *item*; wait at most *timeout* (0: don't wait, None: forever); raise QueueFull."""
        raise NotImplementedError

    def _get(self, timeout: float | None) -> tuple[Any, Any]:
        """Take the oldest item, waiting as ``_put`` does; return (item, tag); raise QueueEmpty."""
        raise NotImplementedError

    def _qsize(self) -> int:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def _ack(self, tag: Any) -> None:
        pass

    def _reject(self, tag: Any, requeue: bool) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot hand messages back")

    # -- encoding -------------------------------------------------------------
    def _encode(self, msg: Any) -> Any:
        return pack(msg) if self.serialize else msg

    def _decode(self, item: Any, tag: Any) -> Any:
        if not self.serialize:
            return item
        try:
            return unpack(item)
        except SerializationError:
            # a poisoned message must not come back forever: drop it and say so
            logger.error("queue %s: dropping a malformed message (%d bytes)", self.name, len(item))
            self._ack(tag)
            raise

    def _check_open(self) -> None:
        if self.closed:
            raise QueueClosed(f"queue {self.name!r} is closed")

    # -- producer side ---------------------------------------------------------
    def _wait_for_room(self, deadline: float | None, delay: float) -> float:
        """For backends that poll for room: sleep *delay* (not past *deadline*) and return
        the next, doubled delay; raise QueueFull once *deadline* has passed."""
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise QueueFull(f"queue {self.name!r} is full ({self.maxsize})")
        time.sleep(delay if remaining is None else min(delay, remaining))
        return min(delay * 2, _POLL_MAX)

    def put(self, msg: Any, timeout: float | None = None) -> None:
        """Put a message, blocking while the queue is full (at most *timeout* seconds)."""
        self._check_open()
        self._put(self._encode(msg), timeout)

    def put_nowait(self, msg: Any) -> None:
        """Put a message or raise QueueFull at once."""
        self.put(msg, timeout=0)

    def put_many(self, msgs: Iterable[Any], timeout: float | None = None) -> None:
        """Put every message in order; *timeout* bounds the whole call."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for msg in msgs:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            self.put(msg, remaining)

    def encode(self, msg: Any) -> Any:
        """*msg* as this queue carries it (msgpack bytes, or itself for a queue that does not
        serialize), for :meth:`put_encoded`; raises SerializationError for what cannot be packed."""
        return self._encode(msg)

    def put_encoded(self, items: list[Any], timeout: float | None = None, *,
                    ack: Iterable[Delivery] = ()) -> None:
        """:meth:`put_many` of messages already made by :meth:`encode` (so a caller can find the
        one that cannot be packed before anything is sent), then ack the deliveries *ack*
        (of any queue). Nothing is acked unless every item was queued; a backend that can
        do both in one step does (redis, for queues on one server)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for item in items:
            self._check_open()
            self._put(item, None if deadline is None else max(0.0, deadline - time.monotonic()))
        _ack_all(ack)

    def offer_encoded(self, items: list[Any], acks: list[Delivery]) -> list[bool]:
        """Queue each of *items* (made by :meth:`encode`) that there is room for now, without
        waiting, and ack ``acks[i]`` (of any queue) once ``items[i]`` is queued; which ones
        were queued. What was not queued is not acked, so the caller can wait for room and
        put it later: the fetcher hands its pages over this way, one call per turn of its
        event loop. Here the items go in order and the first that finds no room stops the
        rest; a backend that can do better says so."""
        queued: list[bool] = []
        for item in items:
            self._check_open()
            try:
                self._put(item, 0)
            except QueueFull:
                break
            queued.append(True)
        _ack_all(acks[:len(queued)])
        return queued + [False] * (len(items) - len(queued))

    # -- consumer side -----------------------------------------------------------
    def receive(self, timeout: float | None = None) -> Delivery:
        """Take a message to be acked later; raise QueueEmpty after *timeout* seconds.

        A malformed message is dropped (logged) and raises SerializationError.
        """
        self._check_open()
        item, tag = self._get(timeout)
        return Delivery(self._decode(item, tag), tag, self)

    def get(self, timeout: float | None = None) -> Any:
        """Take a message (acknowledged at once); raise QueueEmpty after *timeout* seconds."""
        delivery = self.receive(timeout)
        delivery.ack()
        return delivery.message

    def get_nowait(self) -> Any:
        return self.get(timeout=0)

    def receive_many(self, max_items: int, timeout: float | None = 0) -> list[Delivery]:
        """Wait up to *timeout* for one message, then take up to *max_items* without waiting.

        Malformed messages are dropped and skipped. Returns [] when nothing came.
        """
        out: list[Delivery] = []
        wait = timeout
        while len(out) < max_items:
            try:
                out.append(self.receive(wait))
            except QueueEmpty:
                break
            except SerializationError:
                pass
            wait = 0
        return out

    def ack_many(self, deliveries: Iterable[Delivery]) -> None:
        """Acknowledge several deliveries of this queue (in one round trip where the backend can)."""
        tags = []
        for d in deliveries:
            if not d._settled:
                d._settled = True
                tags.append(d.tag)
        if tags:
            self._ack_many(tags)

    def _ack_many(self, tags: list[Any]) -> None:
        for tag in tags:
            self._ack(tag)

    def get_many(self, max_items: int, timeout: float | None = 0) -> list[Any]:
        """Like :meth:`receive_many`, with every message acknowledged.

        On a backend that is not ``reliable`` an ack does nothing, so the messages are taken
        without a :class:`Delivery` each (the scheduler drains its queues this way).
        """
        if self.reliable:
            deliveries = self.receive_many(max_items, timeout)
            for d in deliveries:
                d.ack()
            return [d.message for d in deliveries]
        self._check_open()
        get, decode = self._get, self._decode
        out: list[Any] = []
        wait = timeout
        while len(out) < max_items:
            try:
                item, tag = get(wait)
            except QueueEmpty:
                break
            wait = 0
            try:
                out.append(decode(item, tag))
            except SerializationError:
                pass
        return out

    # -- asyncio ------------------------------------------------------------------
    async def _poll(self, attempt, timeout: float | None):
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _POLL_MIN
        while True:
            try:
                return attempt()
            except (QueueEmpty, QueueFull):
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    async def aput(self, msg: Any, timeout: float | None = None) -> None:
        """Async put: waits without blocking the event loop."""
        item = self._encode(msg)
        self._check_open()
        await self._poll(lambda: self._put(item, 0), timeout)

    async def areceive(self, timeout: float | None = None) -> Delivery:
        return await self._poll(lambda: self.receive(0), timeout)

    async def aget(self, timeout: float | None = None) -> Any:
        return await self._poll(lambda: self.get(0), timeout)

    async def areceive_many(self, max_items: int, timeout: float | None = None) -> list[Delivery]:
        """Wait (without blocking the loop) up to *timeout* for messages; take up to *max_items*."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                first = await self.areceive(None if deadline is None else max(0.0, deadline - time.monotonic()))
                break
            except QueueEmpty:
                return []
            except SerializationError:
                continue  # dropped and logged by _decode
        return [first, *self.receive_many(max_items - 1, 0)]

    # -- state ----------------------------------------------------------------------
    def qsize(self) -> int:
        """Messages waiting (approximate on multi-process backends)."""
        return self._qsize()

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return bool(self.maxsize) and self.qsize() >= self.maxsize

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} maxsize={self.maxsize}>"
