"""export_results: JSON, JSON lines and CSV from a real sqlite resultdb, streaming."""

from __future__ import annotations

import csv
import io
import json

import pytest

from spiderflow.exceptions import ConfigError
from spiderflow.message import ResultPack
from spiderflow.result import EXPORT_FORMATS, export_results
from spiderflow.storage import connect_resultdb

RESULTS = [
    {"title": "one", "tags": ["a", "b"], "meta": {"depth": 1}},
    {"title": "two", "price": 9.5, "url": "http://example.com/canonical"},
    {"title": "three, with \"quotes\"\nand a newline", "in_stock": True, "missing": None},
    "a bare string result",
]


@pytest.fixture
def resultdb(tmp_path):
    db = connect_resultdb(f"sqlite:///{tmp_path}/result.db")
    db.upsert_many([ResultPack("shop", f"t{i}", f"http://example.com/{i}", r, updatetime=10.0 + i)
                    for i, r in enumerate(RESULTS)])
    db.upsert(ResultPack("other", "x", "http://example.com/x", {"other": 1}))
    yield db
    db.close()


def test_json_is_one_streamed_array(resultdb):
    out = io.StringIO()
    assert export_results(resultdb, "shop", "json", out) == 4
    records = json.loads(out.getvalue())
    assert [r["taskid"] for r in records] == ["t0", "t1", "t2", "t3"]
    assert records[0] == {"taskid": "t0", "url": "http://example.com/0", "result": RESULTS[0], "updatetime": 10.0}
    assert out.getvalue().count("\n") == 6  # one record per line between the brackets


def test_json_of_nothing_is_an_empty_array(resultdb):
    out = io.StringIO()
    assert export_results(resultdb, "nobody", "json", out) == 0
    assert json.loads(out.getvalue()) == []


def test_jsonl(resultdb):
    out = io.StringIO()
    assert export_results(resultdb, "shop", "JSONL", out, limit=2) == 2
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["taskid"], r["result"]) for r in lines] == [("t0", RESULTS[0]), ("t1", RESULTS[1])]


def test_csv_columns_are_the_union_of_keys_with_nested_values_as_json(resultdb):
    out = io.StringIO(newline="")
    assert export_results(resultdb, "shop", "csv", out) == 4
    rows = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    header, body = rows[0], rows[1:]
    assert header == ["taskid", "url", "title", "tags", "meta", "price", "result.url", "in_stock", "missing", "result"]
    by_id = {row[0]: dict(zip(header, row)) for row in body}
    assert by_id["t0"]["tags"] == '["a","b"]' and json.loads(by_id["t0"]["meta"]) == {"depth": 1}
    assert by_id["t0"]["price"] == "" and by_id["t0"]["url"] == "http://example.com/0"
    assert by_id["t1"]["price"] == "9.5" and by_id["t1"]["result.url"] == "http://example.com/canonical"
    assert by_id["t2"]["title"] == RESULTS[2]["title"] and by_id["t2"]["in_stock"] == "true"
    assert by_id["t2"]["missing"] == ""
    assert by_id["t3"]["result"] == "a bare string result" and by_id["t3"]["title"] == ""


def test_csv_reads_the_results_in_two_passes_only(resultdb):
    calls = []

    class Spy:
        def select(self, project, offset=0, limit=None):
            calls.append((project, offset, limit))
            return resultdb.select(project, offset=offset, limit=limit)

    export_results(Spy(), "shop", "csv", io.StringIO(), offset=1, limit=2)
    assert calls == [("shop", 1, 2), ("shop", 1, 2)]


def test_unknown_format(resultdb):
    assert EXPORT_FORMATS == ("json", "jsonl", "csv")
    with pytest.raises(ConfigError, match="unknown export format 'xml'"):
        export_results(resultdb, "shop", "xml", io.StringIO())
