"""``amqp://``: bounded queues on RabbitMQ, acknowledged after the message is handled.

Connection string::

    amqp://user:password@host:5672/vhost[?prefix=spiderflow&prefetch=100]

(the default vhost ``/`` is written ``%2F``, or left out). Queue *name* is the durable
RabbitMQ queue ``{prefix}.{name}`` holding persistent messages; the prefix is the URL's
``?prefix=``, else the ``queue_prefix`` setting (``--queue-prefix``), else ``spiderflow``,
so that clusters can share a vhost. A bounded queue is declared with
``x-max-length=maxsize`` and ``x-overflow=reject-publish``, and every publish waits for
the broker's confirm, so a full queue is a QueueFull (after *timeout*), never a silently
dropped message; ``put_many`` pipelines its publishes and waits for their confirms
together.

``receive()``/``receive_many()`` take from a consumer (``basic.consume``) that the first
of them starts: RabbitMQ pushes deliveries ahead into a buffer of the queue object, up to
its ``basic.qos`` prefetch, and a receive hands them out from there, waiting for a push
(not polling) up to its *timeout*. A receive with ``timeout=0`` that finds the buffer
empty asks the broker how many messages are ready (one round trip, as ``basic.get`` did)
and, if some are, waits briefly for their push. A delivery is acked only by ``ack()``
(``basic.ack``); ``reject()`` is ``basic.nack`` (with requeue, the consumer is stopped and
its buffer handed back too, so that the message keeps its place ahead of them; the next
receive starts it again). A consumer that is not asked for a message for a second hands
its buffer back and stops, so that an idle queue object holds nothing that others could
take. A consumer that dies, or whose connection drops, leaves everything it held unacked,
buffered or handed out, to RabbitMQ, which delivers it again.

*prefetch* (``?prefetch=``, default 100) caps the unacknowledged messages one queue object
holds, handed out or buffered. A consumer starts with room for what its callers ask at a
time, at least 10 and at most *prefetch* (a processor taking one message at a time gets 10,
a fetcher asking for its pool of 100 gets 100). RabbitMQ counts neither toward
``x-max-length``: *maxsize* bounds the ready messages exactly, and up to that prefetch more
per consumer sit in consumers' buffers or hands (with ``basic.get`` the bound only left out
those handed out). The default is not smaller than 100 for queues of *maxsize* 100: a
fetcher needs its poolsize (100) of unacked tasks to fetch at full concurrency, the result
worker its batch (100), and the scheduler drains as many status packs per pass as it may
hold unacked; single-message consumers get 10, which is what keeps the backpressure tight.

``get()``/``get_many()`` are at-most-once: on a queue object that runs a consumer they take
from its buffer and ack at once (one ``basic.ack`` with *multiple* where no older delivery
is still out); on one that does not (drains, tools) they use ``basic.get`` with
``auto_ack``, so that they never leave a consumer holding messages. A queue object that only
publishes never consumes.

When the connection drops (broker restart, network), the next call reconnects, with a
bounded backoff, and carries on; deliveries taken on the dead connection can no longer be
acked (that is logged at debug level, RabbitMQ redelivers them) and the buffer is dropped.
Declaring a queue that already exists with another *maxsize* fails with a ConfigError
saying what to do. ``qsize()`` (ready messages plus this object's buffer) asks the broker at
most every 50 ms; this object's own puts and takes show at once.

pika's connection is not thread-safe: a queue object serializes its calls with a lock (so
threads may share it, one call at a time; a receive waiting for a message lets go of it
every 50 ms); a light thread answers heartbeats and stops idle consumers while the owner is
busy elsewhere. After a fork the child opens its own connection.

The scheduler lock on RabbitMQ is in :mod:`spiderflow.queues.amqp_lock`.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pika
import pika.exceptions
from pika.adapters.blocking_connection import (
    _IoloopTimerContext,  # pika 1.x; pipelined confirms need it
)

from ..exceptions import (
    ConfigError,
    QueueEmpty,
    QueueError,
    SerializationError,
    redact_url,
)
from .base import BaseQueue, Delivery, _ack_all

logger = logging.getLogger(__name__)

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_PREFIX = "spiderflow"
DEFAULT_PREFETCH = 100
_PUBLISH_WINDOW = 2000             # publishes in flight before waiting for their confirms
_CONFIRM_WAIT = 2.0                # least time given to the broker to confirm a publish (seconds)
_CONFIRM_WAIT_BLOCKING = 30.0      # ... and when the caller waits without a timeout
_RECEIVE_BUDGET = 0.05             # get_many's basic.get loop stops after this long (the caller may be a loop)
_MIN_PREFETCH = 10                 # a consumer's least prefetch (see the module docstring)
_WAIT_SLICE = 0.05                 # a receive waiting for a push lets go of the lock this often
_SETTLE = 0.05                     # timeout=0: longest wait for a push of messages the broker counts ready
_IDLE_RELEASE = 1.0                # a consumer not asked for this long hands its buffer back
_KEEPER_TICK = 0.25                # the keeper thread looks for idle consumers this often
_QSIZE_TTL = 0.05                  # qsize() asks the broker at most this often
_FRESH = 0.01                      # a buffer is handed out without reading the socket first only this
                                   # soon after the last read (a dead connection's deliveries are void)
_RECONNECT_ATTEMPTS = 8            # per call, when it has no deadline of its own
_RECONNECT_MIN, _RECONNECT_MAX = 0.1, 5.0
_KEEPALIVE_EVERY = 10.0            # seconds between heartbeat services by the keeper thread
_POLL_MIN, _POLL_MAX = 0.002, 0.05
_PERSISTENT = pika.BasicProperties(delivery_mode=2)
_CAPPED: Any = object()            # _take_once: no room for a delivery until some are acked
_ERRORS = (pika.exceptions.AMQPError, OSError)  # a dead or broken connection: reconnect


def _parse_url(url: str) -> dict[str, Any]:
    """pika connection keywords and queue options from *url*; ConfigError names what is wrong."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port or 5672
    except ValueError as exc:
        raise ConfigError(f"bad amqp queue URL {shown!r}: {exc}") from None
    if parts.scheme != "amqp":
        raise ConfigError(f"not an amqp URL: {shown!r}")
    if parts.fragment:
        raise ConfigError(f"unexpected '#{parts.fragment}' in amqp queue URL {shown!r}")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - {"prefix", "prefetch"})
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} in amqp queue URL {shown!r}; "
                          "known: prefix, prefetch")
    prefix = query.get("prefix")
    if prefix is not None:
        _check_prefix(prefix, f"prefix in amqp queue URL {shown!r}")
    prefetch = query.get("prefetch", str(DEFAULT_PREFETCH))
    if not prefetch.isdigit() or int(prefetch) < 1:
        raise ConfigError(f"prefetch in amqp queue URL {shown!r} must be a positive whole number, not {prefetch!r}")
    return {
        "host": parts.hostname or "127.0.0.1", "port": port, "vhost": vhost,
        "username": unquote(parts.username) if parts.username else "guest",
        "password": unquote(parts.password) if parts.password else "guest",
        "prefetch": int(prefetch),
        "prefix": prefix,
    }


