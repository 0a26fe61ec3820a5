"""The result stage: the worker that stores ResultPacks, and the exporters.

``worker`` holds :class:`ResultWorker` (resultdb upserts, batching, custom sinks by
subclass or the ``spiderflow.result_sinks`` entry point group); ``export`` streams a
project's results as JSON, JSON lines or CSV.
"""

from __future__ import annotations

from .export import EXPORT_FORMATS, export_results
from .worker import (
    ENTRY_POINT_GROUP,
    JsonLinesResultWorker,
    ResultWorker,
    load_result_worker_class,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "EXPORT_FORMATS",
    "JsonLinesResultWorker",
    "ResultWorker",
    "export_results",
    "load_result_worker_class",
]
