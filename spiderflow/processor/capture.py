"""Capture what a callback logs and prints, per task and per thread, for the task's track.

Every project script gets a logger named ``spiderflow.script.<project>`` (injected as the
module global ``logger`` and as ``self.logger``). One handler on ``spiderflow.script``
records every level into the running task's buffer, then passes the record on to the
``spiderflow`` logger's handlers only if that logger is enabled for its level, so script
DEBUG lines reach the track without flooding the CLI's stderr. ``print()`` inside a
callback is captured too: while any task runs, ``sys.stdout`` is a router that sends each
thread's writes to that thread's running task, or to the original stream.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

SCRIPT_LOGGER = "spiderflow.script"
LOG_FORMAT = "[%(levelname).1s %(asctime)s %(module)s:%(lineno)d] %(message)s"

_local = threading.local()


class _CaptureHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        chunks = getattr(_local, "chunks", None)
        if chunks is not None:
            try:
                chunks.append(self.format(record) + "\n")
            except Exception:  # a bad format string in a script must not break the task
                self.handleError(record)
        parent = logging.getLogger("spiderflow")
        if parent.isEnabledFor(record.levelno):
            parent.handle(record)


def _install() -> logging.Logger:
    base = logging.getLogger(SCRIPT_LOGGER)
    if not any(isinstance(h, _CaptureHandler) for h in base.handlers):
        handler = _CaptureHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, "%y%m%d %H:%M:%S"))
        base.addHandler(handler)
        base.setLevel(logging.DEBUG)
        base.propagate = False
    return base


def script_logger(project: str) -> logging.Logger:
    """The logger of *project*'s script; its records are captured into the task's track."""
    _install()
    return logging.getLogger(f"{SCRIPT_LOGGER}.{project}")


class _StdoutRouter:
    """Stands in for sys.stdout while tasks run; each thread writes to its own task's buffer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.saved: Any = None

    def write(self, text: str) -> int:
        chunks = getattr(_local, "chunks", None)
        if chunks is not None and getattr(_local, "stdout", False):
            chunks.append(text)
            return len(text)
        return self.saved.write(text) if self.saved is not None else len(text)

    def flush(self) -> None:
        if self.saved is not None and not getattr(_local, "stdout", False):
            self.saved.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.saved, name)

    def begin(self) -> None:
        with self.lock:
            if self.depth == 0:
                self.saved = sys.stdout
                sys.stdout = self
            self.depth += 1

    def end(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                if sys.stdout is self:
                    sys.stdout = self.saved
                self.saved = None


_router = _StdoutRouter()


class Capture:
    """``with Capture() as cap: run()`` collects the logs and prints of *run* in this thread."""

    __slots__ = ("chunks", "stdout", "_outer")

    def __init__(self, stdout: bool = True):
        self.chunks: list[str] = []
        self.stdout = stdout

    def __enter__(self) -> Capture:
        self._outer = (getattr(_local, "chunks", None), getattr(_local, "stdout", False))
        _local.chunks = self.chunks
        _local.stdout = self.stdout
        if self.stdout:
            _router.begin()
        return self

    def __exit__(self, *exc_info: object) -> None:
        _local.chunks, _local.stdout = self._outer
        if self.stdout:
            _router.end()

    def add(self, text: str) -> None:
        """Append a line of our own (e.g. the traceback) to the captured logs."""
        self.chunks.append(text if text.endswith("\n") else text + "\n")

    def lines(self) -> list[str]:
        return "".join(self.chunks).splitlines() if self.chunks else []


__all__ = ["Capture", "LOG_FORMAT", "SCRIPT_LOGGER", "script_logger"]
