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
import operator
from collections.abc import Callable
from typing import Any

_TAGS = ("$b", "$t", "$d")
_SCALARS = (str, int, float, bool, type(None))
_MISSING = object()
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_STRICT_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_layouts: dict[type, tuple[Callable[[Any], tuple], tuple[tuple[str, Any, type], ...]]] = {}


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
    getter, fields = _layout(type(part))
    out = {}
    for (name, default, default_type), value in zip(fields, getter(part)):
        if type(value) is default_type and value == default:
            continue
        out[name] = value if type(value) is str else encode_value(value)
    return _ENCODER.encode(out) if out else "{}"


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
