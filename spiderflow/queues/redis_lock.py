"""The scheduler lock on ``redis://``: the key ``{prefix}:scheduler:lock``.

It is set if absent, with an expiry of :data:`LOCK_TTL` seconds, and renewed every
:data:`LOCK_RENEW` seconds by a thread of the scheduler; its value says who holds it. A
starting scheduler that finds it waits for it to expire (its holder may have been killed),
and is refused once it sees the holder renew it; a holder that was a process of this very
machine (same kernel boot, same pid namespace) and is gone is not waited for. The URL and
the prefix are those of the queues (:mod:`spiderflow.queues.redis`).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from typing import Any

import redis

from ..exceptions import ConfigError, redact_url
from .locks import SchedulerLock, holder_is_gone, holder_record, refused
from .locks import describe as describe_holder
from .redis import DEFAULT_URL, _client, _parse_url, _prefix

logger = logging.getLogger(__name__)

LOCK_TTL = 15.0         # seconds the lock outlives its last renewal
LOCK_RENEW = 5.0        # seconds between renewals
LOCK_MARGIN = 2.0       # a starting scheduler waits LOCK_TTL + this for a silent holder
_LOCK_POLL = 0.5        # ... looking this often

# KEYS: lock; ARGV: value, ttl_ms -> 1 renewed, 2 taken again (it had expired), 0 held by another
_RENEW = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not held then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return 2 end
return 0
"""

# KEYS: lock; ARGV: value -> deletes the lock if it is still ours
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisSchedulerLock(SchedulerLock):
    """The key ``{prefix}:scheduler:lock``, renewed by a daemon thread (see the module docstring).

    A starting scheduler that finds the key waits up to ``ttl + LOCK_MARGIN`` seconds for
    it to expire, since its holder may have been killed; it is refused (ConfigError) as soon
    as it sees the holder renew the key, or when the key has no expiry.
    """

    def __init__(self, url: str = DEFAULT_URL, *, prefix: str | None = None, ttl: float = LOCK_TTL,
                 renew: float | None = None, wait: float | None = None, **_options: Any):
        super().__init__()
        options = _parse_url(url)
        prefix = _prefix(options, prefix)
        self.key = f"{prefix}:scheduler:lock"
        self.where = f"{redact_url(url).split('?', 1)[0]} prefix {prefix}"
        self.ttl_ms = int(ttl * 1000)
        self.value = json.dumps({**holder_record(), "token": secrets.token_hex(8)})
        self._client = _client(options, socket_timeout=5)
        self._stop = threading.Event()
        try:
            self._acquire(ttl + LOCK_MARGIN if wait is None else wait)
        except redis.RedisError as exc:
            self._client.close()
            raise ConfigError(f"cannot take the scheduler lock on {self.where}: {exc}") from exc
        except BaseException:
            self._client.close()
            raise
        self._renew_script = self._client.register_script(_RENEW)
        renew = renew if renew is not None else min(LOCK_RENEW, ttl / 3)
        self._thread = threading.Thread(target=self._keep, args=(renew,), daemon=True,
                                        name="spiderflow-scheduler-lock")
        self._thread.start()

    def _acquire(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        last_ttl = None
        last_at = 0.0
        while not self._client.set(self.key, self.value, nx=True, px=self.ttl_ms):
            with self._client.pipeline(transaction=False) as pipe:
                holder, ttl = pipe.get(self.key).pttl(self.key).execute()
            now = time.monotonic()
            if holder is None:      # it expired (or was released) meanwhile
                continue
            who = describe_holder(holder)
            if holder_is_gone(holder):  # killed, on this very machine: no need to wait for the expiry
                self._client.register_script(_RELEASE)(keys=[self.key], args=[holder])
                logger.warning("the scheduler lock on %s was held by %s, which has died; taking it over",
                               self.where, who)
                continue
            if ttl == -1:
                raise refused(self.where, f"{who}; the key has no expiry: delete it if that scheduler is gone")
            if last_ttl is None:
                logger.warning("waiting for the scheduler lock held by %s (%s): it expires in %.1f s unless renewed",
                               who, self.where, ttl / 1000)
            elif ttl > last_ttl - (now - last_at) * 1000 + 100:
                # more left than the last reading minus the time since: renewed, its holder lives
                # (comparing readings alone misses renewals that fall in step with the polls)
                raise refused(self.where, who)
            if time.monotonic() >= deadline:
                raise refused(self.where, who)
            last_ttl, last_at = ttl, now
            time.sleep(_LOCK_POLL)
        logger.info("scheduler lock taken: %s", self.where)

    def _keep(self, interval: float) -> None:
        """Renew the key every *interval* seconds until released; lose it if another holds it."""
        while not self._stop.wait(interval):
            try:
                renewed = int(self._renew_script(keys=[self.key], args=[self.value, self.ttl_ms]))
            except redis.RedisError as exc:     # keep trying: the key lasts ttl after the last renewal
                logger.warning("could not renew the scheduler lock on %s: %s", self.where, exc)
                continue
            if renewed == 2:
                logger.warning("the scheduler lock on %s had expired (not renewed for %.0f s); taken again",
                               self.where, self.ttl_ms / 1000)
            elif not renewed:
                try:
                    holder = describe_holder(self._client.get(self.key) or b"?")
                except redis.RedisError:
                    holder = "another scheduler"
                self._lose(f"it expired while it could not be renewed and is now held by {holder}")
                return

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(5)
        try:
            self._client.register_script(_RELEASE)(keys=[self.key], args=[self.value])
        except redis.RedisError as exc:
            logger.warning("could not release the scheduler lock on %s (%s); it expires in %.0f s",
                           self.where, exc, self.ttl_ms / 1000)
        finally:
            self._client.close()
