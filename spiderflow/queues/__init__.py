"""Bounded message queues, with the backend chosen by URL scheme.

=====================  ========================================================
``memory://``          one process: ``spiderflow one``, tests, in-process bench
``multiprocessing://`` between the processes of ``spiderflow all`` (the default there)
``redis://host:6379/0``  distributed, with a reliable hand-off
``amqp://user:pass@host:5672/vhost``  distributed on RabbitMQ, acked after handling
=====================  ========================================================

Backends are imported lazily from :data:`BACKENDS`, so an optional dependency costs
nothing until its scheme is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ..exceptions import ConfigError, UnknownSchemeError
from .base import BaseQueue, Delivery

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


def backend_class(url: str) -> type[BaseQueue]:
    """The queue class for *url*'s scheme; UnknownSchemeError lists the known ones."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in BACKENDS:
        raise UnknownSchemeError(url, "queue", list(BACKENDS))
    module_name, class_name, extra = BACKENDS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("spiderflow"):
            raise ConfigError(f"the {scheme}:// queue backend is not available in this version") from exc
        hint = f'; install it with: pip install "spiderflow[{extra}]"' if extra else ""
        raise ConfigError(f"the {scheme}:// queue backend needs the {exc.name!r} package{hint}") from exc
    return getattr(module, class_name)


def connect_queue(url: str, name: str, maxsize: int = 0, **kwargs: Any) -> BaseQueue:
    """Open the queue *name* on the backend of *url*, bounded to *maxsize* messages."""
    return backend_class(url)(name, maxsize, url=url, **kwargs)


def connect_queues(url: str, maxsize: int | Mapping[str, int] = 0, names: tuple[str, ...] = QUEUE_NAMES,
                   **kwargs: Any) -> dict[str, BaseQueue]:
    """Open every pipeline queue on one backend: ``{name: queue}``.

    *maxsize* bounds every queue, or is a ``{name: bound}`` mapping
    (:meth:`spiderflow.settings.Settings.queue_bounds`).
    """
    def bound(name: str) -> int:
        return maxsize if isinstance(maxsize, int) else maxsize[name]

    return {name: connect_queue(url, name, bound(name), **kwargs) for name in names}


__all__ = ["BACKENDS", "BaseQueue", "Delivery", "QUEUE_NAMES", "backend_class", "connect_queue", "connect_queues"]
