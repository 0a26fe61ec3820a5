"""JSON text for the nested task parts, exact for everything a message can carry.

A task's ``schedule``, ``fetch``, ``process`` and ``track`` are stored as JSON objects that
hold only the fields that differ from the dataclass defaults. Values JSON cannot express are
tagged in one-key objects: ``{"$b": base64}`` for bytes, ``{"$t": [...]}`` for tuples and
``{"$d": [[key, value], ...]}`` for dicts whose keys are not all strings (or whose single
key would look like a tag). Decoding reverses it exactly, so a task read back compares
equal to the task written.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import operator
from collections.abc import Callable
from typing import Any

_TAGS = ("$b", "$t", "$d")
_SCALARS = (str, int, float, bool, type(None))
_MISSING = object()
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_encode_str: Callable[[str], str] = json.encoder.encode_basestring   # a JSON string, as _ENCODER writes it
_STRICT_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_layouts: dict[type, tuple[Callable[[Any], tuple], tuple[tuple[str, Any, type], ...]]] = {}
_dumpers: dict[type, Callable[[Any], str]] = {}


def _layout(cls: type) -> tuple[Callable[[Any], tuple], tuple[tuple[str, Any, type], ...]]:
    """A getter of all field values and (name, default, type of default) of a dataclass."""
    found = _layouts.get(cls)
    if found is None:
        fields = []
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = _MISSING
            fields.append((f.name, default, type(default)))
        names = [name for name, _, _ in fields]
        getter = operator.attrgetter(*names) if len(names) > 1 else (lambda o: (getattr(o, names[0]),))
        found = _layouts[cls] = (getter, tuple(fields))
    return found


def encode_value(value: Any) -> Any:
    """Turn *value* into plain JSON data, tagging bytes, tuples and non-string-keyed dicts."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, dict):
        if all(type(k) is str for k in value) and not (len(value) == 1 and next(iter(value)) in _TAGS):
            return {k: encode_value(v) for k, v in value.items()}
        return {"$d": [[encode_value(k), encode_value(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, tuple):
        return {"$t": [encode_value(v) for v in value]}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"cannot store a value of type {type(value).__name__}")


_JSON_TYPES = frozenset((str, int, float, bool, type(None)))


def is_plain(value: Any) -> bool:
    """Whether *value* is JSON data as it stands, so :func:`encode_value` would return an equal copy.

    Exact types only (str, int, float, bool, None; lists; dicts with str keys, not one
    key that looks like a tag): it lets the common case skip the copy.
    """
    kind = type(value)
    if kind in _JSON_TYPES:
        return True
    if kind is dict:
        if len(value) == 1 and next(iter(value)) in _TAGS:
            return False
        for k, v in value.items():
            if type(k) is not str or (type(v) not in _JSON_TYPES and not is_plain(v)):
                return False
        return True
    if kind is list:
        for v in value:
            if type(v) not in _JSON_TYPES and not is_plain(v):
                return False
        return True
    return False


def decode_value(value: Any) -> Any:
    """Inverse of :func:`encode_value`."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        tag, inner = next(iter(value.items()))
        if tag == "$b":
            return base64.b64decode(inner)
        if tag == "$t":
            return tuple(decode_value(v) for v in inner)
        if tag == "$d":
            return {decode_value(k): decode_value(v) for k, v in inner}
    return {k: decode_value(v) for k, v in value.items()}


def dumps_part(part: Any) -> str:
    """JSON text of a message dataclass, holding only its non-default fields."""
    if part is None:
        return "null"
    dumps = _dumpers.get(type(part))
    if dumps is None:
        dumps = _dumpers[type(part)] = _make_dumps(type(part))
    return dumps(part)


def _make_dumps(cls: type) -> Callable[[Any], str]:
    """:func:`dumps_part` for *cls*, generated: one inline default test per field, no loop.

    It writes the JSON object itself, member by member, exactly as ``_ENCODER`` would
    (field order, ``","``/``":"`` separators, strings unescaped beyond JSON's rules);
    strings, finite floats and ints are formatted inline, anything else goes through
    :func:`_json_value` (or the encoder). A field is left out when its value has the
    default's exact type and equals it; for a None, bool or empty dict/list default that
    test is written as the identity or emptiness test it amounts to.
    """
    _, fields = _layout(cls)
    ns: dict[str, Any] = {"encode_value": encode_value, "_value": _json_value, "_str": _encode_str,
                          "_plain": is_plain, "_float": float, "_int": int, "_frepr": float.__repr__,
                          "_irepr": int.__repr__}
    lines = ["def dumps(part):", "    out = []"]
    for i, (name, default, default_type) in enumerate(fields):
        ns[f"_d{i}"], ns[f"_t{i}"] = default, default_type
        key = _encode_str(name) + ":"
        lines += [f"    v = part.{name}",
                  f"    if {_differs(i, default, default_type)}:",
                  "        t = type(v)",
                  f"        out.append({key!r} + (_str(v) if t is str else _frepr(v) if t is _float and v - v == 0.0"
                  f" else _irepr(v) if t is _int else _value(v if _plain(v) else encode_value(v))))"]
    lines.append('    return "{" + ",".join(out) + "}" if out else "{}"')
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<spiderflow.storage.codec {cls.__name__}>", "exec"), ns)  # noqa: S102 - generated here
    return ns["dumps"]


def _differs(i: int, default: Any, default_type: type) -> str:
    """The generated test that ``v`` is not field *i*'s default: ``not (type(v) is _t and v == _d)``.

    None, True and False are the only values of their types, so that test is ``v is not
    <default>``; a value of exactly dict or list equals an empty default when it is empty.
    """
    if default is None or default is True or default is False:
        return f"v is not {default!r}"
    if default_type in (dict, list) and not default:
        return f"not (type(v) is _t{i} and not v)"
    return f"not (type(v) is _t{i} and v == _d{i})"


def _json_value(value: Any) -> str:
    """*value* as ``_ENCODER`` writes it (plain JSON data, after :func:`encode_value`)."""
    kind = type(value)
    if kind is str:
        return _encode_str(value)
    if kind is float:
        if math.isnan(value) or math.isinf(value):
            return _ENCODER.encode(value)      # NaN / Infinity, as the encoder spells them
        return float.__repr__(value)
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return _ENCODER.encode(value)


def loads_part(cls: type, text: str | None) -> Any:
    """The message dataclass *cls* from :func:`dumps_part` text (defaults for missing fields)."""
    if not text or text == "{}" or text == "null":
        return cls()
    data = json.loads(text)
    return cls.from_dict(decode_value(data))


def dumps_result(result: Any) -> str:
    """Strict JSON text of a result value; raises TypeError/ValueError when it is not JSON."""
    return _STRICT_ENCODER.encode(result)


def loads_result(text: str | None) -> Any:
    return None if text is None else json.loads(text)
