"""Messages: round trips, type checks, corrupt bytes, task ids, project names."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
from collections import OrderedDict

import msgpack
import pytest

from spiderflow.exceptions import InvalidProjectName, SerializationError
from spiderflow import message
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


# -- cheap construction and packing give what the plain ways give --------------------

PARTS = (Schedule, Fetch, Process, Track)


@pytest.mark.parametrize("cls", PARTS)
def test_default_part_equals_the_constructor_and_owns_its_values(cls):
    a, b = cls._default(), cls._default()
    assert type(a) is cls and a == cls() and b == cls()   # == reads every field: none is left unset
    for f in dataclasses.fields(cls):
        value = getattr(a, f.name)
        if isinstance(value, dict):
            assert value is not getattr(b, f.name)
            value["changed"] = 1
    assert b == cls()


def test_only_messages_without_required_fields_have_a_default():
    assert [cls for cls in (*PARTS, *MESSAGE_TYPES.values()) if hasattr(cls, "_default")] == list(PARTS)


def _independent(a: Task, b: Task) -> None:
    """Mutating every part of *a* leaves *b* as it was."""
    before = b.to_dict()
    for part in (a.schedule, a.fetch, a.process, a.track):
        assert all(part is not other for other in (b.schedule, b.fetch, b.process, b.track))
    a.schedule.retried += 1
    a.fetch.headers["X"] = "1"
    a.fetch.cookies["c"] = "1"
    a.process.callback = "other"
    a.track.fetch["ok"] = True
    a.track.process["ok"] = True
    assert b.to_dict() == before


def test_new_tasks_get_their_own_default_parts():
    a, b = Task("t", "p", "http://a/"), Task("t", "p", "http://a/")
    assert (a.schedule, a.fetch, a.process, a.track) == (Schedule(), Fetch(), Process(), Track())
    _independent(a, b)
    wire = pack(Task("t", "p", "http://a/"))
    c, d = unpack(wire), unpack(wire)
    assert c == Task("t", "p", "http://a/")
    _independent(c, d)
    _independent(d, Task("t", "p", "http://a/"))


@pytest.mark.parametrize("callback", ["index_page", None])
def test_follow_equals_the_constructor(callback):
    task = Task.follow("id", "p", "http://a/", callback, 1.5)
    expected = Task(taskid="id", project="p", url="http://a/", process=Process(callback=callback), updatetime=1.5)
    assert task == expected and type(task.status) is TaskStatus
    assert pack(task) == pack(expected)
    _independent(task, Task.follow("id", "p", "http://a/", callback, 1.5))
    _independent(Task.follow("id", "p", "http://a/", callback, 1.5), task)


def _reference_wire(msg) -> dict:
    """What a packed message holds: every field but those of the default's type and value
    (and sign, for floats); a nested part as its own wire, left out when that is empty."""
    out = {}
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if f.name in msg._nested:
            if f.default is None and value is None:
                continue
            wire = None if value is None else _reference_wire(value)
            if wire or f.default_factory is dataclasses.MISSING or value is None:
                out[f.name] = wire
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            out[f.name] = value.value if isinstance(value, TaskStatus) else value
            continue
        if (type(value) is type(default) and value == default
                and (not isinstance(value, float) or math.copysign(1, value) == math.copysign(1, default))):
            continue
        out[f.name] = value.value if isinstance(value, TaskStatus) else value
    return out


#: Values near the defaults: equal ones of another type, the other bool, -0.0, NaN, empty containers.
NEAR_DEFAULTS = [None, True, False, 0, 1, -1, 3, 0.0, -0.0, 1.0, -1.0, math.nan, "", "GET", "get", {}, {"a": "1"},
                 OrderedDict(), [], b"", TaskStatus.ACTIVE, TaskStatus.SUCCESS, "ACTIVE"]


@pytest.mark.parametrize("cls", [*PARTS, *MESSAGE_TYPES.values()])
def test_wire_leaves_out_exactly_the_default_values(cls):
    base = {Task: full_task(), FetchResult: FetchResult(200, "http://a/"), StatusPack: StatusPack("t", "p", "u"),
            ResultPack: ResultPack("p", "t", "u")}.get(cls) or cls()
    for f in dataclasses.fields(cls):
        for value in ([None, cls._nested[f.name]()] if f.name in cls._nested else NEAR_DEFAULTS):
            msg = dataclasses.replace(base)
            setattr(msg, f.name, value)
            assert msg._wire() == _reference_wire(msg), (f.name, value)
    for tag, message_class in MESSAGE_TYPES.items():
        if message_class is cls:
            expected = msgpack.packb({"v": SCHEMA_VERSION, "k": "one", "b": [tag, _reference_wire(base)]},
                                     use_bin_type=True)
            assert pack(base) == expected


def test_a_task_of_default_parts_packs_to_its_identity_and_callback():
    task = Task.follow("id", "p", "http://a/", "index_page", 1.5)
    assert msgpack.unpackb(pack(task))["b"] == [
        "task", {"taskid": "id", "project": "p", "url": "http://a/", "process": {"callback": "index_page"},
                 "updatetime": 1.5}]


class _PackingDict(dict):
    """A dict whose items() packs another value first: a pack inside a pack."""

    def items(self):
        assert message._packb({"inner": [1, 2, 3]}) == msgpack.packb({"inner": [1, 2, 3]}, use_bin_type=True)
        return super().items()


@pytest.mark.parametrize("value", [
    {"a": 1}, [b"\x00", "é", 2.5, None, True, -(2 ** 63), 2 ** 64 - 1], {"nested": _PackingDict(x=1)},
    b"x" * 200_000,
])
def test_packb_gives_msgpack_bytes(value):
    assert message._packb(value) == msgpack.packb(value, use_bin_type=True)
    assert message._packb(value) == msgpack.packb(value, use_bin_type=True)


def test_packers_are_reused_unless_grown_or_failed(monkeypatch):
    monkeypatch.setattr(message, "_PACKERS", [])
    message._packb({"a": 1})
    kept = list(message._PACKERS)
    assert len(kept) == 1
    message._packb({"b": 2})
    assert message._PACKERS == kept
    message._packb(b"x" * (message._PACKER_BUFFER + 1))   # its grown buffer is not kept
    assert message._PACKERS == []
    with pytest.raises(TypeError):
        message._packb({"a": object()})
    assert message._PACKERS == []


@pytest.mark.parametrize("value, error", [
    ({"a": object()}, "cannot pack value: can not serialize 'object' object"),
    ({"a": 2 ** 64}, "cannot pack value: Integer value out of range"),
])
def test_pack_errors_are_those_of_msgpack(value, error):
    from spiderflow.message import packb_value

    for _ in range(2):
        with pytest.raises(SerializationError, match=f"^{error}$"):
            packb_value(value)
        assert packb_value({"ok": [1]}) == msgpack.packb({"ok": [1]}, use_bin_type=True)
    task = Task.follow("id", "p", "http://a/", "index_page", 1.5)
    task.fetch.save = value
    with pytest.raises(SerializationError, match=f"^cannot pack Task: {error.removeprefix('cannot pack value: ')}$"):
        pack(task)


def test_md5_taskid_uses_the_builtin_md5_or_hashlib(monkeypatch):
    urls = ["", "http://a/", "http://example.com/é?q=ü#frag", "x" * 10_000]
    assert [md5_taskid(u) for u in urls] == [hashlib.md5(u.encode()).hexdigest() for u in urls]
    assert message._md5_constructor() is pytest.importorskip("_md5").md5
    monkeypatch.setitem(sys.modules, "_md5", None)     # a Python built without it
    assert message._md5_constructor() is hashlib.md5


@pytest.mark.parametrize("annotation, types", [(str, str), (str | None, (str, type(None))), (str, object)])
def test_a_required_field_must_have_no_default_and_refuse_none(annotation, types):
    @dataclasses.dataclass(slots=True)
    class Odd(message._Message):
        name: annotation = "x" if annotation is str and types is str else dataclasses.MISSING
        _types = {"name": types}
        _required = ("name",)

    with pytest.raises(TypeError, match="^Odd.name is required: it must have no default and not accept None$"):
        message._compile(Odd)
