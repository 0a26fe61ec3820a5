"""What the queue operations share: opening a database without creating it, bounded calls."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..exceptions import ConfigError, SpiderflowError, redact_url
from ..storage import resolve_url

T = TypeVar("T")


def missing_sqlite_file(url: str) -> str | None:
    """The path of *url*'s SQLite file when that file does not exist (reading must not create it)."""
    parsed = resolve_url(url)
    path = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and path not in ("", ":memory:") \
            and not parsed.query.get("uri") and not os.path.exists(path):
        return path
    return None


def no_database(role: str, url: str, path: str) -> ConfigError:
    """The error for reading a database that was never created."""
    return ConfigError(f"the {role} {redact_url(url)} does not exist ({path}): nothing has run with this "
                       f"data directory yet; give the cluster's --data-dir, -c CONFIG or --{role} URL")


def bounded(call: Callable[[], T], timeout: float, what: str) -> T:
    """Run *call* in a daemon thread and wait at most *timeout* seconds for it.

    For a server that may not answer (a firewalled database host can keep a connect waiting
    for minutes): TimeoutError naming *what* after *timeout*.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller, who decides
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"ops:{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{what} did not answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def error_text(exc: BaseException) -> str:
    """One line for an operator: our errors as they are, others with their type."""
    if isinstance(exc, (SpiderflowError, TimeoutError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def read_database(role: str, url: str, read: Callable[[], T], timeout: float) -> T:
    """*read* a database that must already exist (ConfigError if its SQLite file does not),
    bounded by *timeout* (see :func:`bounded`)."""
    path = missing_sqlite_file(url)
    if path:
        raise no_database(role, url, path)
    return bounded(read, timeout, f"{role} {redact_url(url)}")
