"""Queue prefixes: two clusters on one Redis database or RabbitMQ vhost do not share queues.

Runs against the local Redis (DB 15) and RabbitMQ (skipped, or failed under
SPIDERFLOW_REQUIRE_SERVICES=1, when they are down); every test uses prefixes of its own
and deletes what it made.
"""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner
from conftest import require_service

from spiderflow.cli import main
from spiderflow.exceptions import ConfigError, QueueEmpty
from spiderflow.message import Task
from spiderflow.queues import QUEUE_NAMES, connect_queue, connect_queues
from spiderflow.runtime.compose import open_queues
from spiderflow.settings import Settings, load_settings

pytestmark = pytest.mark.timeout(60)


def task(i: int) -> Task:
    return Task(taskid=f"t{i}", project="p", url=f"http://127.0.0.1/{i}", updatetime=float(i))


def tags(n: int = 2) -> list[str]:
    return [f"sftest-{uuid.uuid4().hex[:10]}" for _ in range(n)]


@pytest.fixture
def redis_url():
    import redis
    url = require_service("redis")
    made: list[str] = []
    yield url, made
    client = redis.Redis.from_url(url)
    for prefix in made:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    client.close()


@pytest.fixture
def amqp_url():
    import pika
    url = require_service("amqp")
    made: list = []
    yield url, made
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    for q in made:
        q.close()
        ch.queue_delete(q.queue_name)
    conn.close()


def assert_separate(a: dict, b: dict) -> None:
    """Messages put on cluster *a* reach only *a*'s consumers, and the other way round."""
    for name in QUEUE_NAMES:
        a[name].put(task(1))
        b[name].put(task(2))
    for name in QUEUE_NAMES:
        assert a[name].get(timeout=5) == task(1)
        assert b[name].get(timeout=5) == task(2)
        with pytest.raises(QueueEmpty):
            a[name].get(timeout=0.2)
        with pytest.raises(QueueEmpty):
            b[name].get(timeout=0.2)


def test_redis_two_prefixes_on_one_database_do_not_share_queues(redis_url):
    url, made = redis_url
    one, two = tags()
    made += [one, two]
    a = connect_queues(url, 10, prefix=one)
    b = connect_queues(url, 10, prefix=two)
    assert a["newtask_queue"].key == f"{one}:newtask_queue"
    assert_separate(a, b)
    for q in [*a.values(), *b.values()]:
        q.close()


def test_amqp_two_prefixes_on_one_vhost_do_not_share_queues(amqp_url):
    url, made = amqp_url
    one, two = tags()
    a = connect_queues(url, 10, prefix=one)
    b = connect_queues(url, 10, prefix=two)
    made += [*a.values(), *b.values()]
    assert a["newtask_queue"].queue_name == f"{one}.newtask_queue"
    assert a["newtask_queue"].name == "newtask_queue"
    assert_separate(a, b)


def test_the_urls_prefix_wins_over_the_setting(redis_url, amqp_url):
    rurl, rmade = redis_url
    aurl, amade = amqp_url
    mine, other = tags()
    rmade.append(mine)
    q = connect_queue(f"{rurl}?prefix={mine}", "q", 5, prefix=other)
    assert q.prefix == mine and q.key == f"{mine}:q"
    q.close()
    q = connect_queue(f"{aurl}?prefix={mine}", "q", 5, prefix=other)
    amade.append(q)
    assert q.queue_name == f"{mine}.q"


def test_the_default_prefix_is_spiderflow(redis_url, amqp_url):
    rurl, _ = redis_url
    aurl, amade = amqp_url
    assert Settings().queue_prefix == "spiderflow"
    q = connect_queue(rurl, "sftest-default", 5)
    assert q.key == "spiderflow:sftest-default"
    q.close()
    q = connect_queue(aurl, f"{tags(1)[0]}", 5)
    amade.append(q)
    assert q.queue_name == f"spiderflow.{q.name}"


def test_open_queues_names_them_with_the_queue_prefix_setting(redis_url, amqp_url):
    rurl, rmade = redis_url
    aurl, amade = amqp_url
    prefix = tags(1)[0]
    rmade.append(prefix)
    settings = load_settings(env={"SPIDERFLOW_QUEUE_PREFIX": prefix, "SPIDERFLOW_QUEUE": rurl})
    assert settings.queue_prefix == prefix
    queues = open_queues(settings)
    assert {q.key for q in queues.values()} == {f"{prefix}:{name}" for name in QUEUE_NAMES}
    for q in queues.values():
        q.close()
    queues = open_queues(settings.replace(queue=aurl))
    amade += queues.values()
    assert {q.queue_name for q in queues.values()} == {f"{prefix}.{name}" for name in QUEUE_NAMES}
    # backends without server-side names have nothing to prefix
    local = connect_queues("memory://", 3, prefix=prefix)
    assert all(not q.prefixed for q in local.values())


@pytest.mark.parametrize("prefix", ["", "two words", "amq.reserved"])
def test_a_bad_prefix_is_a_config_error(prefix, amqp_url):
    url, _ = amqp_url
    with pytest.raises(ConfigError, match="prefix"):
        connect_queue(url, "q", 5, prefix=prefix)
    if prefix.startswith("amq."):
        return
    with pytest.raises(ConfigError, match="prefix"):
        connect_queue(require_service("redis"), "q", 5, prefix=prefix)


def test_queue_prefix_is_an_option_of_the_queue_commands():
    runner = CliRunner()
    for command in ("all", "scheduler", "fetcher", "processor", "result-worker"):
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "--queue-prefix" in result.output, command
    result = runner.invoke(main, ["config"], env={"SPIDERFLOW_QUEUE_PREFIX": "cluster-b"})
    assert '"queue_prefix": "cluster-b"' in result.output
