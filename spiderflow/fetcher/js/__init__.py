"""JavaScript rendering for ``fetch_type='js'``: Playwright driving the system's Chromium.

``pip install 'spiderflow[js]'`` adds Playwright; the browser is the system's (Debian:
``apt-get install chromium``; elsewhere set ``chromium_path``), never one that
``playwright install`` downloads. :mod:`.job` resolves a task into a render,
:mod:`.pool` keeps the browser on a thread of its own with ``js_poolsize`` pages at once,
:mod:`.page` renders one page in a fresh context. Nothing imports Playwright until the
first render.
"""

from __future__ import annotations

from .job import JS_FETCH_TYPES, RenderJob, build_job, find_chromium, js_unavailable
from .pool import JsRenderer

__all__ = ["JS_FETCH_TYPES", "JsRenderer", "RenderJob", "build_job", "find_chromium", "js_unavailable"]
