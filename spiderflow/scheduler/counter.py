"""Per-project counters over 5 minutes, 1 hour, 1 day and all time; saved to and loaded from a file.

Each window counts events (``pending``, ``success``, ``retry``, ``failed``) and averages
durations (``fetch_time``, ``process_time``) in time buckets, so old events fall out as
the window slides. ``all`` holds totals: ``pending``, ``success`` and ``failed`` are the
current numbers of tasks in those states, ``retry`` counts every retry.

Events and states differ: a task queued and done within five minutes is one ``pending``
and one ``success`` event in ``5m`` but one task in ``all``, and a recrawl or a restarted
task adds a ``success`` to the windows but not to ``all``. So that the windows nest as the
dashboard shows them, :meth:`Counters.snapshot` caps every count of a window by the same
count of the next larger one: ``all`` >= ``1d`` >= ``1h`` >= ``5m`` always, for each of the
four (a window never shows more pending tasks than are pending now, nor more successes
than tasks that succeeded).

The file is JSON written atomically; a file that cannot be read is reported, moved aside
(``<file>.corrupt``) and replaced, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ..exceptions import CounterFileError
from ..files import make_private_dirs, open_private

logger = logging.getLogger(__name__)

#: window name -> (span in seconds, bucket size in seconds)
WINDOWS: dict[str, tuple[int, int]] = {"5m": (300, 10), "1h": (3600, 60), "1d": (86400, 600)}
EVENTS = ("pending", "success", "retry", "failed")
_LARGEST_FIRST = sorted(WINDOWS, key=lambda w: WINDOWS[w][0], reverse=True)
TIMES = ("fetch_time", "process_time")
FILE_VERSION = 1


class Counters:
    """Event counts and average times per project, over sliding windows and all time."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        # window -> project -> name -> {bucket index: value}
        self._windows: dict[str, dict[str, dict[str, dict[int, float]]]] = {w: {} for w in WINDOWS}
        # project -> name -> value
        self._all: dict[str, dict[str, float]] = {}

    # -- recording ------------------------------------------------------------------
    def event(self, project: str, name: str, value: float = 1, *, windows: bool = True,
              total: bool = True) -> None:
        """Record *value* of event *name* in the sliding windows and/or the all-time total."""
        if windows:
            now = self._clock()
            for window, (span, size) in WINDOWS.items():
                self._add(window, project, name, value, now, span, size)
        if total:
            names = self._all.setdefault(project, {})
            names[name] = names.get(name, 0) + value

    def duration(self, project: str, name: str, seconds: float) -> None:
        """Record one duration (fetch_time or process_time) for the averages."""
        now = self._clock()
        for window, (span, size) in WINDOWS.items():
            self._add(window, project, name, seconds, now, span, size)
            self._add(window, project, name + "#n", 1, now, span, size)
        names = self._all.setdefault(project, {})
        names[name] = names.get(name, 0) + seconds
        names[name + "#n"] = names.get(name + "#n", 0) + 1

    def _add(self, window: str, project: str, name: str, value: float, now: float, span: int, size: int) -> None:
        buckets = self._windows[window].setdefault(project, {}).setdefault(name, {})
        index = int(now // size)
        buckets[index] = buckets.get(index, 0) + value
        if len(buckets) > span // size + 1:
            oldest = index - span // size
            for old in [i for i in buckets if i <= oldest]:
                del buckets[old]

    def total(self, project: str, name: str) -> float:
        """The all-time total *name* of *project* (0 if none)."""
        return self._all.get(project, {}).get(name, 0)

    def set_total(self, project: str, name: str, value: float) -> None:
        self._all.setdefault(project, {})[name] = value

    def drop(self, project: str) -> None:
        for data in self._windows.values():
            data.pop(project, None)
        self._all.pop(project, None)

    def projects(self) -> set[str]:
        out = set(self._all)
        for data in self._windows.values():
            out.update(data)
        return out

    # -- reading ---------------------------------------------------------------------
    def _window_values(self, window: str, project: str, now: float) -> dict[str, float]:
        span, size = WINDOWS[window]
        first = int(now // size) - span // size
        out: dict[str, float] = {}
        for name, buckets in self._windows[window].get(project, {}).items():
            out[name] = sum(v for i, v in buckets.items() if i > first)
        return out

    @staticmethod
    def _shape(raw: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = {name: raw.get(name, 0) for name in EVENTS}
        for name in TIMES:
            n = raw.get(name + "#n", 0)
            out[name] = raw.get(name, 0) / n if n else 0.0
        return out

    def snapshot(self, project: str | None = None, window: str | None = None) -> dict[str, dict[str, dict[str, float]]]:
        """``{project: {window: {pending, success, retry, failed, fetch_time, process_time}}}``."""
        if window is not None and window not in WINDOWS and window != "all":
            raise ValueError(f"unknown counter window {window!r}; known: {', '.join([*WINDOWS, 'all'])}")
        now = self._clock()
        projects = [project] if project is not None else sorted(self.projects())
        out: dict[str, dict[str, dict[str, float]]] = {}
        for name in projects:
            entry: dict[str, dict[str, float]] = {}
            cap = self._shape(self._all.get(name, {}))
            for event in EVENTS:
                cap[event] = max(0, cap[event])
            if window in (None, "all"):
                entry["all"] = cap
            for w in _LARGEST_FIRST:       # each window capped by the next larger one: they nest
                shaped = self._shape(self._window_values(w, name, now))
                for event in EVENTS:
                    shaped[event] = max(0, min(shaped[event], cap[event]))
                if window in (None, w):
                    entry[w] = shaped
                cap = shaped
            out[name] = {w: entry[w] for w in (*WINDOWS, "all") if w in entry}
        return out

    # -- persistence --------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": FILE_VERSION,
            "saved_at": self._clock(),
            "buckets": {w: size for w, (_span, size) in WINDOWS.items()},
            "windows": {
                w: {p: {n: {str(i): v for i, v in b.items()} for n, b in names.items()}
                    for p, names in data.items()}
                for w, data in self._windows.items()
            },
            "all": self._all,
        }

    def load_json(self, data: Any) -> None:
        """Replace the counters with *data* (from :meth:`to_json`); CounterFileError if malformed."""
        try:
            if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
                raise CounterFileError(f"not a version {FILE_VERSION} counter file")
            windows: dict[str, dict[str, dict[str, dict[int, float]]]] = {w: {} for w in WINDOWS}
            for w, projects in data["windows"].items():
                if w not in WINDOWS or data["buckets"].get(w) != WINDOWS[w][1]:
                    continue  # a window we no longer keep, or with another bucket size
                windows[w] = {
                    str(p): {str(n): {int(i): _number(v) for i, v in b.items()} for n, b in names.items()}
                    for p, names in projects.items()
                }
            totals = {str(p): {str(n): _number(v) for n, v in names.items()} for p, names in data["all"].items()}
        except CounterFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CounterFileError(f"malformed counter file: {type(exc).__name__}: {exc}") from exc
        self._windows = windows
        self._all = totals

    def dump(self, path: str) -> None:
        """Write the counters to *path* atomically."""
        make_private_dirs(os.path.dirname(os.path.abspath(path)))
        tmp = f"{path}.tmp{os.getpid()}"
        with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as fh:
            json.dump(self.to_json(), fh, separators=(",", ":"))
        os.replace(tmp, path)

    def load(self, path: str) -> bool:
        """Load *path*: True if loaded, False if there is no file yet.

        A file that cannot be used is logged, moved to ``<path>.corrupt`` and replaced by
        a fresh one; the counters start empty and False is returned.
        """
        try:
            with open(path, encoding="utf-8") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return False
        except OSError as exc:
            logger.error("cannot read counter file %s: %s; starting with empty counters", path, exc)
            return False
        try:
            self.load_json(json.loads(raw))
            return True
        except (ValueError, CounterFileError) as exc:
            logger.error("counter file %s is corrupt (%s); moved to %s.corrupt and replaced "
                         "with empty counters", path, exc, path)
            try:
                os.replace(path, path + ".corrupt")
                self.dump(path)
            except OSError as err:
                logger.error("cannot replace counter file %s: %s", path, err)
            return False


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CounterFileError(f"counter value {value!r} is not a number")
    return value
