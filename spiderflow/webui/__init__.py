"""The web UI: dashboard, script editor and debugger, tasks, results, and a JSON API.

``app`` builds the tornado Application from injected components and serves it;
``base`` and ``auth`` hold the handlers' base classes, sessions, credentials and login
pages, ``guard`` the rules against cross-site requests, ``helpers`` the small shared
functions; ``dashboard``, ``debugger``, ``tasks`` and ``results`` are the pages
(``results`` also streams downloads); ``api`` is the rest of the JSON API under
``/api/``; ``debug`` runs one task for the debugger without touching the live crawl, in
a separate process with a time and a memory limit that ``debug_worker`` starts and kills;
``overview`` gathers what the dashboard shows; ``scheduler_link`` calls the scheduler's
control interface.
"""

from __future__ import annotations

from .app import (
    WebUIServer,
    WebUIState,
    build_webui,
    control_client,
    make_app,
    start_webui,
    webui_url,
)
from .auth import check_webui_settings

__all__ = [
    "WebUIServer",
    "WebUIState",
    "build_webui",
    "check_webui_settings",
    "control_client",
    "make_app",
    "start_webui",
    "webui_url",
]
