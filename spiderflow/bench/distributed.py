"""The bench on real backends: ``spiderflow bench --queue redis://... --taskdb postgresql://...``.

The same processes as the default topology (:mod:`.pipeline`: one scheduler, ``--fetcher-num``
fetchers, ``--processor-num`` processors, ``--result-worker-num`` result workers), but they
share nothing but the broker and the databases, as the components of a cluster started one
command each do: every process opens its own connections after its fork, the queues are
the broker's (redis lists or RabbitMQ queues) and the databases those URLs name.

A run is kept apart from anything else on those services: its queues (and its scheduler
lock) carry a prefix of their own, ``sfbench<hex>``, deleted at the end; its project is
``bench_<hex>``, dropped from the databases at the end. The scheduler loads every RUNNING
project of the projectdb it is given, so the databases should be ones of the bench's own
(or hold no running project).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from typing import Any

from ..exceptions import ConfigError, redact_url
from ..queues import QUEUE_NAMES, connect_queues
from ..settings import Settings
from .pipeline import Processes

logger = logging.getLogger(__name__)

#: queue backends a distributed run can use
SHARED_SCHEMES = ("redis", "amqp")


def run_tag() -> str:
    """The mark of one run: its queue prefix is ``sfbench<tag>``, its project ``bench_<tag>``."""
    return secrets.token_hex(4)


def check_backends(settings: Settings) -> str:
    """The queue URL's scheme; ConfigError for one that processes cannot share."""
    scheme = (settings.queue or "").split("://", 1)[0].lower()
    if scheme not in SHARED_SCHEMES:
        raise ConfigError(f"bench --queue {redact_url(settings.queue or '')!r}: a distributed run needs a queue "
                          "that separate processes share: redis://HOST:6379/0 or amqp://USER:PASS@HOST:5672/VHOST "
                          "(without --queue the bench runs the `all` pipeline on multiprocessing queues)")
    return scheme


class Distributed(Processes):
    """:class:`~.pipeline.Processes` on the broker and databases of *settings* (see the module docstring)."""

    def __init__(self, settings: Settings, null_fetcher: bool):
        self.scheme = check_backends(settings)
        queues = connect_queues(settings.queue, settings.queue_bounds(), prefix=settings.queue_prefix)
        super().__init__(settings, null_fetcher, queues)
        self.name = f"distributed-{self.scheme}"

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            delete_queues(self.settings)


def delete_queues(settings: Settings) -> None:
    """Remove the run's queues (and lock) from the broker: best effort, logged when it fails."""
    try:
        if settings.queue.split("://", 1)[0].lower() == "redis":
            _delete_redis(settings)
        else:
            _delete_amqp(settings)
    except Exception as exc:     # the figures are taken; leftovers are named, not fatal
        logger.warning("bench: could not delete the run's queues (prefix %s) from %s: %s",
                       settings.queue_prefix, redact_url(settings.queue), exc)


def _delete_redis(settings: Settings) -> None:
    import redis

    client: Any = redis.Redis.from_url(settings.queue.split("?", 1)[0])
    try:
        keys = list(client.scan_iter(match=f"{settings.queue_prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])
    finally:
        client.close()


def _delete_amqp(settings: Settings) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(settings.queue.split("?", 1)[0]))
    try:
        channel = connection.channel()
        for name in (*QUEUE_NAMES, "scheduler.holder"):
            channel.queue_delete(f"{settings.queue_prefix}.{name}")
        with contextlib.suppress(Exception):     # the control exchange, if a node declared it
            channel.exchange_delete(f"{settings.queue_prefix}.control")
    finally:
        with contextlib.suppress(Exception):
            connection.close()


__all__ = ["Distributed", "SHARED_SCHEMES", "check_backends", "delete_queues", "run_tag"]
