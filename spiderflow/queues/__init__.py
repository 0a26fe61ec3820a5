"""Bounded message queues, with the backend chosen by URL scheme.

=====================  ========================================================
``memory://``          one process: ``spiderflow one``, tests, in-process bench
``multiprocessing://`` between the processes of ``spiderflow all`` (the default there)
``redis://host:6379/0``  distributed, with a reliable hand-off
``amqp://user:pass@host:5672/vhost``  distributed on RabbitMQ, acked after handling
=====================  ========================================================

Backends are imported lazily from :data:`BACKENDS`, so an optional dependency costs
nothing until its scheme is used. Redis keys and RabbitMQ queue names start with a prefix
(``spiderflow`` unless the ``queue_prefix`` setting or the URL's ``?prefix=`` says
otherwise), so that clusters can share a Redis database or a RabbitMQ vhost.

:func:`acquire_scheduler_lock` takes the lock that the one scheduler of a cluster holds
in the queue backend (:mod:`.locks`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ..exceptions import ConfigError, UnknownSchemeError
from .base import BaseQueue, Delivery
from .locks import SchedulerLock

#: The five queues that link the stages.
QUEUE_NAMES = ("newtask_queue", "status_queue", "scheduler2fetcher", "fetcher2processor", "processor2result")

#: scheme -> (module, class, pip extra needed)
BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("spiderflow.queues.memory", "MemoryQueue", None),
    "multiprocessing": ("spiderflow.queues.multiprocessing", "MultiprocessingQueue", None),
    "redis": ("spiderflow.queues.redis", "RedisQueue", "redis"),
    "rediss": ("spiderflow.queues.redis", "RedisQueue", "redis"),
    "amqp": ("spiderflow.queues.amqp", "AmqpQueue", "amqp"),
}

#: scheme -> (module, class) of the scheduler lock (see :mod:`.locks`)
SCHEDULER_LOCKS: dict[str, tuple[str, str]] = {
    "memory": ("spiderflow.queues.locks", "NullSchedulerLock"),
    "multiprocessing": ("spiderflow.queues.locks", "FileSchedulerLock"),
    "redis": ("spiderflow.queues.redis_lock", "RedisSchedulerLock"),
    "rediss": ("spiderflow.queues.redis_lock", "RedisSchedulerLock"),
    "amqp": ("spiderflow.queues.amqp_lock", "AmqpSchedulerLock"),
}


def _scheme(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in BACKENDS:
        raise UnknownSchemeError(url, "queue", list(BACKENDS))
    return scheme


def _import(scheme: str, module_name: str, class_name: str) -> Any:
    extra = BACKENDS[scheme][2]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("spiderflow"):
            raise ConfigError(f"the {scheme}:// queue backend is not available in this version") from exc
        hint = f'; install it with: pip install "spiderflow[{extra}]"' if extra else ""
        raise ConfigError(f"the {scheme}:// queue backend needs the {exc.name!r} package{hint}") from exc
    return getattr(module, class_name)


def backend_class(url: str) -> type[BaseQueue]:
    """The queue class for *url*'s scheme; UnknownSchemeError lists the known ones."""
    scheme = _scheme(url)
    module_name, class_name, _extra = BACKENDS[scheme]
    return _import(scheme, module_name, class_name)


def connect_queue(url: str, name: str, maxsize: int = 0, prefix: str | None = None, **kwargs: Any) -> BaseQueue:
    """Open the queue *name* on the backend of *url*, bounded to *maxsize* messages.

    *prefix* starts its redis key or RabbitMQ queue name (a ``?prefix=`` in *url* wins;
    other backends have no names to prefix).
    """
    cls = backend_class(url)
    if prefix is not None and cls.prefixed:
        kwargs["prefix"] = prefix
    return cls(name, maxsize, url=url, **kwargs)


def connect_queues(url: str, maxsize: int | Mapping[str, int] = 0, names: tuple[str, ...] = QUEUE_NAMES,
                   prefix: str | None = None, **kwargs: Any) -> dict[str, BaseQueue]:
    """Open every pipeline queue on one backend: ``{name: queue}``.

    *maxsize* bounds every queue, or is a ``{name: bound}`` mapping
    (:meth:`spiderflow.settings.Settings.queue_bounds`); *prefix* as in :func:`connect_queue`.
    """
    def bound(name: str) -> int:
        return maxsize if isinstance(maxsize, int) else maxsize[name]

    return {name: connect_queue(url, name, bound(name), prefix, **kwargs) for name in names}


def acquire_scheduler_lock(url: str, prefix: str | None = None, data_dir: str = ".", **options: Any) -> SchedulerLock:
    """Take the lock of the one running scheduler of the cluster on *url* (with *prefix*, or
    for ``multiprocessing://`` the data directory *data_dir*); ``release()`` it on exit.

    Raises ConfigError, naming the holder, when another scheduler holds it. On redis a
    lock whose holder stopped renewing it is waited for (it expires); see :mod:`.locks`.
    """
    scheme = _scheme(url)
    module_name, class_name = SCHEDULER_LOCKS[scheme]
    return _import(scheme, module_name, class_name)(url, prefix=prefix, data_dir=data_dir, **options)


__all__ = ["BACKENDS", "QUEUE_NAMES", "SCHEDULER_LOCKS", "BaseQueue", "Delivery", "SchedulerLock",
           "acquire_scheduler_lock", "backend_class", "connect_queue", "connect_queues"]
