"""The scheduler lock on ``amqp://``: the exclusive queue ``{prefix}.scheduler.lock``.

It is declared on a connection of its own, which a thread of the scheduler keeps alive:
RabbitMQ refuses the queue to every other connection (RESOURCE_LOCKED) and deletes it when
its connection closes or dies, so a killed scheduler's lock is free again as soon as the
broker sees its connection go (at worst after a few :data:`LOCK_HEARTBEAT` intervals). The
holder leaves a message saying who it is in ``{prefix}.scheduler.holder``. The URL and the
prefix are those of the queues (:mod:`spiderflow.queues.amqp`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import pika
import pika.exceptions

from ..exceptions import ConfigError, redact_url
from .amqp import _ERRORS, DEFAULT_URL, _parameters, _parse_url, _prefix
from .locks import SchedulerLock, describe, holder_record, refused

logger = logging.getLogger(__name__)

LOCK_WAIT = 5.0         # seconds a starting scheduler keeps trying a lock held by another connection
LOCK_HEARTBEAT = 10     # heartbeat of the lock's connection: RabbitMQ drops a silent holder in 2-3 of them
_POLL = 0.5             # seconds between tries of a held lock
_HOLDER_ARGUMENTS = {"x-max-length": 1, "x-overflow": "drop-head", "x-expires": 7 * 24 * 3600 * 1000}


class AmqpSchedulerLock(SchedulerLock):
    """The exclusive queue ``{prefix}.scheduler.lock`` on a connection of its own, which a
    daemon thread keeps alive (see the module docstring).

    A starting scheduler that finds it held tries again for *wait* seconds (RabbitMQ deletes
    the queue of a killed holder once it sees its connection close), then is refused.
    """

    def __init__(self, url: str = DEFAULT_URL, *, prefix: str | None = None, wait: float = LOCK_WAIT,
                 **_options: Any):
        super().__init__()
        options = _parse_url(url)
        prefix = _prefix(options, prefix)
        self.queue_name = f"{prefix}.scheduler.lock"
        self.holder_queue = f"{prefix}.scheduler.holder"
        self.where = f"{redact_url(url).split('?', 1)[0]} prefix {prefix}"
        self._params = _parameters(options, "spiderflow scheduler lock", heartbeat=LOCK_HEARTBEAT)
        self._record = json.dumps(holder_record()).encode()
        self._stop = threading.Event()
        self._conn = self._take(wait)
        self._thread = threading.Thread(target=self._keep, daemon=True, name="spiderflow-scheduler-lock")
        self._thread.start()

    def _connect(self) -> pika.BlockingConnection:
        try:
            return pika.BlockingConnection(self._params)
        except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError,
                pika.exceptions.ProbableAccessDeniedError) as exc:
            raise ConfigError(f"RabbitMQ at {self.where} refused the credentials or the vhost: {exc!r}") from exc
        except _ERRORS as exc:
            raise ConfigError(f"cannot take the scheduler lock on {self.where}: cannot connect: {exc!r}") from exc

    def _take(self, wait: float) -> pika.BlockingConnection:
        """A connection holding the exclusive queue; ConfigError if another keeps it for *wait* seconds."""
        deadline = time.monotonic() + wait
        logged = False
        while True:
            taken = self._try_take()
            if not isinstance(taken, str):
                logger.info("scheduler lock taken: %s", self.where)
                return taken
            if time.monotonic() >= deadline:
                raise refused(self.where, taken)
            if not logged:
                logger.warning("waiting for the scheduler lock held by %s (%s)", taken, self.where)
                logged = True
            time.sleep(_POLL)

    def _try_take(self) -> pika.BlockingConnection | str:
        """A connection holding the exclusive queue, or who holds it (ConfigError if neither)."""
        conn = self._connect()
        try:
            ch = conn.channel()
            ch.queue_declare(self.queue_name, exclusive=True)
            ch.queue_declare(self.holder_queue, arguments=_HOLDER_ARGUMENTS)
            ch.basic_publish("", self.holder_queue, self._record)
            return conn
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 405:   # not RESOURCE_LOCKED: something else is wrong
                _close(conn)
                raise ConfigError(f"cannot take the scheduler lock on {self.where}: {exc.reply_text}") from exc
            holder = self._holder(conn)
            _close(conn)
            return holder
        except _ERRORS as exc:
            _close(conn)
            raise ConfigError(f"cannot take the scheduler lock on {self.where}: {exc!r}") from exc

    def _holder(self, conn: pika.BlockingConnection) -> str:
        """Who holds the lock, from the message the holder left (put back at once)."""
        try:
            ch = conn.channel()
            method, _props, body = ch.basic_get(self.holder_queue, auto_ack=False)
            if method is None:
                return "a scheduler that did not say who it is"
            ch.basic_nack(method.delivery_tag, requeue=True)
            return describe(body)
        except _ERRORS:
            return "another scheduler"

    def _keep(self) -> None:
        """Answer heartbeats until released; if the connection dies, take the lock again or lose it."""
        while not self._stop.is_set():
            try:
                self._conn.process_data_events(time_limit=1)
                continue
            except _ERRORS as exc:
                logger.warning("the connection holding the scheduler lock on %s failed (%r); taking it again",
                               self.where, exc)
            _close(self._conn)
            while not self._stop.wait(1.0):
                try:
                    taken = self._try_take()
                except ConfigError as exc:
                    logger.warning("%s; trying again", exc)
                    continue
                if isinstance(taken, str):
                    self._lose(f"its connection to RabbitMQ died, and {taken} took the lock meanwhile")
                    return
                self._conn = taken
                logger.info("scheduler lock taken again: %s", self.where)
                break
        _close(self._conn)

    def release(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(5)


def _close(conn: pika.BlockingConnection | None) -> None:
    try:
        if conn is not None and conn.is_open:
            conn.close()
    except _ERRORS as exc:
        logger.debug("closing an amqp connection: %r", exc)
