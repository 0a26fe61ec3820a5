"""Passwords never shown: redact_url on the URLs users really type, and ``spiderflow config``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from spiderflow.cli import main
from spiderflow.exceptions import redact_url


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql://u:p/w@d@h:5432/db", "postgresql://u:***@h:5432/db"),          # '/' and '@' unescaped
    ("postgresql://u:a?b#c@h/db", "postgresql://u:***@h/db"),                    # '?' and '#' too
    ("redis://:sec/ret@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://h:6379/0?password=abc&db=1", "redis://h:6379/0?password=***&db=1"),
    ("postgresql://u@h/db?sslmode=require&PassWord=x#f", "postgresql://u@h/db?sslmode=require&PassWord=***#f"),
    ("http://h/?token=zz&api_key=k&q=1", "http://h/?token=***&api_key=***&q=1"),
    ("amqp://guest:guest@h:5672/%2F", "amqp://guest:***@h:5672/%2F"),
])
def test_redact_url_hides_every_password(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize("url", ["http://example.com/a:b@c", "http://example.com/users/@bob?q=1#x",
                                 "mysql+pymysql://root@127.0.0.1/test", "sqlite:////tmp/x.db", "memory://"])
def test_redact_url_leaves_urls_without_a_password_alone(url):
    assert redact_url(url) == url


def test_config_prints_no_password(tmp_path):
    env = {"SPIDERFLOW_TASKDB": "postgresql://u:se/cr@t@127.0.0.1:5432/test?password=hunter2",
           "SPIDERFLOW_QUEUE": "redis://:q/secret@127.0.0.1:6379/0",
           "SPIDERFLOW_PROXY": "http://p:prox/y@127.0.0.1:3128", "SPIDERFLOW_PASSWORD": "uipass"}
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "config"], env=env)
    assert result.exit_code == 0, result.output
    for secret in ("se/cr", "cr@t", "hunter2", "q/secret", "prox/y", "uipass"):
        assert secret not in result.output
    data = json.loads(result.output)
    assert data["taskdb"] == "postgresql://u:***@127.0.0.1:5432/test?password=***"
    assert data["queue"] == "redis://:***@127.0.0.1:6379/0"
