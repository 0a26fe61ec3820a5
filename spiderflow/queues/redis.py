"""``redis://``: bounded queues on Redis lists, with a reliable hand-off (Redis 6.2 or newer).

Connection string::

    redis://[[user]:password@]host:6379/0[?prefix=spiderflow&visibility_timeout=60]

The prefix is the URL's ``?prefix=``, else the ``queue_prefix`` setting (``--queue-prefix``),
else ``spiderflow``: clusters that share a database need prefixes of their own.
Queue *name* is the list ``{prefix}:{name}``: producers push at its tail, and a Lua script
checks the length and pushes in one step, so concurrent producers never take it past
*maxsize*. ``receive()`` moves a message (``LMOVE``/``BLMOVE``) into this consumer's
in-flight list ``{prefix}:{name}:inflight:{consumer}``; ``ack()`` removes it from there,
``reject()`` puts it back at the head of the queue. A consumer keeps the key
``{prefix}:{name}:consumer:{consumer}`` alive (TTL *visibility_timeout*, refreshed by a
light thread and on every receive); when a consumer dies its key expires, and the next
receive on that queue by any consumer moves the dead consumer's in-flight messages back to
the head of the queue, in one script, so they come back exactly once. ``close()`` hands back
what this consumer still holds. ``get()`` is at-most-once (a plain pop, nothing in flight).

Messages put back (reject, recovery, close) may take the queue past *maxsize* for a while:
backpressure never drops a message. Delivery is at-least-once: a command retried after a
lost reply may push a message twice, and messages a receive moved but never saw (its reply
was lost) are found and handed back by the next receive. The in-flight keys live outside KEYS in the scripts,
so Redis Cluster is not supported.

The scheduler lock on redis is in :mod:`spiderflow.queues.redis_lock`.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..exceptions import (
    ConfigError,
    QueueEmpty,
    QueueError,
    QueueFull,
    SerializationError,
    redact_url,
)
from .base import BaseQueue, Delivery, _ack_all

logger = logging.getLogger(__name__)

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "spiderflow"
DEFAULT_VISIBILITY_TIMEOUT = 60.0   # seconds a silent consumer keeps its in-flight messages
_RECLAIM_EVERY = 5.0                # look for dead consumers at most this often (seconds)
_BLOCK_SLICE = 5.0                  # longest single BLMOVE/BLPOP, so waits still reclaim
_PUSH_CHUNK = 1000                  # messages per put script call
_FULL_FRESH = 0.005                 # seconds the length a push saw answers full()
_POLL_MIN, _POLL_MAX = 0.002, 0.05  # backoff while waiting for room
_MIN_VERSION = (6, 2)               # LMOVE, BLMOVE, LPOP count

# KEYS: queue; ARGV: maxsize, item... -> how many were pushed (a prefix of the items)
_PUSH = """
local room = #ARGV - 1
local maxsize = tonumber(ARGV[1])
if maxsize > 0 then
  room = math.min(room, maxsize - redis.call('LLEN', KEYS[1]))
end
if room <= 0 then return 0 end
redis.call('RPUSH', KEYS[1], unpack(ARGV, 2, room + 1))
return room
"""

# KEYS: queue, in-flight list of the deliveries to ack; ARGV: maxsize, number of tags, tag..., item...
# -> {-1, length} when the queue has no room for every item (nothing done), else
#    {how many tags were in flight, length after the push}
_PUSH_ACK = """
local ntags = tonumber(ARGV[2])
local first = ntags + 3
local maxsize = tonumber(ARGV[1])
local length = redis.call('LLEN', KEYS[1])
if maxsize > 0 and #ARGV >= first and length + #ARGV - first + 1 > maxsize then
  return {-1, length}
