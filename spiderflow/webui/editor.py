"""The script editor's vendored library: which static files a page loads, read from ``VENDORED.json``.

CodeMirror 5 is copied from the npm registry into ``static/vendor/codemirror-<version>/`` by
``.ci/vendor-editor``, which writes ``VENDORED.json`` (version, integrity and the files in load
order) next to it. Pages load the files from the web UI's own origin, never a CDN; a page whose
vendored scripts fail to load keeps the plain textarea (``static/editor.js``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

STATIC = Path(__file__).resolve().parent / "static"
VENDOR = STATIC / "vendor"


@functools.cache
def vendored_editor() -> dict[str, Any]:
    """The VENDORED.json record of the one vendored CodeMirror, with ``styles`` and ``scripts``
    as static paths in load order (empty if none is vendored)."""
    records = sorted(VENDOR.glob("codemirror-*/VENDORED.json"))
    if len(records) != 1:
        return {"version": None, "styles": [], "scripts": []}
    record = json.loads(records[0].read_text(encoding="utf-8"))
    base = records[0].parent.relative_to(STATIC).as_posix()
    files = [f"{base}/{name}" for name in record["files"]]
    return {**record, "styles": [f for f in files if f.endswith(".css")],
            "scripts": [f for f in files if f.endswith(".js")]}
