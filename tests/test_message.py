"""Messages: round trips, type checks, corrupt bytes, task ids, project names."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from spiderflow.exceptions import InvalidProjectName, SerializationError
from spiderflow.message import (
    _SLOW,
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    SPECIAL_TASKS,
    Fetch,
    FetchResult,
    Process,
    ProjectStatus,
    ResultPack,
    Schedule,
    StatusPack,
    Task,
    TaskStatus,
    Track,
    md5_taskid,
    pack,
    special_task,
    unpack,
    validate_project_name,
)


def full_task() -> Task:
    return Task.create(
        "shop_2", "http://127.0.0.1/a?b=c",
        schedule=Schedule(priority=5, retries=2, retried=1, exetime=12.5, age=3600, itag="v2",
                          force_update=True, auto_recrawl=True, cancel=False),
        fetch=Fetch(method="POST", headers={"X-A": "1"}, params={"q": "x"}, data=b"\x00\xffbin",
                    cookies={"s": "1"}, timeout=3, proxy=False, etag="abc", save={"k": [1, 2]}),
        process=Process(callback="detail_page", time_limit=5),
        track=Track(fetch={"ok": True, "status_code": 200}, process={"ok": False, "logs": "x"}),
        lastcrawltime=100.0,
    )


def test_task_id_defaults_to_md5_of_url():
    task = Task.create("p", "http://example.com/é")
    assert task.taskid == hashlib.md5("http://example.com/é".encode()).hexdigest() == md5_taskid(task.url)
    assert Task.from_dict({"project": "p", "url": "http://x/"}).taskid == md5_taskid("http://x/")
    assert Task.create("p", "http://x/", taskid="mine").taskid == "mine"


@pytest.mark.parametrize("msg", [
    full_task(),
    FetchResult(200, "http://a/", orig_url="http://b/", headers={"Content-Type": "text/html"},
                content=b"<html>\xe9</html>", cookies={"a": "b"}, time=0.25, save=[1], truncated=True),
    FetchResult(599, "http://a/", error="timeout"),
    StatusPack("t1", "p", "http://a/", track=Track(fetch={"ok": True}), schedule=Schedule(retried=2)),
    StatusPack("t1", "p", "http://a/"),
    ResultPack("p", "t1", "http://a/", result={"title": "x", "n": [1, 2.5, None]}, updatetime=5.0),
])
def test_round_trip_through_dict_and_msgpack(msg):
    assert type(msg).from_dict(msg.to_dict()) == msg
    assert unpack(pack(msg)) == msg


def test_tuple_of_messages_round_trips():
    pair = (full_task(), FetchResult(200, "http://a/", content=b"x"))
    assert unpack(pack(pair)) == pair


def test_status_enum_survives_round_trip():
    task = unpack(pack(Task.create("p", "http://a/", status=TaskStatus.BAD)))
    assert task.status is TaskStatus.BAD
    assert ProjectStatus("RUNNING").schedulable and not ProjectStatus.STOP.schedulable


def test_copy_is_deep():
    task = full_task()
    clone = task.copy()
    clone.fetch.headers["X-B"] = "2"
    clone.schedule.retried = 9
    assert "X-B" not in task.fetch.headers and task.schedule.retried == 1


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"not msgpack at all", msgpack.packb([1, 2, 3]), msgpack.packb({"v": 1}),
    msgpack.packb({"v": 99, "k": "one", "b": ["task", {}]}),
    msgpack.packb({"v": 1, "k": "one", "b": ["nope", {}]}),
    msgpack.packb({"v": 1, "k": "one", "b": ["task", {"project": "p"}]}),
    msgpack.packb({"v": 1, "k": "tuple", "b": "x"}),
    pack(full_task())[:-5],
])
def test_corrupt_or_foreign_bytes_raise_serialization_error(data):
    with pytest.raises(SerializationError):
        unpack(data)


def test_unpack_rejects_non_bytes():
    with pytest.raises(SerializationError, match="needs bytes"):
        unpack("text")


@pytest.mark.parametrize("data, field", [
    ({"project": "p", "url": 5}, "Task.url"),
    ({"project": "p", "url": "u", "schedule": {"priority": "high"}}, "Schedule.priority"),
    ({"project": "p", "url": "u", "schedule": {"force_update": 1}}, "Schedule.force_update"),
    ({"project": "p", "url": "u", "schedule": {"retries": True}}, "Schedule.retries"),
    ({"project": "p", "url": "u", "fetch": {"headers": []}}, "Fetch.headers"),
    ({"project": "p", "url": "u", "fetch": "GET"}, "Fetch must be a dict"),
    ({"project": "p", "url": "u", "status": "DONE"}, "Task.status"),
])
def test_wrong_field_types_name_the_field(data, field):
    with pytest.raises(SerializationError, match=field.replace(".", r"\.")):
        Task.from_dict(data)


def test_missing_required_fields():
    with pytest.raises(SerializationError, match="'url'"):
        Task.from_dict({"project": "p"})
    with pytest.raises(SerializationError, match="'taskid'"):
        StatusPack.from_dict({"project": "p", "url": "u"})


def test_unknown_keys_from_newer_schema_are_ignored():
    data = full_task().to_dict()
    data["future_field"] = 1
    data["schedule"]["future"] = 2
    decoded = Task.from_dict(data)
    assert decoded.schedule.priority == 5 and decoded.fetch.data == b"\x00\xffbin"
    assert not hasattr(decoded, "future_field")


@pytest.mark.parametrize("name", ["p'; drop table tasks; --", 'a"b', "", "-lead", "a b", "x" * 65, "é", None, 5])
def test_bad_project_names_are_rejected(name):
    with pytest.raises(InvalidProjectName):
        validate_project_name(name)
    with pytest.raises((InvalidProjectName, SerializationError)):
        Task.from_dict({"project": name, "url": "http://a/"})


@pytest.mark.parametrize("name", ["a", "my_project", "Shop-2", "x" * 64, "_private"])
def test_good_project_names(name):
    assert validate_project_name(name) == name


def test_pack_refuses_non_messages():
    with pytest.raises(SerializationError):
        pack({"a": 1})
    with pytest.raises(SerializationError):
        pack(ResultPack("p", "t", "u", result=object()))


def test_special_tasks():
    for taskid, (url, callback) in SPECIAL_TASKS.items():
        task = special_task("p", taskid, save={"tick": 1})
        assert (task.taskid, task.url, task.process.callback) == (taskid, url, callback)
        assert task.url.startswith("data:,") and task.fetch.save == {"tick": 1}
        assert unpack(pack(task)) == task


def test_schema_version_is_in_every_envelope():
    assert msgpack.unpackb(pack(full_task()))["v"] == SCHEMA_VERSION


# -- the fast decoders agree with the checked one ----------------------------------

def _link() -> dict:
    return {"taskid": "a" * 32, "project": "bench", "url": "http://x/?n=1", "process": {"callback": "index_page"},
            "updatetime": 1.5}


DECODE_CASES = [
    ("task", _link()),
    ("task", full_task().to_dict()),
    ("task", full_task()._wire()),
    ("task", {**_link(), "status": "SUCCESS", "lastcrawltime": 3}),
    ("task", {**_link(), "status": "DONE"}),
    ("task", {**_link(), "status": 1}),
    ("task", {k: v for k, v in _link().items() if k != "taskid"}),
    ("task", {**_link(), "taskid": None}),
    ("task", {**_link(), "taskid": 7}),
    ("task", {**_link(), "project": "no spaces"}),
    ("task", {**_link(), "project": None}),
    ("task", {k: v for k, v in _link().items() if k != "url"}),
    ("task", {**_link(), "url": b"http://x/"}),
    ("task", {**_link(), "schedule": {"priority": True}}),
    ("task", {**_link(), "schedule": {"exetime": 5, "age": 1.5, "itag": None}}),
    ("task", {**_link(), "schedule": {"itag": 3}}),
    ("task", {**_link(), "schedule": [1]}),
    ("task", {**_link(), "schedule": None, "fetch": None, "track": None}),
    ("task", {**_link(), "fetch": {"headers": [], "method": "GET"}}),
    ("task", {**_link(), "fetch": {"proxy": False, "etag": "x", "timeout": True}}),
    ("task", {**_link(), "track": {"fetch": None}}),
    ("task", {**_link(), "process": {"time_limit": "5"}}),
    ("task", {**_link(), "lastcrawltime": True}),
    ("task", {**_link(), "updatetime": "now"}),
    ("task", {**_link(), "newer_field": {"x": 1}}),
    ("task", [1, 2]),
    ("task", "text"),
    ("status", {"taskid": "t", "project": "p", "url": "u", "track": {"fetch": {"ok": True}, "process": {}},
                "schedule": {}}),
    ("status", {"taskid": "t", "project": "p", "url": "u"}),
    ("status", {"taskid": "t", "project": "p", "url": "u", "schedule": None}),
    ("status", {"taskid": "t", "project": "p", "url": "u", "track": {"process": []}}),
    ("status", {"project": "p", "url": "u"}),
    ("status", {"taskid": "t", "project": "-p", "url": "u"}),
    ("result", {"project": "p", "taskid": "t", "url": "u", "result": {"a": [1]}, "updatetime": 2}),
    ("result", {"project": "p", "taskid": "t", "url": 5}),
    ("fetch_result", {"status_code": 200, "url": "u", "content": b"x", "truncated": 1}),
    ("fetch_result", {"status_code": 200, "url": "u", "headers": {"a": "b"}, "time": 0}),
]


def _outcome(decode):
    try:
        obj = decode()
    except (SerializationError, InvalidProjectName) as exc:
        return "error", type(exc), str(exc)
    return "ok", obj, type(obj), type(getattr(obj, "status", None))


@pytest.mark.parametrize("tag, data", DECODE_CASES)
def test_fast_decoders_decode_as_the_checked_decoder(tag, data, monkeypatch):
    """from_dict and unpack give the message, or raise the error, that the checked decoder does.

    A bad project name is InvalidProjectName from from_dict, SerializationError from unpack
    (what a queue drops as malformed).
    """
    cls = MESSAGE_TYPES[tag]
    wire = msgpack.packb({"v": SCHEMA_VERSION, "k": "one", "b": [tag, data]}, use_bin_type=True)
    from_dict, unpacked = _outcome(lambda: cls.from_dict(data)), _outcome(lambda: unpack(wire))
    for message_class in (Schedule, Fetch, Process, Track, *MESSAGE_TYPES.values()):
        monkeypatch.setattr(message_class, "_fast_from_dict", staticmethod(lambda data: _SLOW))
    expected = _outcome(lambda: cls.from_dict(data))        # every field of every part checked
    assert from_dict == expected
    if expected[:2] == ("error", InvalidProjectName):
        expected = ("error", SerializationError, expected[2])
    assert unpacked == expected


def test_decode_cases_cover_the_fast_path():
    fast = 0
    for tag, data in DECODE_CASES:
        try:
            fast += MESSAGE_TYPES[tag]._fast_from_dict(data) is not _SLOW
        except (SerializationError, InvalidProjectName):
            fast += 1
    assert 10 < fast < len(DECODE_CASES) - 10     # many decoded fast, many left to the checked decoder


@pytest.mark.parametrize("tag", [[1], {"a": 1}, None, 5])
def test_unhashable_or_odd_tags_are_serialization_errors(tag):
    with pytest.raises(SerializationError, match="not a tagged spiderflow message"):
        unpack(msgpack.packb({"v": SCHEMA_VERSION, "k": "one", "b": [tag, {}]}))