end
if #ARGV >= first then length = redis.call('RPUSH', KEYS[1], unpack(ARGV, first, #ARGV)) end
local found = 0
for i = 3, ntags + 2 do found = found + redis.call('LREM', KEYS[2], 1, ARGV[i]) end
return {found, length}
"""

# KEYS: queue, inflight, heartbeat, consumers; ARGV: count, ttl_ms, consumer id
_TAKE = """
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[4], ARGV[3])
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local item = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not item then break end
  out[#out + 1] = item
end
return out
"""

# KEYS: inflight, queue; ARGV: item, requeue ('1'/'0') -> 1 if the item was still in flight
_SETTLE = """
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
if n == 1 and ARGV[2] == '1' then redis.call('LPUSH', KEYS[2], ARGV[1]) end
return n
"""

# KEYS: queue, consumers; ARGV: inflight key prefix, heartbeat key prefix, only this consumer ('' = every dead one)
# Moves the in-flight messages of consumers whose heartbeat expired back to the queue head,
# oldest first in line. Returns {consumer, count, ...}.
_RECLAIM = """
local out = {}
local ids = redis.call('SMEMBERS', KEYS[2])
if ARGV[3] ~= '' then ids = {ARGV[3]} end
for _, cid in ipairs(ids) do
  if ARGV[3] ~= '' or redis.call('EXISTS', ARGV[2] .. cid) == 0 then
    local inflight = ARGV[1] .. cid
    local n = 0
    while redis.call('LMOVE', inflight, KEYS[1], 'RIGHT', 'LEFT') do n = n + 1 end
    redis.call('SREM', KEYS[2], cid)
    redis.call('DEL', ARGV[2] .. cid)
    if n > 0 then out[#out + 1] = cid; out[#out + 1] = n end
  end
end
return out
"""


def _parse_url(url: str) -> dict[str, Any]:
    """Connection keywords and queue options from *url*; ConfigError names what is wrong."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError as exc:
        raise ConfigError(f"bad redis queue URL {shown!r}: {exc}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"not a redis URL: {shown!r}")
    if parts.fragment:
        raise ConfigError(f"unexpected '#{parts.fragment}' in redis queue URL {shown!r}")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ConfigError(f"the path of redis queue URL {shown!r} must be a database number, not {db!r}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - {"prefix", "visibility_timeout"})
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} in redis queue URL {shown!r}; "
                          "known: prefix, visibility_timeout")
    prefix = query.get("prefix")
    if prefix is not None:
        _check_prefix(prefix, f"prefix in redis queue URL {shown!r}")
    try:
        visibility = float(query.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT))
    except ValueError:
        visibility = -1.0
    if not visibility > 0:
        raise ConfigError(f"visibility_timeout in redis queue URL {shown!r} must be a positive number of seconds")
    return {
        "connection": {
            "host": parts.hostname or "127.0.0.1", "port": port, "db": int(db),
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            "ssl": parts.scheme == "rediss",
        },
        "prefix": prefix,
        "visibility_timeout": visibility,
    }


def _check_prefix(prefix: str, what: str) -> str:
    if not prefix or any(c.isspace() for c in prefix):
        raise ConfigError(f"{what} must be a non-empty word, not {prefix!r}")
    return prefix


def _prefix(options: dict[str, Any], prefix: str | None) -> str:
    """The URL's prefix, else *prefix* (the queue_prefix setting), else the default."""
    if options["prefix"]:
        return options["prefix"]
    return _check_prefix(prefix, "the queue prefix (--queue-prefix)") if prefix is not None else DEFAULT_PREFIX


def _client(options: dict[str, Any], **kwargs: Any) -> redis.Redis:
    return redis.Redis(**options["connection"], socket_connect_timeout=5, health_check_interval=30,
                       retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1), **kwargs)


def _consumer_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def _keep_alive(ref: weakref.ref, stop: threading.Event, client: redis.Redis, keys: tuple[str, str],
                consumer: str, ttl_ms: int, interval: float) -> None:
    """Refresh a consumer's heartbeat until *stop*, or until its queue is garbage."""
    heartbeat, consumers = keys
    while not stop.wait(interval):
        if ref() is None:
            return
        try:
            with client.pipeline(transaction=False) as pipe:
                pipe.set(heartbeat, "1", px=ttl_ms).sadd(consumers, consumer).execute()
        except Exception as exc:  # keep beating: a dead heartbeat hands our messages to others
            logger.warning("redis heartbeat of consumer %s failed: %s", consumer, exc)


class _Consumer:
    """This process's identity as a consumer of one queue (made on the first receive)."""

    def __init__(self, queue: RedisQueue):
        self.id = _consumer_id()
        self.inflight = f"{queue.key}:inflight:{self.id}"
        self.heartbeat = f"{queue.key}:consumer:{self.id}"
        self.outstanding: collections.Counter[bytes] = collections.Counter()  # received, not yet settled
        self.stop = threading.Event()
        ttl_ms = int(queue.visibility_timeout * 1000)
        with queue._client.pipeline(transaction=False) as pipe:
            pipe.set(self.heartbeat, "1", px=ttl_ms).sadd(queue._consumers, self.id).execute()
        self.thread = threading.Thread(
            target=_keep_alive, name=f"spiderflow-redis-heartbeat-{queue.name}", daemon=True,
            args=(weakref.ref(queue), self.stop, queue._client, (self.heartbeat, queue._consumers),
                  self.id, ttl_ms, queue.visibility_timeout / 3))
        self.thread.start()


