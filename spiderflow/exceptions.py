"""Every exception spiderflow raises, in one tree.

::

    SpiderflowError
    ├── ConfigError                  bad settings, config file, option or URL
    │   └── UnknownSchemeError       a queue or database URL with a scheme we do not know
    ├── ControlError                 the scheduler's control interface answered an error or is unreachable
    ├── InvalidProjectName           a project name that is not [A-Za-z0-9_-], 1-64 chars
    ├── SerializationError           bytes that are not a spiderflow message, or fields of the wrong type
    ├── QueueError
    │   ├── QueueEmpty               get_nowait() / get(timeout) found nothing (also a queue.Empty)
    │   ├── QueueFull                put_nowait() / put(timeout) found no room (also a queue.Full)
    │   └── QueueClosed              the queue was closed
    ├── StorageError                 a database operation failed
    │   ├── StorageUnavailable       ... because the database cannot be reached now (waited out, never dropped)
    │   └── SchemaVersionError       the database was written by a newer spiderflow
    ├── CounterFileError             the scheduler's counter file is unusable (reported, then replaced)
    ├── FetchOptionError             a task's fetch options cannot become a request (a 599 result)
    ├── ScriptError                  a project script failed to compile or load
    ├── CrawlError                   self.crawl() got an option or URL it cannot use (fails the task)
    └── HTTPError                    Response.raise_for_status(): an error status or a failed fetch

Errors that cross a stage boundary (a failed fetch, a callback that raised) are not
exceptions: they become data (a FetchResult with status 599, a track with the traceback).
"""

from __future__ import annotations

import queue


class SpiderflowError(Exception):
    """Base class of every spiderflow error."""


class ConfigError(SpiderflowError, ValueError):
    """A setting, config file, command-line option or URL is wrong."""


class UnknownSchemeError(ConfigError):
    """A URL names a backend scheme that spiderflow does not know."""

    def __init__(self, url: str, kind: str, known: list[str]):
        self.url = url
        self.kind = kind
        self.known = sorted(known)
        scheme = url.split("://", 1)[0] if "://" in url else url
        super().__init__(
            f"unknown {kind} scheme {scheme!r} in {redact_url(url)!r}; "
            f"known schemes: {', '.join(self.known)}"
        )


class InvalidProjectName(SpiderflowError, ValueError):
    """A project name is not made of letters, digits, '_' and '-' (1-64 characters)."""


class SerializationError(SpiderflowError, ValueError):
    """Bytes or a dict could not be turned into a spiderflow message."""


class QueueError(SpiderflowError):
    """Base class of queue errors.

    ``sent``: raised by a ``put_many`` part-way, how many messages of the batch, from its
    start, are surely queued while the rest surely are not; None when that is not known.
    """

    sent: int | None = None


class QueueEmpty(QueueError, queue.Empty):
    """No message arrived in time."""


class QueueFull(QueueError, queue.Full):
    """The bounded queue had no room in time."""


class QueueClosed(QueueError):
    """The queue has been closed."""


class StorageError(SpiderflowError):
    """A database operation failed."""


class StorageUnavailable(StorageError):
    """The database cannot be reached now (connection refused or lost, server restarting, locked).

    Temporary by nature: a component that gets it keeps what it was storing, waits with
    backoff and tries again; it never drops a message or fails a task for it.
    """


class SchemaVersionError(StorageError):
    """The database schema is newer than this spiderflow understands."""


class ScriptError(SpiderflowError):
    """A project script failed to compile or load."""


class ControlError(SpiderflowError):
    """The scheduler's control interface answered with an error (or could not be reached)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"scheduler control: {status} {message}")
        self.status = status
        self.message = message


class CounterFileError(SpiderflowError, ValueError):
    """The scheduler's counter file exists but cannot be used."""


class FetchOptionError(SpiderflowError, ValueError):
    """A task's fetch options cannot be turned into a request (reported as status 599)."""


class CrawlError(SpiderflowError, TypeError):
    """self.crawl() was called with an option or URL it cannot use."""


class HTTPError(SpiderflowError):
    """raise_for_status(): the fetch failed or the server answered with an error status."""

    def __init__(self, message: str, response: object | None = None):
        super().__init__(message)
        self.response = response


#: Query parameters whose values are secrets (``?password=`` of libpq and redis URLs, tokens, keys).
SECRET_PARAMETERS = frozenset(("password", "passwd", "pwd", "pass", "token", "secret", "auth", "api_key",
                               "apikey", "access_key", "secret_key", "sslpassword", "private_key"))


def redact_url(url: str) -> str:
    """Return *url* with any password replaced by '***', for logs and error texts.

    The password of the userinfo is hidden even when it holds ``/``, ``?``, ``#`` or ``@``
    unescaped (a URL no parser splits right, but one a user may well type), and so are the
    values of secret query parameters (:data:`SECRET_PARAMETERS`, any case).
    """
    scheme, sep, rest = str(url).partition("://")
    if not sep:
        return url
    at = rest.rfind("@")
    user_end = min((i for i in (rest.find(c) for c in ":/?#") if i >= 0), default=-1)
    if at > 0 and user_end >= 0 and rest[user_end] == ":" and user_end < at:
        rest = f"{rest[:user_end]}:***{rest[at:]}"   # user:<anything>@host..., the password cut whole
    head, qmark, query = rest.partition("?")
    if not qmark:
        return f"{scheme}://{rest}"
    query, hash_, fragment = query.partition("#")
    parts = []
    for part in query.split("&"):
        key, eq, _value = part.partition("=")
        parts.append(f"{key}=***" if eq and key.strip().lower() in SECRET_PARAMETERS else part)
    return f"{scheme}://{head}?{'&'.join(parts)}{hash_}{fragment}"