"""Results: the paged table page, ``GET /api/results/<project>``, and streamed downloads.

A download (``/api/results/<project>.json``, ``.jsonl`` or ``.csv``) runs
:func:`~spiderflow.result.export.export_results` in a worker thread writing to a
:class:`ChunkStream`, which hands 64 KiB chunks to the event loop through a short queue;
the handler writes and flushes each one before taking the next. So however many results a
project has, the web UI holds a few chunks of them, and a slow client slows the export down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

import tornado.iostream

from ..processor.processor import RESULT_SEPARATOR
from ..result.export import EXPORT_FORMATS, csv_columns, export_results
from .base import ApiHandler, PageHandler

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
CHUNKS_IN_FLIGHT = 4
CONTENT_TYPES = {"json": "application/json; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8",
                 "csv": "text/csv; charset=utf-8"}
PAGE_SIZE = 20
MAX_PAGE = 1000


class _Cancelled(Exception):
    """The client went away; the export stops."""


class ChunkStream:
    """A text file for a worker thread; every CHUNK characters go to the event loop's queue as UTF-8."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, chunk: int = CHUNK):
        self.loop = loop
        self.queue = queue
        self.chunk = chunk
        self.cancelled = False
        self._parts: list[str] = []
        self._size = 0

    def write(self, text: str) -> int:
        if self.cancelled:
            raise _Cancelled()
        self._parts.append(text)
        self._size += len(text)
        if self._size >= self.chunk:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self._parts and not self.cancelled:
            data = "".join(self._parts).encode("utf-8")
            self._parts, self._size = [], 0
            self._put(data)

    def close(self) -> None:
        """The end of the stream (always called, also after an error)."""
        try:
            self._put(None)
        except _Cancelled:
            pass

    def _put(self, item: bytes | None) -> None:
        """Hand *item* to the event loop, waiting while the queue is full; _Cancelled if the loop is gone."""
        try:
            future = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
        except RuntimeError:       # the loop is closed: the web UI stopped
            raise _Cancelled() from None
        while True:
            try:
                return future.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                if not self.loop.is_running():
                    future.cancel()
                    raise _Cancelled() from None


def task_of(result_taskid: str) -> str:
    """The task of a result: ``<taskid>#<n>`` is the n-th extra result of task ``<taskid>``."""
    base, sep, index = result_taskid.rpartition(RESULT_SEPARATOR)
    return base if sep and base and index.isdigit() else result_taskid


def result_cells(row: dict[str, Any], columns: list[str]) -> list[Any]:
    """The table cells of a result row under *columns* (as :func:`csv_columns` names them)."""
    result = row["result"]
    cells: dict[str, Any] = {"taskid": row["taskid"], "url": row["url"]}
    if isinstance(result, dict):
        for key, value in result.items():
            key = str(key)
            cells[f"result.{key}" if key in ("taskid", "url") else key] = value
    else:
        cells["result"] = result
    return [cells.get(c) for c in columns]


class ResultsPage(PageHandler):
    """``/results/<project>?offset=&limit=``: one page of results, a column per result key."""

    def get(self, project: str) -> None:
        name = self.project_name(project)
        offset = self.int_arg("offset", 0)
        limit = self.int_arg("limit", PAGE_SIZE, 1, MAX_PAGE)
        rows = list(self.state.resultdb.select(name, offset=offset, limit=limit))
        columns = csv_columns(rows) if rows else ["taskid", "url"]
        self.render("results.html", project=name, rows=[(r, result_cells(r, columns)) for r in rows],
                    columns=columns, offset=offset, limit=limit, total=self.state.resultdb.count(name),
                    exists=self.state.projectdb.get(name, ["name"]) is not None, formats=EXPORT_FORMATS,
                    task_of=task_of)


class ResultsApi(ApiHandler):
    """``GET /api/results/<project>?offset=&limit=``."""

    def get(self, project: str) -> None:
        name = self.project_name(project)
        offset = self.int_arg("offset", 0)
        limit = self.int_arg("limit", PAGE_SIZE, 1, MAX_PAGE)
        rows = list(self.state.resultdb.select(name, offset=offset, limit=limit))
        for row in rows:
            row.pop("project", None)
        self.reply({"project": name, "total": self.state.resultdb.count(name), "offset": offset,
                    "limit": limit, "results": rows})


class DownloadHandler(ApiHandler):
    """``GET /api/results/<project>.(json|jsonl|csv)``: every result, streamed."""

    _stream: ChunkStream | None = None

    async def get(self, project: str, fmt: str) -> None:
        name = self.project_name(project)
        self.set_header("Content-Type", CONTENT_TYPES[fmt])
        self.set_header("Content-Disposition", f'attachment; filename="{name}.{fmt}"')
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(CHUNKS_IN_FLIGHT)
        stream = self._stream = ChunkStream(loop, queue)
        export = loop.run_in_executor(self.state.executor, self._export, name, fmt, stream)
        sent = False
        while True:
            chunk = await queue.get()
            if chunk is None:
                break
            if stream.cancelled:
                continue            # drain, so the export thread can see it is cancelled
            self.write(chunk)
            try:
                await self.flush()
                sent = True
            except tornado.iostream.StreamClosedError:
                stream.cancelled = True
        try:
            count = await export
        except _Cancelled:
            logger.info("web UI: download of %s.%s cancelled by the client", name, fmt)
            return
        except Exception:
            logger.exception("web UI: download of %s.%s failed", name, fmt)
            if sent:   # a cut-off body must not look complete: drop the connection
                self.request.connection.close()
                return
            raise
        logger.info("web UI: %d results of %s sent as %s", count, name, fmt)

    def _export(self, name: str, fmt: str, stream: ChunkStream) -> int:
        try:
            count = export_results(self.state.resultdb, name, fmt, stream)
            stream.flush()
            return count
        finally:
            stream.close()

    def on_connection_close(self) -> None:
        if self._stream is not None:
            self._stream.cancelled = True