class RedisQueue(BaseQueue):
    """A bounded queue on a Redis list; see the module docstring for the keys and the hand-off."""

    scheme = "redis"
    reliable = True
    prefixed = True

    def __init__(self, name: str, maxsize: int = 0, url: str = DEFAULT_URL, *,
                 prefix: str | None = None, visibility_timeout: float | None = None):
        super().__init__(name, maxsize)
        options = _parse_url(url)
        self.url = redact_url(url)
        self.prefix = _prefix(options, prefix)
        self.visibility_timeout = float(visibility_timeout or options["visibility_timeout"])
        self.key = f"{self.prefix}:{name}"
        self._consumers = f"{self.key}:consumers"
        self._reclaim_every = min(_RECLAIM_EVERY, self.visibility_timeout / 2)
        self._next_reclaim = 0.0
        self._client = _client(options, socket_timeout=_BLOCK_SLICE + 10)
        self._server = options["connection"]    # queues of one server can hand over in one script
        self._push_script = self._client.register_script(_PUSH)
        self._push_ack_script = self._client.register_script(_PUSH_ACK)
        self._take_script = self._client.register_script(_TAKE)
        self._settle_script = self._client.register_script(_SETTLE)
        self._reclaim_script = self._client.register_script(_RECLAIM)
        self._pid = os.getpid()
        self._state_lock = threading.Lock()     # consumer state and its outstanding counter
        self._receive_lock = threading.Lock()   # one receive at a time moves into our in-flight list
        self._consumer: _Consumer | None = None
        self._lost_replies = False               # a receive failed mid-call: our list may hold orphans
        self._length_seen: tuple[float, int] | None = None     # (when, length) the last push+ack saw
        self._check_server()

    # -- plumbing -----------------------------------------------------------------------
    @contextmanager
    def _errors(self, receiving: bool = False) -> Iterator[None]:
        try:
            yield
        except redis.AuthenticationError as exc:
            raise ConfigError(f"redis at {self.url} refused the credentials: {exc}") from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if receiving:
                self._lost_replies = True
            raise QueueError(f"redis queue {self.name!r}: cannot reach {self.url}: {exc}") from exc
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise ConfigError(f"redis at {self.url} needs a password: {exc}") from exc
            raise QueueError(f"redis queue {self.name!r} at {self.url}: {exc}") from exc

    def _check_server(self) -> None:
        with self._errors():
            try:
                info = self._client.info("server")
            except redis.ResponseError as exc:  # an ACL user without INFO: trust the server
                if "NOPERM" not in str(exc):
                    raise
                self._client.ping()
                return
        version = tuple(int(p) for p in str(info.get("redis_version", "0.0")).split(".")[:2] if p.isdigit())
        if version < _MIN_VERSION:
            raise ConfigError(f"the redis queue needs Redis {'.'.join(map(str, _MIN_VERSION))} or newer; "
                              f"{self.url} runs {info.get('redis_version')}")

    def _check_pid(self) -> None:
        """After a fork the child is a new consumer (redis-py renews the connections itself)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._state_lock = threading.Lock()
            self._receive_lock = threading.Lock()
            self._consumer = None
            self._lost_replies = False

    def _consumer_here(self) -> _Consumer:
        with self._state_lock:
            if self._consumer is None:
                self._consumer = _Consumer(self)
            return self._consumer

    def _ttl_ms(self) -> int:
        return int(self.visibility_timeout * 1000)

    def _deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else time.monotonic() + max(0.0, timeout)

    # -- producer side ------------------------------------------------------------------
    def _push(self, items: list[bytes], timeout: float | None) -> None:
        """Push *items* in order; a QueueFull says in ``sent`` how many of them went (a prefix)."""
        deadline = self._deadline(timeout)
        delay = _POLL_MIN
        done = 0
        while done < len(items):
            chunk = items[done:done + _PUSH_CHUNK]
            with self._errors():
                pushed = int(self._push_script(keys=[self.key], args=[self.maxsize, *chunk]))
            done += pushed
            if pushed:
                delay = _POLL_MIN
                continue
            try:
                delay = self._wait_for_room(deadline, delay)
            except QueueFull as exc:
                exc.sent = done
                raise

    def _put(self, item: bytes, timeout: float | None) -> None:
        self._push([item], timeout)

    def put_many(self, msgs: Iterable[Any], timeout: float | None = None) -> None:
        """Put every message in order, up to a thousand per round trip."""
        self._check_open()
        self._push([self._encode(m) for m in msgs], timeout)

    def put_encoded(self, items: list[Any], timeout: float | None = None, *,
                    ack: Iterable[Delivery] = ()) -> None:
        """:meth:`BaseQueue.put_encoded`; deliveries of a queue on the same server are acked in
        the same script call as the push, so a crash or a lost reply can never leave the
        messages queued and the deliveries handed back (or the other way round). With *ack*,
        the items go all at once or, on QueueFull, none of them (unless there are more than
        the queue's bound)."""
        self._check_open()
        ack = list(ack)
        source, tags = self._acks_here(ack)
        if source is None or len(items) + len(tags) > _PUSH_CHUNK:
            self._push(items, timeout)
            _ack_all(ack)
            return
        consumer = source._consumer
        deadline = self._deadline(timeout)
        delay = _POLL_MIN
        while True:
            with self._errors():
                found, length = self._push_ack_script(keys=[self.key, consumer.inflight],
                                                      args=[self.maxsize, len(tags), *tags, *items])
            self._length_seen = (time.monotonic(), int(length))
            if found >= 0:
                break
            if len(items) > self.maxsize:   # can never fit at once: in parts, then the acks
                self._push(items, timeout)
                source.ack_many(ack)
                return
            delay = self._wait_for_room(deadline, delay)    # QueueFull past the deadline: nothing done
        for delivery in ack:
            delivery._settled = True
        source._forget(consumer, tags, len(tags) - found)

    def offer_encoded(self, items: list[Any], acks: list[Delivery]) -> list[bool]:
        """:meth:`BaseQueue.offer_encoded` as one :meth:`put_encoded`: all of them, pushed and
        acked in one script call, or (no room for all) none; where the push went in parts,
        the part that went (a prefix) is acked."""
        try:
            self.put_encoded(items, 0, ack=acks)
        except QueueFull as exc:
            sent = exc.sent or 0
            _ack_all(acks[:sent])
            return [True] * sent + [False] * (len(items) - sent)
        return [True] * len(items)

    def mark(self) -> None:
        """Leave a mark that :meth:`marked` finds until Redis loses its data (a restart of a
        Redis that keeps nothing on disk, a FLUSHDB): the scheduler marks its out queue, so
        that after its own restart it knows whether the tasks it had in flight can still be
        in the queues (see persisted leases in :mod:`spiderflow.scheduler.scheduler`)."""
        with self._errors():
            self._client.set(f"{self.key}:mark", "1")

    def marked(self) -> bool:
        """Whether the mark of :meth:`mark` is there."""
        with self._errors():
            return bool(self._client.exists(f"{self.key}:mark"))

    def full(self) -> bool:
        """Whether the queue is at its bound; the length a push of this object saw within the last
        few milliseconds answers without a round trip (a fetcher asks right after each put)."""
        if not self.maxsize:
            return False
        seen = self._length_seen
        if seen is not None and time.monotonic() - seen[0] < _FULL_FRESH:
            return seen[1] >= self.maxsize
        return super().full()

    def _acks_here(self, ack: list[Delivery]) -> tuple[RedisQueue | None, list[bytes]]:
        """The queue of *ack* and their tags, if one script on this server can settle them all."""
        if not ack:
            return None, []
        source = ack[0]._queue
        if not isinstance(source, RedisQueue) or source._server != self._server or source.closed \
                or source._pid != os.getpid() or source._consumer is None:
            return None, []
        tags = []
        for delivery in ack:
            if delivery._queue is not source or delivery._settled or delivery.tag is None:
                return None, []
            tags.append(delivery.tag)
        return source, tags

    # -- consumer side ------------------------------------------------------------------
    def _maybe_reclaim(self, receiving: bool = False) -> None:
        """Hand back the in-flight messages of dead consumers (at most every few seconds).

        *receiving*: called under the receive lock, so our own orphans may be swept too.
        """
        now = time.monotonic()
        if now < self._next_reclaim:
            return
        self._next_reclaim = now + self._reclaim_every
        found = self._reclaim_script(keys=[self.key, self._consumers],
                                     args=[f"{self.key}:inflight:", f"{self.key}:consumer:", ""])
        for cid, count in zip(found[::2], found[1::2]):
            logger.warning("queue %s: consumer %s stopped answering; %d message(s) it held are back in the queue",
                           self.name, cid.decode(errors="replace"), int(count))
        if receiving and self._lost_replies and self._consumer is not None:
            self._sweep_orphans(self._consumer)

    def _sweep_orphans(self, consumer: _Consumer) -> None:
        """After a lost reply, hand back in-flight messages that no Delivery of ours holds."""
        self._lost_replies = False
        held = collections.Counter(self._client.lrange(consumer.inflight, 0, -1))
        with self._state_lock:
            orphans = held - consumer.outstanding
        for item, count in orphans.items():
            for _ in range(count):
                self._settle_script(keys=[consumer.inflight, self.key], args=[item, "1"])
        if orphans:
            logger.warning("queue %s: handed back %d message(s) whose receive lost its reply",
                           self.name, sum(orphans.values()))

    def _take(self, consumer: _Consumer, count: int) -> list[bytes]:
        return self._take_script(keys=[self.key, consumer.inflight, consumer.heartbeat, self._consumers],
                                 args=[count, self._ttl_ms(), consumer.id])

    def _held(self, consumer: _Consumer, items: list[bytes]) -> list[bytes]:
        with self._state_lock:
            consumer.outstanding.update(items)
        return items

    def _move(self, count: int, timeout: float | None) -> list[bytes]:
        """Move up to *count* messages into our in-flight list, waiting up to *timeout* for the first."""
        self._check_pid()
        with self._receive_lock, self._errors(receiving=True):
            consumer = self._consumer_here()
            self._maybe_reclaim(receiving=True)
            items = self._take(consumer, count)
            if items or (timeout is not None and timeout <= 0):
                return self._held(consumer, items)
            deadline = self._deadline(timeout)
            while True:
                wait = _BLOCK_SLICE if deadline is None else min(_BLOCK_SLICE, deadline - time.monotonic())
                if wait < 0.01:  # BLMOVE 0 would block for ever: one last look instead
                    return self._held(consumer, self._take(consumer, count))
                item = self._client.blmove(self.key, consumer.inflight, wait, "LEFT", "RIGHT")
                if item is not None:
                    more = self._take(consumer, count - 1) if count > 1 else []
                    return self._held(consumer, [item, *more])
                self._maybe_reclaim(receiving=True)

    def _get(self, timeout: float | None) -> tuple[bytes, bytes]:
        items = self._move(1, timeout)
        if not items:
            raise QueueEmpty(f"queue {self.name!r} is empty")
        return items[0], items[0]

    def receive_many(self, max_items: int, timeout: float | None = 0) -> list[Delivery]:
        """Wait up to *timeout* for one message, then take up to *max_items* in the same round trip."""
        self._check_open()
        if max_items <= 0:
            return []
        out = []
        for item in self._move(max_items, timeout):
            try:
                out.append(Delivery(self._decode(item, item), item, self))
            except SerializationError:
                pass
        return out

    def _pop(self, count: int, timeout: float | None) -> list[bytes]:
        """At-most-once: pop up to *count* messages, waiting up to *timeout* for the first."""
        self._check_pid()
        with self._errors():
            self._maybe_reclaim()
            items = self._client.lpop(self.key, count) or []
            if items or (timeout is not None and timeout <= 0):
                return items
            deadline = self._deadline(timeout)
            while True:
                wait = _BLOCK_SLICE if deadline is None else min(_BLOCK_SLICE, deadline - time.monotonic())
                if wait < 0.01:
                    return self._client.lpop(self.key, count) or []
                popped = self._client.blpop([self.key], wait)
                if popped is not None:
                    more = (self._client.lpop(self.key, count - 1) or []) if count > 1 else []
                    return [popped[1], *more]
                self._maybe_reclaim()

    def get(self, timeout: float | None = None) -> Any:
        """Pop a message (nothing stays in flight); raise QueueEmpty after *timeout* seconds."""
        self._check_open()
        items = self._pop(1, timeout)
        if not items:
            raise QueueEmpty(f"queue {self.name!r} is empty")
        return self._decode(items[0], None)

    def get_many(self, max_items: int, timeout: float | None = 0) -> list[Any]:
        """Pop up to *max_items* messages in one round trip (after waiting up to *timeout* for one)."""
        self._check_open()
        if max_items <= 0:
            return []
        out = []
        for item in self._pop(max_items, timeout):
            try:
                out.append(self._decode(item, None))
            except SerializationError:
                pass
        return out

    def _settle(self, tag: bytes | None, requeue: bool | None) -> None:
        """Ack (*requeue* None) or reject a delivery; errors are logged, never raised."""
        if tag is None:
            return
        consumer = self._consumer if self._pid == os.getpid() else None
        if consumer is None or self.closed:
            logger.debug("queue %s: settling a delivery after close (it was handed back)", self.name)
            return
        try:
            if requeue is None:
                found = self._client.lrem(consumer.inflight, 1, tag)
            else:
                found = self._settle_script(keys=[consumer.inflight, self.key], args=[tag, "1" if requeue else "0"])
        except redis.RedisError as exc:
            logger.warning("queue %s: could not settle a delivery (%s); it stays in flight and comes "
                           "back when this consumer closes or dies", self.name, exc)
            return
        with self._state_lock:
            consumer.outstanding[tag] -= 1
            if consumer.outstanding[tag] <= 0:
                del consumer.outstanding[tag]
        if not found:
            logger.warning("queue %s: a delivery was no longer in flight when settled: it was handed back "
                           "after visibility_timeout=%ss and will be delivered again", self.name,
                           self.visibility_timeout)

    def _ack(self, tag: bytes | None) -> None:
        self._settle(tag, None)

    def _ack_many(self, tags: list[bytes | None]) -> None:
        """Ack several deliveries in one pipelined round trip; errors are logged, never raised."""
        tags = [t for t in tags if t is not None]
        consumer = self._consumer if self._pid == os.getpid() else None
        if not tags or consumer is None or self.closed:
            return
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for tag in tags:
                    pipe.lrem(consumer.inflight, 1, tag)
                found = pipe.execute()
        except redis.RedisError as exc:
            logger.warning("queue %s: could not settle %d deliveries (%s); they stay in flight and come "
                           "back when this consumer closes or dies", self.name, len(tags), exc)
            return
        self._forget(consumer, tags, sum(1 for n in found if not n))

    def _forget(self, consumer: _Consumer, tags: list[bytes], gone: int) -> None:
        """Settled *tags*, of which *gone* were no longer in flight: drop them from the bookkeeping."""
        with self._state_lock:
            for tag in tags:
                consumer.outstanding[tag] -= 1
                if consumer.outstanding[tag] <= 0:
                    del consumer.outstanding[tag]
        if gone:
            logger.warning("queue %s: %d deliveries were no longer in flight when settled: they were handed "
                           "back after visibility_timeout=%ss and will be delivered again", self.name, gone,
                           self.visibility_timeout)

    def _reject(self, tag: bytes | None, requeue: bool) -> None:
        self._settle(tag, requeue)

    # -- state ------------------------------------------------------------------------------
    def _qsize(self) -> int:
        with self._errors():
            return int(self._client.llen(self.key))

    def _close(self) -> None:
        consumer = self._consumer if self._pid == os.getpid() else None
        self._consumer = None
        try:
            if consumer is not None:
                consumer.stop.set()
                consumer.thread.join(1.0)  # so it does not renew the heartbeat after we remove it
                back = self._reclaim_script(keys=[self.key, self._consumers],
                                            args=[f"{self.key}:inflight:", f"{self.key}:consumer:", consumer.id])
                if back:
                    logger.info("queue %s: handed back %d unacknowledged message(s) on close", self.name, int(back[1]))
        except redis.RedisError as exc:
            logger.warning("queue %s: could not hand back in-flight messages on close (%s); another consumer "
                           "recovers them after %ss", self.name, exc, self.visibility_timeout)
        finally:  # connections busy in other threads finish their command and are dropped later
            self._client.connection_pool.disconnect(inuse_connections=False)

    def __repr__(self) -> str:
        return f"<RedisQueue {self.name!r} maxsize={self.maxsize} {self.url}>"