def _check_prefix(prefix: str, what: str) -> str:
    if not prefix or any(c.isspace() for c in prefix) or prefix.startswith("amq.") or len(prefix) > 200:
        raise ConfigError(f"{what} must be a word of at most 200 characters that does not start with "
                          f"'amq.' (RabbitMQ keeps those names), not {prefix!r}")
    return prefix


def _prefix(options: dict[str, Any], prefix: str | None) -> str:
    """The URL's prefix, else *prefix* (the queue_prefix setting), else the default."""
    if options["prefix"]:
        return options["prefix"]
    return _check_prefix(prefix, "the queue prefix (--queue-prefix)") if prefix is not None else DEFAULT_PREFIX


def _parameters(options: dict[str, Any], connection_name: str, **kwargs: Any) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host=options["host"], port=options["port"], virtual_host=options["vhost"],
        credentials=pika.PlainCredentials(options["username"], options["password"]),
        connection_attempts=1, socket_timeout=5, stack_timeout=10, blocked_connection_timeout=60,
        client_properties={"connection_name": f"{connection_name} {socket.gethostname()}-{os.getpid()}"}, **kwargs)


def _keep_alive(ref: weakref.ref, stop: threading.Event) -> None:
    """Let pika answer heartbeats and stop idle consumers while the queue's owner is busy,
    until *stop* or garbage."""
    while not stop.wait(_KEEPER_TICK):
        queue = ref()
        if queue is None:
            return
        queue._service()
        del queue


