"""Non-finite numbers at every entrance: the CLI, settings, projectdb, the web UI's JSON, and a
projectdb row written by something else that the scheduler must survive."""

from __future__ import annotations

import json
import logging

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from spiderflow.cli import main
from spiderflow.exceptions import ConfigError
from spiderflow.settings import load_settings

from test_scheduler import Harness
from test_webui import add_project, client, dbs, serve  # noqa: F401  (fixtures)

SCRIPT = "from spiderflow import *\n\nclass Handler(BaseHandler):\n    pass\n"


@pytest.mark.parametrize("args", [["--rate", "inf"], ["--rate", "nan"], ["--burst", "-inf"], ["--rate", "1e9"],
                                  ["--burst", "-1"]])
def test_project_add_refuses_a_rate_that_is_not_a_finite_number(tmp_path, args):
    script = tmp_path / "p.py"
    script.write_text(SCRIPT)
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "data"), "project", "add", str(script), *args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{args[0]}'" in result.output and "is not a number from 0 to 1000000" in result.output
    assert not (tmp_path / "data" / "project.db").exists() or "p" not in result.output.split("Error")[0]


@pytest.mark.parametrize("value", ["inf", "-Infinity", "nan", "1e999"])
def test_settings_refuse_non_finite_numbers(value):
    with pytest.raises(ConfigError, match="must be a number, not .* \\(a finite number\\)"):
        load_settings(env={"SPIDERFLOW_LOOP_INTERVAL": value})
    with pytest.raises(ConfigError, match="delays are finite numbers"):
        load_settings(env={"SPIDERFLOW_RETRY_DELAY": f'[[0, {json.dumps(float(value))}]]'})


def test_projectdb_refuses_non_finite_rates(h):
    h.add_project("p")
    for bad in (float("inf"), float("nan"), -1.0, 10.0 ** 7, True, "3"):
        with pytest.raises(ConfigError, match="rate must be a number from 0 to 1000000"):
            h.projectdb.update("p", rate=bad)
        with pytest.raises(ConfigError, match="burst must be"):
            h.projectdb.insert("q", script=SCRIPT, burst=bad)
    assert h.projectdb.get("p")["rate"] == 1000 and h.projectdb.get("q") is None


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def test_a_stored_infinite_rate_is_reported_once_and_the_default_used(h, caplog):
    """A row written by an older version or by hand: the scheduler goes on at the default rate
    and says so once, instead of a traceback every pass."""
    h.add_project("p")
    with h.projectdb.engine.begin() as conn:
        conn.execute(sa.text("UPDATE spiderflow_project SET rate = :r, updatetime = updatetime + 1"), {"r": float("inf")})
    caplog.set_level(logging.INFO)
    h.scheduler.update_project()
    h.run(20)
    bad = [r for r in caplog.records if "not finite numbers >= 0" in r.getMessage()]
    assert len(bad) == 1 and bad[0].levelno == logging.ERROR
    assert not [r for r in caplog.records if r.exc_info]
    project = h.scheduler.projects["p"]
    assert (project.bucket.rate, project.bucket.burst) == (h.settings.default_rate, h.settings.default_burst)


def test_the_web_ui_answers_strict_json_for_any_stored_value(dbs, client):
    """Browsers cannot parse ``Infinity``: a non-finite number read from a database is null."""
    add_project(dbs, "p")
    with dbs.projectdb.engine.begin() as conn:
        conn.execute(sa.text("UPDATE spiderflow_project SET rate = :r"), {"r": float("inf")})
    answer = client.get("/api/projects")
    assert answer.status == 200
    (row,) = [p for p in json.loads(answer.body.decode("utf-8"), parse_constant=pytest.fail)["projects"]
              if p["name"] == "p"]
    assert row["rate"] is None


@pytest.mark.parametrize("raw", [b'{"rate": Infinity}', b'{"rate": NaN}', b'{"burst": -Infinity}'])
def test_the_web_ui_refuses_non_finite_numbers_in_a_body(dbs, client, raw):
    add_project(dbs, "p")
    answer = client.request("PATCH", "/api/projects/p", data=raw, headers={"Content-Type": "application/json"})
    assert answer.status == 400 and "is not a JSON number" in answer.json["error"]
    assert dbs.projectdb.get("p")["rate"] == 1.0


@pytest.mark.parametrize("raw", [b'{"script": "x = \\"\\ud800\\""}', b'{"comments": "\\udfff"}'])
def test_the_web_ui_refuses_a_lone_surrogate_with_400_not_500(dbs, client, raw):
    add_project(dbs, "p")
    answer = client.request("PATCH", "/api/projects/p", data=raw, headers={"Content-Type": "application/json"})
    assert answer.status == 400 and "not valid Unicode" in answer.json["error"]
