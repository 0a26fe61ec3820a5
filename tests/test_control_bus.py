"""The control bus and its messages, against the real transports: Redis (DB 15), RabbitMQ, a unix socket.

Agents here answer with the base panel (ping, shutdown, stats, conf) on real connections;
the relay of ``spiderflow all`` runs with real forked children. Every wait is bounded, and
each timing check measures the wall time of one call: a dead or silent node costs at most
the timeout, and a client that heard every node stops waiting at once.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
import uuid

import pytest
from conftest import require_service
from test_webui import dbs, serve  # noqa: F401 (fixtures)

from spiderflow.control import (
    ControlClient,
    ControlWatch,
    connect_controldb,
    revokes_for,
)
from spiderflow.control.agent import Agent
from spiderflow.control.bus import (
    AmqpClientBus,
    AmqpNodeBus,
    PipeNodeBus,
    RedisClientBus,
    RedisNodeBus,
    SocketClientBus,
    socket_path,
)
from spiderflow.control.commands import (
    MAX_COMMAND,
    MAX_REPLY,
    BadMessage,
    decode_command,
    encode,
    make_command,
    make_reply,
    parse_rate,
    resign,
)
from spiderflow.control.panels import Panel
from spiderflow.exceptions import ConfigError
from spiderflow.message import Task
from spiderflow.settings import Settings

pytestmark = pytest.mark.timeout(90)


def tag() -> str:
    return f"sftest-{uuid.uuid4().hex[:10]}"


def panel(name: str, kind: str = "result-worker", settings: Settings | None = None) -> Panel:
    return Panel(kind, None, settings or Settings(), name=name, node_id=f"id-{name}")


def timed(fn, *args, **kwargs):
    start = time.monotonic()
    value = fn(*args, **kwargs)
    return value, time.monotonic() - start


# -- messages -------------------------------------------------------------------------------------

def test_commands_are_checked_before_they_are_sent_and_when_they_arrive():
    with pytest.raises(ConfigError, match="unknown command 'reboot'"):
        make_command("reboot")
    with pytest.raises(ConfigError, match="argument n of pool_grow"):
        make_command("pool_grow", {"n": 0})
    with pytest.raises(ConfigError, match="rate_limit needs the argument project"):
        make_command("rate_limit", {"rate": 1})
    with pytest.raises(ConfigError, match="invalid project name"):
        make_command("pause", {"project": "../x"})
    with pytest.raises(ConfigError, match="soft time limit is not changed at run time"):
        make_command("time_limit", {"project": "p", "seconds": 5, "soft": 2})
    with pytest.raises(ConfigError, match="timeout"):
        make_command("ping", timeout=0)
    good = make_command("ping", timeout=2)
    assert decode_command(encode(good))["command"] == "ping"
    for data, why in ((b"\xff", "not JSON"), (b"[1]", "protocol version"), (json.dumps({**good, "v": 2}).encode(), "version"),
                      (json.dumps({**good, "id": "x"}).encode(), "valid id"),
                      (json.dumps({**good, "destination": "a"}).encode(), "destination"),
                      (json.dumps({**good, "ttl": "1"}).encode(), "ttl"),
                      (b" " * (MAX_COMMAND + 1), "bytes")):
        with pytest.raises(BadMessage, match=why):
            decode_command(data)
    assert parse_rate("200/m") == pytest.approx(200 / 60) and parse_rate("5") == 5.0 and parse_rate("3600/h") == 1.0
    with pytest.raises(ValueError):
        parse_rate("fast")


def test_a_node_with_the_token_refuses_unsigned_forged_and_replayed_commands():
    signed = resign(make_command("shutdown"), "s3cret")
    assert decode_command(encode(signed), "s3cret")["command"] == "shutdown"
    with pytest.raises(BadMessage, match="not signed"):
        decode_command(encode(make_command("shutdown")), "s3cret")
    with pytest.raises(BadMessage, match="not signed"):
        decode_command(encode(resign(make_command("shutdown"), "guess")), "s3cret")
    tampered = {**signed, "destination": ["somebody"]}
    with pytest.raises(BadMessage, match="not signed"):
        decode_command(encode(tampered), "s3cret")
    with pytest.raises(BadMessage, match="a replay"):
        decode_command(encode(signed), "s3cret", now=signed["sent_at"] + 3600)


def test_replies_are_bounded_and_answer_unknown_commands_with_an_error():
    agent = Agent(panel("n1"), bus=None)
    command = make_command("ping")
    big = json.loads(make_reply(command, agent.identity, {"data": "x" * (MAX_REPLY + 10)}))
    assert "over" in big["reply"]["error"]
    raw = {**command, "command": "reboot"}
    assert agent.answer(raw) == (False, {"error": "unknown command 'reboot'"})
    assert agent.answer({**command, "command": "pool_grow", "arguments": {"n": 1}})[0] is True   # not a fetcher
    named = {**command, "command": "pool_grow", "arguments": {"n": 1}, "destination": ["n1"]}
    assert "does not act on pool_grow" in agent.answer(named)[1]["error"]
    assert agent.answer({**command, "destination": ["someone-else"]}) == (True, None)
    assert agent.answer({**command, "destination": ["id-n1"]})[1]["ok"] == "pong"     # by id too
    fetcher = Agent(panel("f1", kind="fetcher"), bus=None)
    bad = {**command, "command": "pool_grow", "arguments": {"n": 0}}
    assert "argument n of pool_grow" in fetcher.answer(bad)[1]["error"]
    assert "argument n of pool_grow" in fetcher.answer({**bad, "arguments": {"n": True}})[1]["error"]
    assert agent.answer({**command, "command": "ping", "arguments": {"x": 1}})[1]["error"].startswith("unknown argument")


# -- the shared state -------------------------------------------------------------------------------

def test_revokes_and_time_limits_persist_in_the_database_and_reach_a_new_watch(tmp_path):
    url = f"sqlite:///{tmp_path}/project.db"
    db = connect_controldb(url)
    now = time.time()
    try:
        db.add_revokes(revokes_for(["t1"], "p", now=now) + revokes_for(["t2"], None, now=now)
                       + revokes_for([], "whole", now=now) + revokes_for(["old"], "p", expires=1, now=now - 10))
        db.set_time_limit("p", 7)
        watch = ControlWatch(db).start()
        try:
            assert watch.revoked(Task(taskid="t1", project="p", url="u"))
            assert not watch.revoked(Task(taskid="t1", project="q", url="u"))        # t1 of p only
            assert watch.revoked(Task(taskid="t2", project="q", url="u"))            # t2 of any project
            assert watch.revoked(Task(taskid="x", project="whole", url="u", updatetime=now - 1))
            assert not watch.revoked(Task(taskid="x", project="whole", url="u", updatetime=now + 1))  # accepted later
            assert not watch.revoked(Task(taskid="old", project="p", url="u"))       # expired
            assert watch.time_limit("p") == 7.0 and watch.time_limit("q") is None
            assert {e.describe() for e in watch.entries()} == {"p:t1", "t2", "every task of whole"}
            db.add_revokes(revokes_for(["t3"], "p", terminate=True))
            deadline = time.monotonic() + 5
            while not watch.revoked(Task(taskid="t3", project="p", url="u")):
                assert time.monotonic() < deadline, "the watch did not read a new revoke within 5 s"
                time.sleep(0.05)
            assert watch.terminating(Task(taskid="t3", project="p", url="u"))
            assert not watch.terminating(Task(taskid="t1", project="p", url="u"))
        finally:
            watch.stop()
    finally:
        db.close()
    with pytest.raises(ValueError, match="task ids, --project"):
        revokes_for([], None)
    with pytest.raises(ValueError, match="1-255 printable"):
        revokes_for(["a\nb"], None)


# -- redis ------------------------------------------------------------------------------------------

@pytest.fixture
def redis_bus():
    import redis
    url = require_service("redis")
    prefix = tag()
    agents: list[Agent] = []

    def start(name: str, token: str | None = None) -> Agent:
        agent = Agent(panel(name, settings=Settings(queue=url, queue_prefix=prefix)), RedisNodeBus(url, prefix),
                      token).start()
        agents.append(agent)
        return agent

    def client(token: str | None = None) -> ControlClient:
        return ControlClient(Settings(queue=url, queue_prefix=prefix, scheduler_token=token),
                             bus=RedisClientBus(url, prefix))

    yield start, client, url, prefix
    for agent in agents:
        agent.stop()
    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()


@pytest.mark.services
def test_redis_every_live_node_answers_and_the_client_stops_once_all_have(redis_bus):
    start, client, url, prefix = redis_bus
    start("n1")
    start("n2")
    with client() as c:
        replies, took = timed(c.call, "ping", timeout=5)
        assert set(replies) == {"n1", "n2"} and replies["n1"]["ok"] == "pong"
        assert replies["n1"]["pid"] == os.getpid() and replies["n1"]["kind"] == "result-worker"
        assert took < 1.0, f"every node answered, yet the client waited {took:.2f} s"
        replies, took = timed(c.call, "ping", destination=["n2"], timeout=5)
        assert set(replies) == {"n2"} and took < 1.0
        stats = c.call("stats", destination=["id-n1"], timeout=5)["n1"]
        assert stats["pid"] == os.getpid() and stats["rusage"]["maxrss"] > 0 and stats["broker"]["transport"] == "redis"
        conf = c.call("conf", timeout=5)["n1"]
        assert conf["queue_prefix"] == prefix and conf["queue"] == url and "scheduler_token" in conf
    # the replies are deleted, or expire soon (a late one comes after the client left)
    import redis
    r = redis.Redis.from_url(url)
    assert all(0 < r.pttl(key) <= 20_000 for key in r.scan_iter(match=f"{prefix}:control:reply:*"))
    r.close()


@pytest.mark.services
def test_redis_a_dead_node_is_absent_and_a_silent_one_costs_the_timeout_only(redis_bus):
    import redis
    start, client, url, prefix = redis_bus
    start("alive")
    dead = start("dead")
    dead.stop()                       # its subscription is gone, as with a killed process
    with client() as c:
        replies, took = timed(c.call, "ping", timeout=3)
        assert set(replies) == {"alive"} and took < 1.0
        # a subscriber that never answers (a frozen process): the client waits its timeout, no longer
        frozen = redis.Redis.from_url(url).pubsub()
        frozen.subscribe(f"{prefix}:control")
        frozen.get_message(timeout=1)
        try:
            replies, took = timed(c.call, "ping", timeout=1.0)
            assert set(replies) == {"alive"}
            assert 1.0 <= took <= 1.5, f"a silent node cost {took:.2f} s with --timeout 1"
        finally:
            frozen.close()


@pytest.mark.services
def test_redis_a_node_with_the_token_answers_signed_commands_only(redis_bus):
    start, client, _url, _prefix = redis_bus
    start("guarded", token="s3cret")
    with client() as c:
        assert c.call("ping", timeout=0.5) == {}
    with client("s3cret") as c:
        assert c.call("ping", timeout=3)["guarded"]["ok"] == "pong"


@pytest.mark.services
def test_redis_raw_messages_that_are_not_commands_are_ignored(redis_bus):
    import redis
    start, client, url, prefix = redis_bus
    agent = start("n1")
    r = redis.Redis.from_url(url)
    r.publish(f"{prefix}:control", b"not json")
    r.publish(f"{prefix}:control", json.dumps({"v": 1, "id": "0" * 32, "command": "ping", "reply_to": "x",
                                               "sent_at": 0, "ttl": 1}).encode())   # reply_to not its own
    r.close()
    with client() as c:
        assert c.call("ping", timeout=3)["n1"]["ok"] == "pong"     # still answering
    assert agent.answered == 1


# -- amqp -------------------------------------------------------------------------------------------

@pytest.fixture
def amqp_bus():
    import pika
    url = require_service("amqp")
    prefix = tag()
    agents: list[Agent] = []

    def start(name: str) -> Agent:
        agent = Agent(panel(name), AmqpNodeBus(url, prefix)).start()
        agents.append(agent)
        return agent

    def client() -> ControlClient:
        return ControlClient(Settings(queue=url, queue_prefix=prefix), bus=AmqpClientBus(url, prefix))

    yield start, client
    for agent in agents:
        agent.stop()
    conn = pika.BlockingConnection(pika.URLParameters(url))
    conn.channel().exchange_delete(f"{prefix}.control")
    conn.close()


@pytest.mark.services
def test_amqp_every_node_answers_a_dead_one_is_absent_within_the_timeout(amqp_bus):
    start, client = amqp_bus
    start("a1")
    b = start("a2")
    with client() as c:
        replies, took = timed(c.call, "ping", timeout=1.0)
        assert set(replies) == {"a1", "a2"} and replies["a2"]["ok"] == "pong"
        assert took <= 1.5
        replies, took = timed(c.call, "ping", destination=["a1", "a2"], timeout=5)
        assert set(replies) == {"a1", "a2"} and took < 1.5, "both named nodes answered, yet the client waited"
        b.stop()
        replies, took = timed(c.call, "ping", timeout=1.0)
        assert set(replies) == {"a1"} and took <= 1.5, f"a dead node cost {took:.2f} s with --timeout 1"
        replies, took = timed(c.call, "ping", destination=["a2"], timeout=1.0)
        assert replies == {} and took <= 1.5


# -- the unix socket of `spiderflow all` ------------------------------------------------------------------

def _child(name: str) -> None:
    """A child of the relay: an agent on its pipe, until killed or shut down."""
    from spiderflow.control import relay
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    agent = Agent(panel(name), PipeNodeBus(relay.parent_pipe)).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and agent._thread.is_alive():
        time.sleep(0.1)
    os._exit(3)


def test_the_relay_socket_is_owner_only_and_relays_to_live_children(tmp_path):
    import multiprocessing

    from spiderflow.control.relay import Relay
    data = tmp_path / ("d" * 60) / ("e" * 60)          # past the 108 bytes of a unix socket path
    data.mkdir(parents=True)
    ctx = multiprocessing.get_context("fork")
    relay = Relay(ctx, str(data))
    procs = {}
    try:
        path = socket_path(str(data))
        assert len(path) > 108 and stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_ISSOCK(os.stat(path).st_mode)
        for index, name in enumerate(("c1", "c2")):
            proc = ctx.Process(target=relay.wrap(("fetcher", index), _child), args=(name,), daemon=True)
            proc.start()
            relay.started(("fetcher", index))
            procs[name] = proc
        client = ControlClient(Settings(data_dir=str(data)), bus=SocketClientBus(path))

        def both() -> dict:
            deadline = time.monotonic() + 10
            while True:
                replies = client.call("ping", timeout=2)
                if set(replies) == {"c1", "c2"} or time.monotonic() > deadline:
                    return replies
                time.sleep(0.1)

        replies = both()
        assert set(replies) == {"c1", "c2"} and {r["pid"] for r in replies.values()} == {p.pid for p in procs.values()}
        _, took = timed(client.call, "ping", timeout=5)
        assert took < 1.0, "the relay said how many children it asked: the client need not wait"
        os.kill(procs["c1"].pid, signal.SIGKILL)
        procs["c1"].join(5)
        replies, took = timed(client.call, "ping", timeout=1.0)
        assert set(replies) == {"c2"} and took <= 1.5
        assert not relay.left(("fetcher", 1))
        reply = client.call("shutdown", destination=["c2"], timeout=3)
        assert reply["c2"]["ok"].startswith("shutting down")
        procs["c2"].join(10)
        assert procs["c2"].exitcode == 0
        deadline = time.monotonic() + 5
        while not relay.left(("fetcher", 1)):
            assert time.monotonic() < deadline, "the relay did not hear that the child left on a remote shutdown"
            time.sleep(0.05)
        assert not relay.left(("fetcher", 0)) and relay.shut_down
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        relay.close()
    assert not os.path.exists(socket_path(str(data)))
    with pytest.raises(ConfigError, match="no `spiderflow all` answers"):
        ControlClient(Settings(data_dir=str(data))).call("ping")


def test_a_memory_queue_has_no_cluster_to_control():
    with pytest.raises(ConfigError, match="one process"):
        ControlClient(Settings(queue="memory://"))


# -- the web UI's /api/control -------------------------------------------------------------------------------

@pytest.mark.services
def test_the_web_ui_sends_the_commands_with_its_auth_rules(redis_bus, serve, dbs):
    from test_webui import Client, add_project
    start, _client, url, prefix = redis_bus
    start("n1")
    _server, client = serve(queue=url, queue_prefix=prefix)
    replies = client.get("/api/control/ping?timeout=3").json["replies"]
    assert replies["n1"]["ok"] == "pong"
    assert client.get("/api/control/stats?destination=id-n1&timeout=3").json["replies"]["n1"]["pid"] == os.getpid()
    assert client.post("/api/control/ping", {"timeout": 3, "destination": ["n1"]}).json["replies"]["n1"]["ok"] == "pong"
    assert client.get("/api/control/shutdown").status == 405          # a change is a POST, with the xsrf token
    assert client.post("/api/control/shutdown", {}, xsrf=False).status == 403
    assert client.get("/api/control/reboot").status == 404
    assert client.get("/api/control/ping?timeout=99").status == 400
    assert client.post("/api/control/pause", {"project": "nope"}).status == 404
    add_project(dbs, "locked", group="lock")
    assert client.post("/api/control/pause", {"project": "locked"}).status == 403
    add_project(dbs, "open", status="RUNNING")
    bad = client.post("/api/control/rate_limit", {"project": "open", "rate": "fast"})
    assert bad.status == 400 and "N/s" in bad.json["error"]
    answer = client.post("/api/control/rate_limit", {"project": "open", "rate": "120/m", "timeout": 0.3})
    assert answer.status == 200 and answer.json == {"replies": {}}     # stored; no scheduler to apply it here
    assert dbs.projectdb.get("open", ["rate"])["rate"] == 2.0
    _server, guarded = serve(queue=url, queue_prefix=prefix, username="admin", password="pw")
    assert guarded.get("/api/control/ping").status == 401
    _server, nobody = serve(data_dir="/nonexistent/spiderflow")           # no `spiderflow all` there
    down = nobody.get("/api/control/ping")
    assert down.status == 503 and "no `spiderflow all` answers" in down.json["error"]
    assert isinstance(client, Client)