class AmqpQueue(BaseQueue):
    """A bounded queue on RabbitMQ; see the module docstring for how it maps onto AMQP."""

    scheme = "amqp"
    reliable = True
    prefixed = True

    def __init__(self, name: str, maxsize: int = 0, url: str = DEFAULT_URL, *, prefix: str | None = None,
                 prefetch: int | None = None):
        super().__init__(name, maxsize)
        options = _parse_url(url)
        self.url = redact_url(url)
        self.vhost = options["vhost"]
        self.prefix = _prefix(options, prefix)
        self.queue_name = f"{self.prefix}.{name}"   # the RabbitMQ queue
        self.prefetch = int(prefetch or options["prefetch"])
        self._params = _parameters(options, f"spiderflow {name}")
        self._arguments = {"x-max-length": maxsize, "x-overflow": "reject-publish"} if maxsize else {}
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._conn: pika.BlockingConnection | None = None
        self._ch: Any = None
        self._generation = 0            # bumped on every (re)connect; delivery tags carry it
        self._connects = 0              # connections opened by this process
        self._unacked: set[int] = set()  # delivery tags handed out and not settled (this channel)
        self._buffer: collections.deque[tuple[int, bytes]] = collections.deque()  # pushed, not handed out
        self._consumer: str | None = None  # consumer tag on the channel, while one runs
        self._qos = 0                   # the running consumer's prefetch
        self._want = 0                  # the prefetch consumers are started with (grows with the batches asked)
        self._floor = 0                 # delivery tags up to this one came to earlier consumers of the channel
        self._max_tag = 0               # highest delivery tag seen on the channel
        self._last_take = 0.0           # monotonic time of the last receive/get on the consumer
        self._read_at = 0.0             # monotonic time a take last read the socket
        self._arrived = 0               # deliveries pushed to this object, ever
        self._ready_cache = (-1e18, 0, 0)     # qsize cache: (monotonic time, ready count, self._arrived then)
        self._serviced = time.monotonic()
        self._capped = False            # the prefetch cap was hit (warned once)
        self._seq = 0                   # publish sequence number on the channel (confirm mode)
        self._pending: collections.deque[int] = collections.deque()  # publishes awaiting a confirm
        self._outcome: dict[int, bool] = {}
        self._returned: list[bytes] = []
        self._retry_at = 0.0
        self._backoff = 0.0
        self._keeper_stop = threading.Event()
        self._keeper_pid = 0
        with self._lock:
            self._channel(time.monotonic())  # fail fast on a bad URL, credentials or arguments

    # -- connection ---------------------------------------------------------------------
    def _check_pid(self) -> None:
        """After a fork the inherited connection belongs to the parent: leave it alone."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._lock = threading.RLock()
            self._conn = self._ch = None
            self._connects = 0
            self._forget_consumer()
            self._pending.clear()
            self._ready_cache = (-1e18, 0, 0)
            self._keeper_stop = threading.Event()

    def _forget_consumer(self) -> None:
        """The channel is gone: its consumer, buffer and delivery tags with it."""
        self._unacked.clear()
        self._buffer.clear()
        self._consumer = None
        self._qos = self._floor = self._max_tag = 0

    def _connect(self) -> None:
        try:
            conn = pika.BlockingConnection(self._params)
        except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError) as exc:
            raise ConfigError(f"RabbitMQ at {self.url} refused the credentials: {exc!r}") from exc
        except pika.exceptions.ProbableAccessDeniedError as exc:
            raise ConfigError(f"RabbitMQ at {self.url} denied access to vhost {self.vhost!r}: {exc!r}") from exc
        except _ERRORS as exc:
            raise QueueError(f"amqp queue {self.name!r}: cannot connect to {self.url}: {exc!r}") from exc
        try:
            ch = conn.channel()
            self._declare(ch)
            selected: list[bool] = []
            ch._impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _f: selected.append(True))
            ch._flush_output(lambda: bool(selected))
            ch._impl.add_on_return_callback(self._on_return)
            ch.add_on_cancel_callback(self._on_broker_cancel)
        except BaseException as exc:
            try:
                if conn.is_open:
                    conn.close()
            except _ERRORS:
                pass
            if isinstance(exc, _ERRORS):
                raise QueueError(f"amqp queue {self.name!r}: setting up on {self.url} failed: {exc!r}") from exc
            raise
        self._conn, self._ch = conn, ch
        self._generation += 1
        self._connects += 1
        self._forget_consumer()
        self._seq = 0
        self._pending.clear()
        if self._keeper_pid != os.getpid():  # one keeper per queue object and process
            self._keeper_pid = os.getpid()
            threading.Thread(target=_keep_alive, args=(weakref.ref(self), self._keeper_stop), daemon=True,
                             name=f"spiderflow-amqp-keepalive-{self.name}").start()

    def _declare(self, ch: Any) -> None:
        try:
            ch.queue_declare(self.queue_name, durable=True, arguments=self._arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 406:
                bound = f"maxsize={self.maxsize}" if self.maxsize else "no maxsize"
                raise ConfigError(
                    f"queue {self.queue_name!r} already exists on {self.url} with other arguments "
                    f"({exc.reply_text}); this process asked for {bound}. Use the same --queue-maxsize "
                    f"everywhere, or delete the queue (rabbitmqctl delete_queue {self.queue_name} -p {self.vhost}) "
                    "once it is drained") from None
            if exc.reply_code == 403:
                raise ConfigError(f"RabbitMQ at {self.url} refused to declare queue {self.queue_name!r}: "
                                  f"{exc.reply_text}") from None
            raise

    def _drop(self) -> None:
        """Forget the connection (closing it if it is still ours and open)."""
        conn, self._conn, self._ch = self._conn, None, None
        self._forget_consumer()  # buffered deliveries too: their tags are void, RabbitMQ redelivers them
        self._pending.clear()
        if conn is not None:
            try:
                if conn.is_open:
                    conn.close()
            except _ERRORS as exc:
                logger.debug("amqp queue %s: closing a broken connection: %r", self.name, exc)

    def _channel(self, deadline: float | None) -> Any:
        """The open channel, reconnecting with a bounded backoff; QueueError if the broker stays away.

        *deadline* (monotonic) bounds the wait; without one, a few attempts are made.
        """
        if self._ch is not None and self._ch.is_open and self._conn.is_open:
            return self._ch
        if self._conn is not None:
            logger.warning("amqp queue %s: the connection to %s was closed; reconnecting", self.name, self.url)
            self._drop()
        attempts = 0
        while True:
            now = time.monotonic()
            if now < self._retry_at:
                if deadline is not None and self._retry_at > deadline:
                    raise QueueError(f"amqp queue {self.name!r}: {self.url} is unreachable; "
                                     f"next attempt in {self._retry_at - now:.2f}s")
                time.sleep(self._retry_at - now)
            try:
                self._connect()
            except QueueError:
                attempts += 1
                self._backoff = min(max(self._backoff * 2, _RECONNECT_MIN), _RECONNECT_MAX)
                self._retry_at = time.monotonic() + self._backoff
                if (deadline is None and attempts >= _RECONNECT_ATTEMPTS) or (
                        deadline is not None and time.monotonic() >= deadline):
                    raise
                continue
            if self._connects > 1:
                logger.info("amqp queue %s: reconnected to %s", self.name, self.url)
            self._backoff = self._retry_at = 0.0
            return self._ch

    def _run(self, op: Callable[[Any], Any], deadline: float | None) -> Any:
        """Run *op(channel)* under the lock; on a lost connection reconnect and run it once more."""
        self._check_pid()
        with self._lock:
            for attempt in (1, 2):
                ch = self._channel(deadline)
                try:
                    return op(ch)
                except _ERRORS as exc:
                    logger.warning("amqp queue %s: the channel or connection failed (%r); reconnecting",
                                   self.name, exc)
                    self._drop()
                    if attempt == 2:
                        raise QueueError(f"amqp queue {self.name!r} on {self.url}: {exc!r}") from exc

    def _service(self) -> None:
        """Called by the keeper thread, if nobody else is busy: stop a consumer that nobody asked
        for a message lately (its buffer goes back to the queue, for others), and every
        _KEEPALIVE_EVERY let pika send and answer heartbeats."""
        if self._pid != os.getpid() or not self._lock.acquire(blocking=False):
            return
        try:
            if self._conn is not None and self._conn.is_open:
                now = time.monotonic()
                if self._consumer is not None and now - self._last_take > _IDLE_RELEASE and (
                        self._buffer or self._current_held() < self._qos):
                    logger.debug("amqp queue %s: the consumer is idle; handing back %d buffered deliveries",
                                 self.name, len(self._buffer))
                    self._stop_consumer(self._ch)
                    self._ch._flush_output()
                if now - self._serviced >= _KEEPALIVE_EVERY:
                    self._serviced = now
                    self._conn.process_data_events(0)
        except _ERRORS as exc:
            logger.debug("amqp queue %s: keepalive found the connection broken: %r", self.name, exc)
            self._drop()
        finally:
            self._lock.release()

    # -- producer side ------------------------------------------------------------------
    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        pending, tag = self._pending, method.delivery_tag
        if method.multiple:
            while pending and pending[0] <= tag:
                self._outcome[pending.popleft()] = ok
        elif pending and pending[0] == tag:
            self._outcome[pending.popleft()] = ok
        elif tag in pending:
            pending.remove(tag)
            self._outcome[tag] = ok

    def _on_return(self, _channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
        self._returned.append(body)

    def _publish_batch(self, ch: Any, batch: list[bytes], deadline: float | None) -> list[bool]:
        """Publish *batch* and wait for the broker's confirms; which ones it accepted."""
        impl = ch._impl
        self._outcome, self._returned = {}, []
        first = self._seq + 1
        for body in batch:
            self._seq += 1
            self._pending.append(self._seq)
            impl.basic_publish("", self.queue_name, body, _PERSISTENT, mandatory=True)
        remaining = _CONFIRM_WAIT_BLOCKING if deadline is None else max(_CONFIRM_WAIT, deadline - time.monotonic())
        with _IoloopTimerContext(remaining, self._conn._impl) as timer:
            ch._flush_output(lambda: not self._pending, timer.is_ready)
        if self._pending:
            logger.warning("amqp queue %s: the broker did not confirm %d publish(es) within %.1fs; "
                           "they will be sent again", self.name, len(self._pending), remaining)
            self._pending.clear()
        accepted = [self._outcome.get(first + i, False) for i in range(len(batch))]
        if self._returned:  # unroutable: the queue was deleted under us; declare it again, send again
            logger.warning("amqp queue %s: %d message(s) came back unroutable; declaring the queue again",
                           self.name, len(self._returned))
            for body in self._returned:
                for i, item in enumerate(batch):
                    if accepted[i] and item == body:
                        accepted[i] = False
                        break
            self._returned = []
            self._declare(ch)
        self._count_ready(sum(accepted))
        return accepted

    def _publish(self, items: list[bytes], timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        pending = items
        window = min(_PUBLISH_WINDOW, self.maxsize or _PUBLISH_WINDOW)
        delay = _POLL_MIN
        while pending:
            batch = pending[:window]
            accepted = self._run(lambda ch, batch=batch: self._publish_batch(ch, batch, deadline), deadline)
            taken = sum(accepted)
            pending = [item for item, ok in zip(batch, accepted) if not ok] + pending[len(batch):]
            if taken == len(batch):
                window = min(window * 2, _PUBLISH_WINDOW)
                delay = _POLL_MIN
                continue
            window = max(1, taken)  # the queue is (nearly) full: probe with less
            if taken:
                delay = _POLL_MIN
                continue
            delay = self._wait_for_room(deadline, delay)

    def _put(self, item: bytes, timeout: float | None) -> None:
        self._publish([item], timeout)

    def put_many(self, msgs: Iterable[Any], timeout: float | None = None) -> None:
        """Put every message in order, pipelining the publishes and their confirms.

        A queue that fills up part-way may take a later message of the batch before an
        earlier one that it refused and that is sent again.
        """
        self._check_open()
        self._publish([self._encode(m) for m in msgs], timeout)

    def put_encoded(self, items: list[Any], timeout: float | None = None, *,
                    ack: Iterable[Delivery] = ()) -> None:
        self._check_open()
        self._publish(items, timeout)
        _ack_all(ack)

    def offer_encoded(self, items: list[Any], acks: list[Delivery]) -> list[bool]:
        """:meth:`BaseQueue.offer_encoded`: the items are published together and their confirms
        waited for together; each one the broker took (it may refuse an earlier one and take
        a later one, as the queue fills) has its delivery acked."""
        self._check_open()
        queued: list[bool] = []
        window = min(_PUBLISH_WINDOW, self.maxsize or _PUBLISH_WINDOW)
        now = time.monotonic()
        while len(queued) < len(items):
            batch = items[len(queued):len(queued) + window]
            accepted = self._run(lambda ch, batch=batch: self._publish_batch(ch, batch, now), now)
            queued += accepted
            if not all(accepted):
                break
        queued += [False] * (len(items) - len(queued))
        _ack_all([d for d, ok in zip(acks, queued) if ok])
        return queued

    # -- consumer side ------------------------------------------------------------------
    def _on_delivery(self, generation: int, _channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        """pika's consumer callback (dispatched by process_data_events, under the lock)."""
        if generation != self._generation:  # a channel since closed: its tags are void
            return
        tag = method.delivery_tag
        self._buffer.append((tag, body))
        self._arrived += 1
        if tag > self._max_tag:
            self._max_tag = tag

    def _on_broker_cancel(self, method_frame: Any) -> None:
        """RabbitMQ cancelled the consumer (the queue was deleted): the next receive starts one again."""
        if method_frame.method.consumer_tag == self._consumer:
            logger.warning("amqp queue %s: the broker cancelled the consumer; starting it again on the next "
                           "receive", self.name)
            self._consumer = None

    def _current_held(self) -> int:
        """Deliveries of the running consumer not settled yet (handed out or buffered)."""
        floor = self._floor
        return sum(1 for t in self._unacked if t > floor) + sum(1 for t, _b in self._buffer if t > floor)

    def _consume(self, ch: Any, count: int) -> bool:
        """Make sure a consumer runs with room for batches of *count*; False when none can start
        because *prefetch* deliveries are held unacked (and the buffer is empty)."""
        want = self._want = min(self.prefetch, max(self._want, _MIN_PREFETCH, count))
        if self._consumer is not None:
            if want <= self._qos:
                return True
            # Started small, or with deliveries of an earlier consumer still out (per-consumer
            # prefetch does not count those): start again with more room once there is some.
            floor = self._floor
            old = sum(1 for t in self._unacked if t <= floor) + sum(1 for t, _b in self._buffer if t <= floor)
            if want - old < self._qos + max(1, want // 4):
                return True
            ch.basic_cancel(self._consumer)  # buffered deliveries stay valid on the channel
            self._consumer = None
        room = want - len(self._unacked) - len(self._buffer)
        if room < 1:
            return bool(self._buffer)
        ch.basic_qos(prefetch_count=room)
        self._floor = self._max_tag
        self._consumer = ch.basic_consume(self.queue_name, functools.partial(self._on_delivery, self._generation),
                                          auto_ack=False)
        self._qos = room
        # What is ready is pushed right after consume-ok, ahead of the reply to a later command.
        self._probe(ch)
        self._conn.process_data_events(0)
        return True

    def _stop_consumer(self, ch: Any) -> None:
        """Cancel the consumer and hand its buffer back (basic.nack with requeue; the caller flushes).

        RabbitMQ puts requeued messages back at their places in the queue."""
        if self._consumer is not None:
            tag, self._consumer = self._consumer, None
            ch.basic_cancel(tag)  # pika rejects (requeues) what arrives until cancel-ok
        while self._buffer:
            ch._impl.basic_nack(self._buffer.popleft()[0], multiple=False, requeue=True)

    def _probe(self, ch: Any) -> int:
        """Ready messages in the queue, as the broker counts them now (one round trip)."""
        ready = ch.queue_declare(self.queue_name, passive=True).method.message_count
        self._ready_cache = (time.monotonic(), ready, self._arrived)
        return ready

    def _count_ready(self, delta: int) -> None:
        """This object changed the ready count by *delta*: keep the qsize cache in step."""
        at, ready, arrived = self._ready_cache
        self._ready_cache = (at, max(0, ready + delta), arrived)

    def _note_capped(self) -> None:
        log = logger.debug if self._capped else logger.warning
        self._capped = True
        log("amqp queue %s: %d deliveries are unacknowledged (prefetch=%d); taking no more until "
            "some are acked (raise ?prefetch= if a consumer should hold more)",
            self.name, len(self._unacked), self.prefetch)

    def _pump(self, ch: Any, time_limit: float) -> None:
        """process_data_events: dispatch deliveries into the buffer; raise if that found the
        connection or channel closed (pika may only mark it so), so that the buffer is dropped."""
        self._conn.process_data_events(time_limit)
        if not (self._conn.is_open and ch.is_open):
            raise pika.exceptions.AMQPConnectionError(f"amqp queue {self.name!r}: the connection was closed")

    def _take_once(self, ch: Any, count: int, deadline: float | None, settle: bool,
                   first: bool) -> list[tuple[bytes, Any]] | None:
        """Up to *count* deliveries from the buffer; None: none yet, and *deadline* is ahead."""
        self._last_take = now = time.monotonic()
        if not self._consume(ch, count):
            if first:
                self._note_capped()
            return [] if deadline is not None and now >= deadline else _CAPPED
        buf = self._buffer
        if len(buf) < count or now - self._read_at > _FRESH:
            # Dispatch what has arrived, and find out about a connection that died meanwhile (its
            # buffered deliveries are void: RabbitMQ delivers them again). pika reads once per
            # pump: read on while there was something, so that data ahead of an EOF does not hide it.
            for _ in range(4):
                arrived = self._arrived
                self._pump(ch, 0)
                if self._arrived == arrived:
                    break
            self._read_at = now
        if not buf:
            remaining = None if deadline is None else deadline - now
            if remaining is None or remaining > 0:
                self._pump(ch, _WAIT_SLICE if remaining is None else min(_WAIT_SLICE, remaining))
                if not buf:
                    return None if deadline is None or time.monotonic() < deadline else []
            elif not first:
                return []
            elif self._current_held() >= self._qos:
                self._note_capped()
                return []
            else:  # timeout=0: is anything on its way?
                ready = self._probe(ch)
                self._pump(ch, 0)
                if not buf and ready:  # ready while we have room: the broker is pushing them
                    self._pump(ch, _SETTLE)
                if not buf:
                    return []
        out = [buf.popleft() for _ in range(min(count, len(buf)))]
        tags = [t for t, _b in out]
        if settle:  # get/get_many: acknowledged before they are returned
            self._ack_tags(ch, tags)
            ch._flush_output()
            return [(body, None) for _t, body in out]
        self._unacked.update(tags)
        generation = self._generation
        return [(body, (generation, t)) for t, body in out]

    def _take(self, count: int, timeout: float | None, settle: bool = False) -> list[tuple[bytes, Any]]:
        """Up to *count* deliveries from the consumer, waiting up to *timeout* for the first."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        first = True
        delay = _POLL_MIN
        while True:
            got = self._run(lambda ch: self._take_once(ch, count, deadline, settle, first), deadline)
            first = False
            if got is _CAPPED:  # prefetch used up: wait for acks (of other threads) without the lock
                remaining = None if deadline is None else deadline - time.monotonic()
                time.sleep(delay if remaining is None else max(0.0, min(delay, remaining)))
                delay = min(delay * 2, _POLL_MAX)
            elif got is not None:
                return got

    def _ack_tags(self, ch: Any, tags: list[int]) -> None:
        """basic.ack *tags* of this channel (the caller flushes): one ack with *multiple* when no
        other delivery up to the last of them is held, else one each."""
        unacked = self._unacked
        for t in tags:
            unacked.discard(t)
        last = max(tags)
        if (not self._buffer or self._buffer[0][0] > last) and all(t > last for t in unacked):
            ch._impl.basic_ack(last, multiple=True)
        else:
            for t in tags:
                ch._impl.basic_ack(t, multiple=False)

    def _get(self, timeout: float | None) -> tuple[bytes, Any]:
        got = self._take(1, timeout)
        if not got:
            raise QueueEmpty(f"queue {self.name!r} is empty")
        return got[0]

    def receive_many(self, max_items: int, timeout: float | None = 0) -> list[Delivery]:
        """Wait up to *timeout* for one message, then take what is there, up to *max_items*."""
        self._check_open()
        if max_items <= 0:
            return []
        out = []
        for body, tag in self._take(max_items, timeout):
            try:
                out.append(Delivery(self._decode(body, tag), tag, self))
            except SerializationError:
                pass
        return out

    # at-most-once: from the running consumer, else basic.get
    def _basic_get(self, ch: Any, count: int) -> list[tuple[bytes, Any]]:
        out: list[tuple[bytes, Any]] = []
        started = time.monotonic()
        while len(out) < count:
            method, _props, body = ch.basic_get(self.queue_name, auto_ack=True)
            if method is None:
                self._ready_cache = (time.monotonic(), 0, self._arrived)
                break
            out.append((body, None))
            self._ready_cache = (time.monotonic(), method.message_count, self._arrived)
            if time.monotonic() - started > _RECEIVE_BUDGET:
                break
        return out

    def _fetch(self, count: int, timeout: float | None) -> list[tuple[bytes, Any]]:
        """Take up to *count* messages acknowledged on delivery, waiting up to *timeout* for the first."""
        self._check_pid()
        if self._consumer is not None or self._buffer:
            return self._take(count, timeout, settle=True)
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        delay = _POLL_MIN
        while True:
            got = self._run(lambda ch: self._basic_get(ch, count), deadline)
            if got:
                return got
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            time.sleep(delay if remaining is None else min(delay, remaining))
            delay = min(delay * 2, _POLL_MAX)

    def get(self, timeout: float | None = None) -> Any:
        """Take a message acknowledged on delivery; raise QueueEmpty after *timeout*."""
        self._check_open()
        got = self._fetch(1, timeout)
        if not got:
            raise QueueEmpty(f"queue {self.name!r} is empty")
        return self._decode(got[0][0], None)

    def get_many(self, max_items: int, timeout: float | None = 0) -> list[Any]:
        self._check_open()
        if max_items <= 0:
            return []
        out = []
        for body, _tag in self._fetch(max_items, timeout):
            try:
                out.append(self._decode(body, None))
            except SerializationError:
                pass
        return out

    # settling
    def _settle(self, tag: tuple[int, int] | None, requeue: bool | None) -> None:
        """basic.ack (*requeue* None) or basic.nack; a tag from a dead connection is only logged."""
        if tag is None:
            return
        self._check_pid()
        generation, delivery_tag = tag
        with self._lock:
            if generation != self._generation or self._ch is None or not self._ch.is_open:
                logger.debug("amqp queue %s: delivery %d belongs to a closed connection; the broker "
                             "redelivers it", self.name, delivery_tag)
                return
            self._unacked.discard(delivery_tag)
            ch = self._ch
            try:
                if requeue is None:
                    ch.basic_ack(delivery_tag)
                elif requeue:
                    # back to its place in the queue, ahead of what this consumer has buffered:
                    # stop the consumer and hand the buffer back too (the next receive starts it again)
                    self._stop_consumer(ch)
                    ch.basic_nack(delivery_tag, requeue=True)
                else:
                    ch.basic_nack(delivery_tag, requeue=False)
            except _ERRORS as exc:
                logger.debug("amqp queue %s: settling delivery %d failed (%r); the broker redelivers it",
                             self.name, delivery_tag, exc)
                self._drop()

    def _ack(self, tag: tuple[int, int] | None) -> None:
        self._settle(tag, None)

    def _reject(self, tag: tuple[int, int] | None, requeue: bool) -> None:
        self._settle(tag, requeue)

    def _ack_many(self, tags: list[Any]) -> None:
        """Acknowledge several deliveries with one write (one ack with *multiple* where it can)."""
        self._check_pid()
        with self._lock:
            ch = self._ch
            current = [t for g, t in (tag for tag in tags if tag is not None) if g == self._generation]
            if len(current) < sum(tag is not None for tag in tags):
                logger.debug("amqp queue %s: %d deliveries belong to a closed connection; the broker "
                             "redelivers them", self.name, sum(tag is not None for tag in tags) - len(current))
            if not current or ch is None or not ch.is_open:
                return
            try:
                self._ack_tags(ch, current)
                ch._flush_output()
            except _ERRORS as exc:
                logger.debug("amqp queue %s: acking %d deliveries failed (%r); the broker redelivers them",
                             self.name, len(current), exc)
                self._drop()

    # -- state --------------------------------------------------------------------------
    def _qsize(self) -> int:
        """Ready messages (asked of the broker at most every _QSIZE_TTL; this object's own puts
        and takes counted at once) plus those buffered here."""
        self._check_pid()
        with self._lock:
            at, ready, arrived = self._ready_cache
            if not 0 <= time.monotonic() - at < _QSIZE_TTL:
                self._run(self._probe, time.monotonic())
                at, ready, arrived = self._ready_cache
            if self._consumer is not None:  # count deliveries that arrived and wait for dispatch
                self._run(lambda _ch: self._conn.process_data_events(0), time.monotonic())
            return max(0, ready - (self._arrived - arrived)) + len(self._buffer)

    def _close(self) -> None:
        self._keeper_stop.set()
        self._check_pid()
        with self._lock:
            self._drop()  # cancels the consumer; RabbitMQ requeues whatever this connection held unacked

    def __repr__(self) -> str:
        return f"<AmqpQueue {self.queue_name!r} maxsize={self.maxsize} {self.url}>"

