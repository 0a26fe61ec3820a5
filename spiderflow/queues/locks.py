"""The scheduler lock: one running scheduler per cluster, held where the cluster's queues are.

A cluster is the queue backend and its prefix (or, for ``multiprocessing://``, the data
directory of ``spiderflow all``). The scheduler takes the lock before it starts and keeps
it while it runs; a second scheduler on the same cluster is refused with a ConfigError
that names the holder. Each backend holds it its own way, so that the lock of a scheduler
killed with SIGKILL does not outlive it for long:

======================  ===================================================================
``memory://``           nothing to share: :class:`NullSchedulerLock`
``multiprocessing://``  ``flock`` on ``scheduler.lock`` in the data directory, which the
                        kernel releases when the process dies (:class:`FileSchedulerLock`)
``redis://``            a key ``{prefix}:scheduler:lock`` with an expiry, renewed while the
                        scheduler lives (:mod:`spiderflow.queues.redis_lock`)
``amqp://``             an exclusive queue ``{prefix}.scheduler.lock``, which RabbitMQ
                        deletes when its connection dies (:mod:`spiderflow.queues.amqp_lock`)
======================  ===================================================================

:func:`spiderflow.queues.acquire_scheduler_lock` picks the class by the URL's scheme.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from ..exceptions import ConfigError
from ..files import make_private_dirs, open_private
from .mpshared import start_time

logger = logging.getLogger(__name__)

LOCK_FILE = "scheduler.lock"


def _machine() -> tuple[str, int]:
    """This kernel's boot id and this process's pid namespace: where a pid means one process."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        return boot, os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return "", 0


def holder_record() -> dict[str, Any]:
    """Who takes a lock: this process (with what tells it apart on its machine), host and the time."""
    boot, pidns = _machine()
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "boot": boot, "pidns": pidns, "start": start_time(os.getpid())}


def holder_is_gone(record: Any) -> bool:
    """Whether the holder in *record* is a process of this machine (same kernel boot, same pid
    namespace) that no longer runs: then its lock may be taken at once."""
    try:
        holder = json.loads(record) if isinstance(record, (str, bytes, bytearray)) else record
        boot, pidns = _machine()
        if not boot or holder.get("boot") != boot or holder.get("pidns") != pidns or not holder.get("start"):
            return False
        return start_time(int(holder["pid"])) != holder["start"]
    except (ValueError, TypeError, AttributeError, KeyError):
        return False


def describe(record: Any) -> str:
    """``pid 123 on host h, since ...`` from a holder record (or what could be read of one)."""
    if isinstance(record, (bytes, bytearray)):
        record = record.decode("utf-8", "replace")
    if isinstance(record, str):
        try:
            record = json.loads(record)
        except ValueError:
            return record.strip() or "a scheduler that did not say who it is"
    if not isinstance(record, dict):
        return "a scheduler that did not say who it is"
    return f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, since {record.get('since', '?')}"


def refused(where: str, holder: str, hint: str = "use another --queue-prefix") -> ConfigError:
    return ConfigError(f"another scheduler is already running on this cluster ({where}: {holder}); "
                       f"stop it first or {hint}")


class SchedulerLock:
    """Held by the running scheduler of a cluster; :meth:`release` lets it go.

    ``where`` names the cluster. A backend whose lock can be lost while held (redis: not
    renewed in time) calls the callback given to :meth:`when_lost` (the scheduler's stop).
    """

    where: str = ""

    def __init__(self) -> None:
        self._on_lost: Callable[[], Any] | None = None
        self.lost = False

    def when_lost(self, callback: Callable[[], Any]) -> None:
        """Call *callback* if the lock is lost (at once, if it is already)."""
        self._on_lost = callback
        if self.lost:
            callback()

    def _lose(self, why: str) -> None:
        self.lost = True
        logger.error("scheduler lock on %s lost: %s; stopping this scheduler", self.where, why)
        if self._on_lost is not None:
            self._on_lost()

    def release(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.where}>"


class NullSchedulerLock(SchedulerLock):
    """``memory://``: the queues live in one process, so does the only scheduler that can use them."""

    def __init__(self, url: str = "memory://", **_options: Any):
        super().__init__()
        self.where = url


class FileSchedulerLock(SchedulerLock):
    """``multiprocessing://``: ``flock`` on ``scheduler.lock`` in the data directory; the file
    says who holds it. The kernel releases the lock when its holder dies."""

    def __init__(self, url: str = "multiprocessing://", *, data_dir: str = ".", **_options: Any):
        super().__init__()
        self.path = os.path.abspath(os.path.join(data_dir, LOCK_FILE))
        self.where = f"data directory {os.path.dirname(self.path)}"
        try:
            make_private_dirs(os.path.dirname(self.path))
            self._fd: int | None = open_private(self.path, os.O_RDWR)
        except OSError as exc:
            raise ConfigError(f"cannot open the scheduler lock {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 4096, 0)
            os.close(self._fd)
            self._fd = None
            raise refused(self.where, describe(holder), "use another --data-dir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(holder_record()).encode() + b"\n", 0)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)    # closing the file releases the flock
