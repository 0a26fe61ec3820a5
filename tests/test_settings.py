"""Settings: defaults, precedence flag > env > config file > default, and clear errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

from spiderflow.exceptions import ConfigError
from spiderflow.settings import Settings, load_settings


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_are_frozen():
    settings = Settings()
    assert settings.poolsize == 100 and settings.queue_maxsize == 100 and settings.retries == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.poolsize = 1  # type: ignore[misc]


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    cfg = write(tmp_path, "c.json", json.dumps({"poolsize": 10, "timeout": 5, "lease_time": 7, "data_dir": "/f"}))
    env = {"SPIDERFLOW_POOLSIZE": "20", "SPIDERFLOW_TIMEOUT": "6"}
    settings = load_settings(cfg, env=env, overrides={"poolsize": 30, "timeout": None})
    assert settings.poolsize == 30          # flag
    assert settings.timeout == 6.0          # env (the flag was not given)
    assert settings.lease_time == 7.0       # file
    assert settings.data_dir == "/f"
    assert settings.connect_timeout == 20.0  # default


def test_toml_config(tmp_path):
    cfg = write(tmp_path, "c.toml", 'poolsize = 4\nqueue = "redis://127.0.0.1:6379/0"\n')
    settings = load_settings(cfg)
    assert settings.poolsize == 4 and settings.queue == "redis://127.0.0.1:6379/0"


def test_db_urls_default_to_sqlite_in_data_dir():
    settings = load_settings(overrides={"data_dir": "/d", "resultdb": "postgresql://h/db"})
    assert settings.db_url("taskdb") == "sqlite:////d/task.db"
    assert settings.db_url("resultdb") == "postgresql://h/db"


@pytest.mark.parametrize("text, message", [
    ('{"poolsize": 1, "bogus_key": 2}', "unknown setting 'bogus_key'"),
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold an object"),
    ('{"poolsize": "many"}', "'poolsize' must be an integer"),
    ('{"poolsize": 1.5}', "'poolsize' must be an integer"),
    ('{"robots_txt_ttl": true}', "'robots_txt_ttl' must be a number"),
])
def test_bad_config_file_names_file_and_key(tmp_path, text, message):
    cfg = write(tmp_path, "bad.json", text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert message in str(info.value) and cfg in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(str(tmp_path / "nope.json"))


def test_env_values_are_parsed_and_checked():
    settings = load_settings(env={"SPIDERFLOW_PROXY": "none", "SPIDERFLOW_RETRY_DELAY": "[[0, 1], [-1, 2]]",
                                  "SPIDERFLOW_REQUIRE_SERVICES": "1", "OTHER": "x"})
    assert settings.proxy is None and settings.retry_delay == ((0, 1.0), (-1, 2.0))
    assert settings.retry_delay_for(0) == 1.0 and settings.retry_delay_for(5) == 2.0
    with pytest.raises(ConfigError, match="SPIDERFLOW_QUEUE_MAXSIZE"):
        load_settings(env={"SPIDERFLOW_QUEUE_MAXSIZE": "ten"})


def test_unknown_override_is_an_error():
    with pytest.raises(ConfigError, match="unknown setting 'pool_size'"):
        load_settings(overrides={"pool_size": 3})


def test_replace_keeps_other_values():
    settings = load_settings(overrides={"poolsize": 3}).replace(timeout="9")
    assert settings.poolsize == 3 and settings.timeout == 9.0


def test_queue_bounds_give_newtask_queue_room_for_a_page_of_links():
    from spiderflow.queues import QUEUE_NAMES
    from spiderflow.runtime.compose import open_queues
    from spiderflow.settings import NEWTASK_LINKS

    bounds = Settings().queue_bounds()
    assert set(bounds) == set(QUEUE_NAMES)
    assert bounds["newtask_queue"] == NEWTASK_LINKS * 100 and bounds["status_queue"] == 100
    assert load_settings(overrides={"queue_maxsize": 7}).queue_bounds()["newtask_queue"] == NEWTASK_LINKS * 7
    settings = load_settings(env={"SPIDERFLOW_NEWTASK_QUEUE_MAXSIZE": "50", "SPIDERFLOW_QUEUE_MAXSIZE": "3"})
    assert settings.queue_bounds() == {**dict.fromkeys(QUEUE_NAMES, 3), "newtask_queue": 50}
    queues = open_queues(settings)    # what the components are given
    assert {name: q.maxsize for name, q in queues.items()} == settings.queue_bounds()
    with pytest.raises(ConfigError, match="newtask_queue_maxsize"):
        load_settings(env={"SPIDERFLOW_NEWTASK_QUEUE_MAXSIZE": "many"})
