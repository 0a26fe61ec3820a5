"""Export a project's results from resultdb as JSON, JSON lines or CSV, streaming.

Rows come from ``resultdb.select()`` in chunks and are written as they come, so memory
stays bounded however many results there are. JSON and JSON lines write one record per
result: ``{"taskid", "url", "result", "updatetime"}``. CSV reads the results twice: the
first pass collects the columns (the union of the result keys, in first-seen order), the
second writes ``taskid``, ``url`` and those columns; a result key that clashes with
``taskid`` or ``url`` gets the column ``result.<key>``, a result that is not an object goes
to a ``result`` column, and nested values are written as JSON. A text cell (or column name)
that a spreadsheet would read as a formula — one starting with ``=``, ``+``, ``-``, ``@``, a
tab or a carriage return — starts with a ``'`` instead (OWASP's advice against CSV injection:
a crawled page must not run a formula on the computer of whoever opens the export).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from typing import Any, TextIO

from ..exceptions import ConfigError

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("json", "jsonl", "csv")
_META = ("taskid", "url")
#: What a text cell must not start with: a spreadsheet would take it as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _record(row: dict[str, Any]) -> dict[str, Any]:
    return {"taskid": row["taskid"], "url": row["url"], "result": row["result"], "updatetime": row["updatetime"]}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def export_json(rows: Any, fh: TextIO) -> int:
    """A JSON array of records, one per line, written as the rows come."""
    count = 0
    fh.write("[")
    for row in rows:
        fh.write(",\n" if count else "\n")
        fh.write(_dumps(_record(row)))
        count += 1
    fh.write("\n]\n" if count else "]\n")
    return count


def export_jsonl(rows: Any, fh: TextIO) -> int:
    """One JSON record per line."""
    count = 0
    for row in rows:
        fh.write(_dumps(_record(row)) + "\n")
        count += 1
    return count


def _column(key: str) -> str:
    return f"result.{key}" if key in _META else key


def csv_text(text: str) -> str:
    """*text* as a CSV cell no spreadsheet runs as a formula: with a ``'`` before a formula start."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return csv_text(value)
    return _dumps(value)      # a number (-1 is no formula), or JSON starting with [ { or "


def csv_columns(rows: Any) -> list[str]:
    """The CSV header for *rows*: taskid, url, the union of result keys (and ``result`` if needed)."""
    keys: dict[str, None] = {}
    scalar = False
    for row in rows:
        result = row["result"]
        if isinstance(result, dict):
            for key in result:
                keys.setdefault(_column(str(key)))
        else:
            scalar = True
    columns = list(_META) + list(keys)
    if scalar and "result" not in keys:
        columns.append("result")
    return columns


def export_csv(select: Callable[[], Any], fh: TextIO) -> int:
    """CSV in two passes over ``select()``; open *fh* with ``newline=""``."""
    columns = csv_columns(select())
    known = set(columns)
    writer = csv.writer(fh)
    writer.writerow([csv_text(c) for c in columns])
    count = 0
    late_keys: set[str] = set()
    for row in select():
        result = row["result"]
        cells = {"taskid": csv_text(row["taskid"]), "url": csv_text(row["url"])}
        if isinstance(result, dict):
            for key, value in result.items():
                column = _column(str(key))
                if column in known:
                    cells[column] = _cell(value)
                else:
                    late_keys.add(column)
        elif "result" in known:
            cells["result"] = _cell(result)
        writer.writerow([cells.get(c, "") for c in columns])
        count += 1
    if late_keys:
        logger.warning("export: results changed during the export; columns %s were left out",
                       ", ".join(sorted(late_keys)))
    return count


def export_results(resultdb: Any, project: str, fmt: str, fh: TextIO, *, offset: int = 0,
                   limit: int | None = None) -> int:
    """Write *project*'s results from *resultdb* to *fh* as ``json``, ``jsonl`` or ``csv``; return the count."""
    fmt = fmt.lower()
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")

    def select() -> Any:
        return resultdb.select(project, offset=offset, limit=limit)

    if fmt == "csv":
        return export_csv(select, fh)
    if fmt == "json":
        return export_json(select(), fh)
    return export_jsonl(select(), fh)


__all__ = ["EXPORT_FORMATS", "csv_columns", "csv_text", "export_csv", "export_json", "export_jsonl",
           "export_results"]
