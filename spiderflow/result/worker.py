"""The result worker: take ResultPacks from processor2result and store them.

A processed page with results arrives as one message, ``(StatusPack, ResultPack, ...,
Task, ...)``: the worker stores the results, then passes ``(StatusPack, Task, ...)`` on to
status_queue, and only then acknowledges the message. So the scheduler marks a task done
only after its results are stored; if the worker dies in between, the message comes back
(or the task, still ACTIVE in taskdb, is crawled again) and its results are upserted again,
not added twice. A database outage (:class:`~spiderflow.exceptions.StorageUnavailable`)
drops nothing: the batch in hand is kept and retried with backoff until the database is back.

:class:`ResultWorker` upserts by (project, taskid) into resultdb, ``settings.result_batch``
packs per transaction (a batch gathers for up to ``settings.result_linger`` seconds after its
first pack), so a re-sent task overwrites its result instead of adding one. A
batch that fails is retried pack by pack, so one bad result cannot sink the others; a pack
that still fails is logged and dropped.

Custom sinks: subclass and override :meth:`ResultWorker.on_result` (one pack) or
:meth:`ResultWorker.on_results` (a batch), or publish a class under the entry point group
``spiderflow.result_sinks`` and load it with :func:`load_result_worker_class`::

    [options.entry_points]
    spiderflow.result_sinks =
        kafka = mypackage.sinks:KafkaResultWorker
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import threading
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any, TextIO

from ..exceptions import (
    ConfigError,
    QueueClosed,
    QueueEmpty,
    QueueError,
    SerializationError,
    StorageUnavailable,
)
from ..message import ResultPack, StatusPack
from ..settings import Settings
from ..storage import Outage

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "spiderflow.result_sinks"


class ResultWorker:
    """Stores results; override on_result / on_results to send them elsewhere."""

    def __init__(self, inqueue: Any = None, resultdb: Any = None, settings: Settings | None = None, *,
                 poll_interval: float = 1.0, status_queue: Any = None):
        self.inqueue = inqueue
        self.resultdb = resultdb
        self.settings = settings or Settings()
        self.poll_interval = poll_interval
        self.status_queue = status_queue
        self.stored = 0
        self.failed = 0
        self._stop = threading.Event()
        self._outage = Outage("result worker")

    # -- the hooks -----------------------------------------------------------------------------
    def on_result(self, pack: ResultPack) -> None:
        """Store one result. Override for a per-result sink."""
        if self.resultdb is None:
            raise ConfigError(f"{type(self).__name__} has no resultdb; give one or override on_result")
        self.resultdb.upsert(pack)

    def on_results(self, packs: Sequence[ResultPack]) -> None:
        """Store a batch. The default upserts it in one transaction (or calls an overridden on_result)."""
        if type(self).on_result is not ResultWorker.on_result or self.resultdb is None:
            for pack in packs:
                self.on_result(pack)
        else:
            self.resultdb.upsert_many(packs)

    # -- the loop ------------------------------------------------------------------------------------
    def handle(self, packs: Sequence[ResultPack]) -> int:
        """Store *packs* through the hooks; returns how many were stored. Never raises for bad packs."""
        if not packs:
            return 0
        try:
            self.on_results(packs)
            self.stored += len(packs)
            return len(packs)
        except (StorageUnavailable, QueueClosed):
            raise       # the database is away or the sink is gone, not the results' fault: run() decides
        except Exception as exc:
            if len(packs) == 1:
                self._drop(packs[0], exc)
                return 0
            logger.warning("result worker: a batch of %d failed (%s); storing one by one", len(packs), exc)
        stored = 0
        for pack in packs:
            try:
                self.on_results([pack])
            except (StorageUnavailable, QueueClosed):
                raise       # upserts: the retry of the whole batch stores these again, not twice
            except Exception as exc:
                self._drop(pack, exc)
            else:
                stored += 1
        self.stored += stored
        return stored

    def _drop(self, pack: ResultPack, exc: BaseException) -> None:
        self.failed += 1
        logger.error("result worker: dropping the result of %s:%s (%s): %s",
                     pack.project, pack.taskid, pack.url, exc)

    def run(self, burst: bool = False) -> None:
        """Store results until stop() (warm: the batch in hand is stored), or until drained with *burst*."""
        logger.info("result worker starting%s", " (burst)" if burst else "")
        batch = max(1, self.settings.result_batch)
        reason = "stopped"
        while not self._stop.is_set():
            try:
                deliveries = self.inqueue.receive_many(batch, timeout=0 if burst else self.poll_interval)
            except (QueueEmpty, SerializationError):
                deliveries = []
            except QueueClosed:
                reason = "inqueue closed"
                break
            except QueueError as exc:  # a broker outage is temporary: wait and go on
                logger.error("result worker: receiving failed (%s); retrying", exc)
                self._stop.wait(self.poll_interval)
                continue
            if not deliveries:
                if burst:
                    reason = "inqueue drained"
                    break
                continue
            if not burst:
                deliveries += self._fill(batch - len(deliveries))
            if not self._settle(deliveries):
                reason = "stopped during an outage"
                break
        logger.info("result worker exiting: %s (%d stored, %d dropped)", reason, self.stored, self.failed)

    def _settle(self, deliveries: list) -> bool:
        """Store the results of *deliveries*, pass their statuses on, ack them. False: stopped
        while waiting for the database or the status queue (the deliveries are handed back)."""
        packs: list[ResultPack] = []
        statuses: list[tuple] = []
        for delivery in deliveries:
            message = delivery.message
            if isinstance(message, ResultPack):
                packs.append(message)
            elif isinstance(message, tuple) and message and isinstance(message[0], StatusPack):
                packs.extend(m for m in message[1:] if isinstance(m, ResultPack))
                statuses.append((message[0], *(m for m in message[1:] if not isinstance(m, ResultPack))))
            else:
                logger.error("result worker: dropping a message that is not a ResultPack: %.200r", message)
        while True:
            try:
                self.handle(packs)
                break
            except StorageUnavailable as exc:
                if self._stop.wait(self._outage.failed(exc)):
                    for delivery in deliveries:
                        delivery.hand_back()
                    return False
            except QueueClosed as exc:     # the sink's output is gone: keep the batch unacknowledged
                logger.error("result worker: %s; stopping, %d results not stored", exc, len(packs))
                for delivery in deliveries:
                    delivery.hand_back()
                self._stop.set()
                return False
            except Exception:  # a hook bug must not end the loop
                logger.exception("result worker: failed to handle a batch; going on")
                break
        if self._outage.since is not None:
            self._outage.recovered()
        if statuses:
            if not self._forward(statuses):
                for delivery in deliveries:
                    delivery.hand_back()
                return False
        for delivery in deliveries:
            delivery.ack()
        return True

    def _forward(self, statuses: list[tuple]) -> bool:
        """Pass status messages on to status_queue (their results are stored); retry while it fails."""
        if self.status_queue is None:
            logger.error("result worker: no status queue to pass %d statuses on to; the scheduler "
                         "will send those tasks again after their lease", len(statuses))
            return True
        while True:
            try:
                self.status_queue.put_many(statuses)
                return True
            except QueueClosed:
                return False
            except QueueError as exc:
                logger.error("result worker: passing statuses on failed (%s); retrying", exc)
                if self._stop.wait(self.poll_interval):
                    return False

    def _fill(self, room: int) -> list:
        """More deliveries for the batch in hand, for up to ``result_linger`` seconds or until it is full.

        One transaction then stores many results instead of one: at a few hundred results a
        second the worker would otherwise commit for nearly every one.
        """
        more: list = []
        deadline = time.monotonic() + self.settings.result_linger
        while len(more) < room and not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                got = self.inqueue.receive_many(room - len(more), timeout=remaining)
            except (QueueEmpty, SerializationError):
                continue
            except QueueError:  # closed or failing: store what is in hand, run() sees it next
                break
            more += got
        return more

    def stop(self) -> None:
        """Warm shutdown: store the batch in hand, then leave run()."""
        self._stop.set()


class JsonLinesResultWorker(ResultWorker):
    """A sink that writes each result as one JSON line to a text stream (stdout by default)."""

    def __init__(self, inqueue: Any = None, resultdb: Any = None, settings: Settings | None = None, *,
                 stream: TextIO | None = None, poll_interval: float = 1.0):
        super().__init__(inqueue, resultdb, settings, poll_interval=poll_interval)
        self.stream = stream

    def on_result(self, pack: ResultPack) -> None:
        self.on_results([pack])

    def on_results(self, packs: Sequence[ResultPack]) -> None:
        lines = [json.dumps({"project": p.project, "taskid": p.taskid, "url": p.url, "result": p.result,
                             "updatetime": p.updatetime}, ensure_ascii=False, allow_nan=False) + "\n"
                 for p in packs]
        stream = self.stream or sys.stdout
        try:
            stream.write("".join(lines))
            stream.flush()
        except BrokenPipeError:
            raise QueueClosed("the output stream was closed (broken pipe)") from None


#: Sinks available without an entry point.
BUILTIN_WORKERS: dict[str, type[ResultWorker]] = {
    "resultdb": ResultWorker,
    "jsonl": JsonLinesResultWorker,
}


def load_result_worker_class(name: str | None = None) -> type[ResultWorker]:
    """The ResultWorker class called *name*: a built-in, an entry point of ``spiderflow.result_sinks``, or ``module:Class``."""
    if not name:
        return ResultWorker
    if name in BUILTIN_WORKERS:
        return BUILTIN_WORKERS[name]
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    try:
        if found:
            cls = found[0].load()
        elif ":" in name:
            module_name, _, attr = name.partition(":")
            cls = getattr(importlib.import_module(module_name), attr)
        else:
            known = sorted({*BUILTIN_WORKERS, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
            raise ConfigError(f"unknown result sink {name!r}; known sinks: {', '.join(known)} "
                              f"(or give module:Class)")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot load result sink {name!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, ResultWorker)):
        raise ConfigError(f"result sink {name!r} is {cls!r}, not a subclass of ResultWorker")
    return cls


__all__ = ["BUILTIN_WORKERS", "ENTRY_POINT_GROUP", "JsonLinesResultWorker", "ResultWorker",
           "load_result_worker_class"]
