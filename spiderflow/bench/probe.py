"""Progress of the bench's components without touching their hot paths.

Every component already counts what it does (the scheduler's counters, the fetcher's
``counters``, ``Processor.processed``, ``ResultWorker.stored``). :class:`Probe` holds one row
of numbers per component process in shared memory (a ``multiprocessing`` array created
before the processes fork); :meth:`Probe.watch`, called in a component process, starts a
daemon thread that copies the component's own counters into its row a few times a second.
The components do no extra work per task; the parent reads the rows whenever it likes.
Peak RSS is read from ``/proc/<pid>/status`` (``VmHWM``), or ``getrusage`` for this process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: What a row holds, by component kind.
FIELDS: dict[str, tuple[str, ...]] = {
    "scheduler": ("tasks", "in_flight", "done", "failed"),
    "fetcher": ("fetched", "bytes", "errors", "in_flight"),
    "processor": ("processed", "failed"),
    "result-worker": ("saved", "failed"),
}
WIDTH = 4
SAMPLE_INTERVAL = 0.2


def scheduler_stats(scheduler: Any) -> tuple[float, ...]:
    """(tasks known, in flight, done, failed) summed over projects, from the scheduler's ``stats()``."""
    stats = scheduler.stats()
    return (float(stats.get("tasks", 0)), float(stats["in_flight"]), float(stats.get("done", 0)),
            float(stats.get("errors", 0)))


def fetcher_stats(fetcher: Any) -> tuple[float, ...]:
    counters = fetcher.counters
    total = counters["all"]
    ok = total.get("2xx", 0) + total.get("3xx", 0)
    return float(total["total"]), float(total["bytes"]), float(total["total"] - ok), float(counters["in_flight"])


def processor_stats(processor: Any) -> tuple[float, ...]:
    return float(processor.processed), float(processor.failed)


def result_stats(worker: Any) -> tuple[float, ...]:
    return float(worker.stored), float(worker.failed)


STATS: dict[str, Callable[[Any], tuple[float, ...]]] = {
    "scheduler": scheduler_stats,
    "fetcher": fetcher_stats,
    "processor": processor_stats,
    "result-worker": result_stats,
}


KINDS = tuple(FIELDS)


class Probe:
    """Rows of counters in shared memory, one per component process (see the module docstring).

    A row is ``[kind code + 1, value, value, ...]``; a component process claims the next free
    row when it is watched, so the parent needs no per-process set-up.
    """

    def __init__(self, ctx: Any, rows: int):
        self.rows = rows
        self._array = ctx.Array("d", (WIDTH + 1) * rows, lock=False)
        self._next = ctx.Value("i", 0)

    def watch(self, kind: str, component: Any, interval: float = SAMPLE_INTERVAL) -> None:
        """In a component's process: copy *component*'s counters to a row of its own every *interval* s."""
        with self._next.get_lock():
            row = self._next.value
            self._next.value += 1
        if row >= self.rows:
            logger.warning("bench probe: no row left for a %s; its progress is not shown", kind)
            return
        stats, array, base = STATS[kind], self._array, row * (WIDTH + 1)
        array[base] = KINDS.index(kind) + 1

        def sample() -> None:
            while True:
                with contextlib.suppress(Exception):   # a counter read mid-update: try again next time
                    values = stats(component)
                    array[base + 1:base + 1 + len(values)] = list(values)
                time.sleep(interval)

        threading.Thread(target=sample, name=f"bench-probe-{kind}", daemon=True).start()

    def read(self) -> dict[str, dict[str, float]]:
        """``{kind: {field: value}}``, summed over the processes of each kind, as last sampled."""
        values = list(self._array)
        out: dict[str, dict[str, float]] = {kind: dict.fromkeys(FIELDS[kind], 0.0) for kind in KINDS}
        for row in range(self.rows):
            base = row * (WIDTH + 1)
            code = int(values[base])
            if not code:
                continue
            kind = KINDS[code - 1]
            sums = out[kind]
            for name, value in zip(FIELDS[kind], values[base + 1:base + 1 + WIDTH]):
                sums[name] += value
        return out


class LocalProbe:
    """The same reading for components that live in this process (the in-process bench)."""

    def __init__(self) -> None:
        self.components: list[tuple[str, Any]] = []

    def watch(self, kind: str, component: Any) -> None:
        self.components.append((kind, component))

    def read(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {kind: dict.fromkeys(FIELDS[kind], 0.0) for kind in KINDS}
        for kind, component in self.components:
            with contextlib.suppress(Exception):
                for name, value in zip(FIELDS[kind], STATS[kind](component)):
                    out[kind][name] += value
        return out


def cpu_seconds(pid: int | None = None) -> float | None:
    """User + system CPU seconds of process *pid* (``/proc/<pid>/stat``), or of this process."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mb(pid: int | None = None) -> float | None:
    """Peak resident set size in MB of process *pid* (``VmHWM``), or of this process."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
