"""pyspider's import lines, for project scripts only: ``from pyspider.libs.base_handler import *``.

A pyspider script starts with ``from pyspider.libs.base_handler import *`` and may import
``pyspider.libs.utils`` (md5string, ...), ``pyspider.libs.response`` (Response) or
``pyspider.libs.url`` (quote_chinese). :func:`script_builtins` gives the builtins a script
is executed with (:func:`~spiderflow.processor.project.load_project`): the same as
Python's, except that ``__import__`` answers ``pyspider`` and its submodules with the
modules built here, whose names are spiderflow's (``BaseHandler`` is
:class:`spiderflow.BaseHandler`). Every function a script defines keeps those builtins, so
an import inside a callback resolves the same way.

Nothing is put in ``sys.modules`` and no import hook is installed: outside project scripts
``import pyspider`` behaves as it always does (ImportError unless pyspider is installed,
the real package if it is). Inside them the aliases win, even over an installed pyspider.
A pyspider module or name not provided here raises ImportError naming what is provided.
"""

from __future__ import annotations

import builtins
import fractions
import functools
import hashlib
import inspect
import pprint as _pprint
import sys
import types
from typing import Any

from .handler import (
    BaseHandler,
    catch_status_code_error,
    config,
    every,
    not_send_status,
)
from .response import Response

#: the modules ``import pyspider...`` gives a project script, by name (built below)
_MODULES: dict[str, types.ModuleType] = {}
_BUILTINS: dict[str, Any] | None = None


# -- pyspider.libs.utils -------------------------------------------------------------------------

def utf8(string: Any) -> bytes:
    """*string* as UTF-8 bytes (anything else through ``str()`` first)."""
    if isinstance(string, bytes):
        return string
    return (string if isinstance(string, str) else str(string)).encode("utf-8")


def text(string: Any, encoding: str = "utf8") -> str:
    """*string* as text: bytes decoded with *encoding*, anything else through ``str()``."""
    if isinstance(string, bytes):
        return string.decode(encoding)
    return string if isinstance(string, str) else str(string)


def md5string(x: Any) -> str:
    """The hex md5 of *x* as UTF-8: pyspider's default task id of a URL."""
    return hashlib.md5(utf8(x)).hexdigest()


def pretty_unicode(string: Any) -> str:
    """*string* as text: UTF-8 if it decodes, else its bytes escaped."""
    if isinstance(string, str):
        return string
    try:
        return string.decode("utf8")
    except UnicodeDecodeError:
        return string.decode("latin-1").encode("unicode_escape").decode("utf8")


def getitem(obj: Any, key: Any = 0, default: Any = None) -> Any:
    """``obj[key]``, or *default* if that fails (the first element of a list by default)."""
    try:
        return obj[key]
    except Exception:  # noqa: BLE001 - pyspider's getitem: any failure gives the default
        return default


class ObjectDict(dict):
    """A dict whose keys read as attributes too."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return value.__get__(self, ObjectDict) if hasattr(value, "__get__") else value


class ReadOnlyDict(dict):
    """A dict that refuses item assignment."""

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError("dict is read-only")


# -- pyspider.libs.url -----------------------------------------------------------------------------

def quote_chinese(url: str | bytes, encodeing: str = "utf-8") -> str:  # pyspider's spelling of the keyword
    """*url* with every non-ASCII byte percent-encoded."""
    data = url.encode(encodeing) if isinstance(url, str) else url
    return "".join(chr(b) if b < 128 else f"%{b:02X}" for b in data)


# -- the module tree -------------------------------------------------------------------------------

#: what each module holds; ``__all__`` of base_handler is what its ``import *`` gives, as
#: pyspider's module globals did (minus its internals and six)
_CONTENTS: dict[str, dict[str, Any]] = {
    "pyspider": {},
    "pyspider.libs": {},
    "pyspider.libs.base_handler": {
        "BaseHandler": BaseHandler, "every": every, "config": config,
        "catch_status_code_error": catch_status_code_error, "not_send_status": not_send_status,
        "md5string": md5string, "quote_chinese": quote_chinese, "pprint": _pprint.pprint,
        "sys": sys, "inspect": inspect, "functools": functools, "fractions": fractions,
    },
    "pyspider.libs.utils": {
        "md5string": md5string, "utf8": utf8, "text": text, "pretty_unicode": pretty_unicode,
        "getitem": getitem, "ObjectDict": ObjectDict, "ReadOnlyDict": ReadOnlyDict,
    },
    "pyspider.libs.response": {"Response": Response},
    "pyspider.libs.url": {"quote_chinese": quote_chinese},
    "pyspider.libs.pprint": {"pprint": _pprint.pprint, "pformat": _pprint.pformat},
}


def _missing(module: str) -> Any:
    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"spiderflow's {module} has no {name!r} (it provides "
                             f"{', '.join(sorted(_CONTENTS[module])) or 'only submodules'})")
    return __getattr__


def _build() -> dict[str, types.ModuleType]:
    made = {}
    for name, contents in _CONTENTS.items():
        module = types.ModuleType(name, f"spiderflow's stand-in for {name} in project scripts.")
        module.__file__ = __file__
        module.__dict__.update(contents)
        module.__getattr__ = _missing(name)
        if contents:
            module.__all__ = sorted(contents)
        made[name] = module
    for name, module in made.items():
        parent, _, leaf = name.rpartition(".")
        if parent:
            setattr(made[parent], leaf, module)
        else:
            module.__path__ = []
    return made


_MODULES.update(_build())


def modules() -> dict[str, types.ModuleType]:
    """The ``pyspider`` modules a script can import, by name."""
    return _MODULES


def _is_pyspider(name: str) -> bool:
    return name == "pyspider" or name.startswith("pyspider.")


def _script_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    """``__import__`` for project scripts: ``pyspider...`` from :func:`modules`, the rest as usual."""
    if level == 0 and _is_pyspider(name):
        found = _MODULES
        module = found.get(name)
        if module is None:
            raise ModuleNotFoundError(
                f"No module named {name!r}: spiderflow gives project scripts only "
                f"{', '.join(n for n in found if n.count('.') == 2)}", name=name)
        return module if fromlist else found["pyspider"]
    return builtins.__import__(name, globals, locals, fromlist, level)


def script_builtins() -> dict[str, Any]:
    """The builtins of a project script: Python's, with the pyspider-aware ``__import__``.

    One dict shared by every script, taken when first asked for (after the CLI and test
    runners have set up builtins).
    """
    global _BUILTINS
    if _BUILTINS is None:
        _BUILTINS = {**builtins.__dict__, "__import__": _script_import}
    return _BUILTINS


__all__ = ["ObjectDict", "ReadOnlyDict", "getitem", "md5string", "modules", "pretty_unicode", "quote_chinese",
           "script_builtins", "text", "utf8"]
