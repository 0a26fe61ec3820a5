"""The web UI's tornado Application and the server that runs it.

:func:`make_app` builds the Application from injected components (databases, the
scheduler's ControlClient or None, optionally the pipeline queues, whose sizes the
dashboard then shows). :class:`WebUIServer` binds a socket at once (so errors surface
before anything starts) and serves the app on an asyncio loop of its own, either blocking
in :meth:`WebUIServer.run` or in a thread with :meth:`WebUIServer.start`;
:meth:`WebUIServer.stop` is thread- and signal-safe. :func:`build_webui` makes one from
settings (what ``spiderflow webui`` and ``spiderflow all`` use).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from ..scheduler.control import ControlClient
from ..settings import Settings
from ..storage import open_databases
from . import api, auth, dashboard, debugger, metrics, results, tasks
from .auth import Auth, check_webui_settings, server_tls
from .base import ApiNotFoundHandler, NotFoundHandler
from .debug_worker import Debugger
from .scheduler_link import SchedulerLink

logger = logging.getLogger(__name__)

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_BODY = 16 * 1024 * 1024
STOP_TIMEOUT = 5.0
WORKERS = 8


@dataclass
class WebUIState:
    """The components every handler reaches through ``self.state``."""

    settings: Settings
    projectdb: Any
    taskdb: Any
    resultdb: Any
    scheduler: SchedulerLink
    auth: Auth
    executor: ThreadPoolExecutor
    debugger: Debugger
    queues: dict[str, Any] | None = None
    owned: list[Any] = field(default_factory=list)   # closed with the state

    async def aclose(self) -> None:
        """close() on the event loop the web UI ran on, waiting for the debug workers to end."""
        await self.debugger.aclose()
        self.close()

    def close(self) -> None:
        self.debugger.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        for thing in self.owned:
            try:
                thing.close()
            except Exception:
                logger.debug("closing %r failed", thing, exc_info=True)


def routes() -> list[tuple[str, type]]:
    from ..jobs import scrapyd  # they build on this package's handlers
    from ..jobs import views as jobs_views
    from . import control  # remote control of the cluster's nodes

    return [
        (r"/", dashboard.DashboardPage),
        (r"/debug/([^/]+)", debugger.DebuggerPage),
        (r"/tasks", tasks.TasksPage),
        (r"/task/([^/]+)/(.+)", tasks.TaskPage),
        (r"/results/([^/]+)", results.ResultsPage),
        (r"/nodes", dashboard.NodesPage),
        (r"/metrics", metrics.MetricsHandler),
        (r"/login", auth.LoginHandler),
        (r"/logout", auth.LogoutHandler),
        (r"/api/xsrf", api.XsrfHandler),
        (r"/api/projects", api.ProjectsHandler),
        (r"/api/projects/([^/]+)", api.ProjectHandler),
        (r"/api/projects/([^/]+)/run", api.RunHandler),
        (r"/api/debug/([^/]+)", api.DebugHandler),
        (r"/api/tasks", api.TasksHandler),
        (r"/api/tasks/([^/]+)/(.+)", api.TaskHandler),
        (r"/api/active_tasks", api.ActiveTasksHandler),
        (r"/api/results/([^/.]+)\.(json|jsonl|csv)", results.DownloadHandler),
        (r"/api/results/([^/]+)", results.ResultsApi),
        (r"/api/counters", api.CountersHandler),
        (r"/api/queues", api.QueuesHandler),
        (r"/api/nodes", api.NodesHandler),
        (r"/api/nodes/([^/]+)/history", metrics.NodeHistoryHandler),
        *jobs_views.routes(),                # /jobs and /api/jobs
        *scrapyd.routes(),                   # scrapyd's paths: schedule.json, listjobs.json, /logs/..., ...
        *control.routes(),                   # /api/control/<command>: spiderflow control / inspect
        (r"/api/.*", ApiNotFoundHandler),
    ]


def make_app(settings: Settings, *, projectdb: Any, taskdb: Any, resultdb: Any,
             control: ControlClient | None = None, queues: dict[str, Any] | None = None,
             cookie_secret: str | None = None, owned: list[Any] | None = None) -> tornado.web.Application:
    """The web UI as a tornado Application; ``app.settings["spiderflow"].close()`` releases it.

    *control* is the scheduler's control interface (None: the UI runs on the databases
    alone); *queues* the pipeline queues, when this process can see them; *cookie_secret*
    signs the session cookie (random per process unless given); *owned* things are closed
    with the app.
    """
    executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="spiderflow-webui")
    state = WebUIState(
        settings=settings, projectdb=projectdb, taskdb=taskdb, resultdb=resultdb,
        scheduler=SchedulerLink(control, executor), auth=Auth.from_settings(settings), executor=executor,
        debugger=Debugger(settings), queues=queues, owned=list(owned or []),
    )
    return tornado.web.Application(
        routes(),
        default_handler_class=NotFoundHandler,
        template_path=os.path.join(HERE, "templates"),
        static_path=os.path.join(HERE, "static"),
        cookie_secret=cookie_secret or secrets.token_hex(32),
        xsrf_cookies=True,          # BaseHandler.check_xsrf_cookie: the origin rule and the session's token
        login_url="/login",
        autoescape="xhtml_escape",
        spiderflow=state,
    )


def control_client(settings: Settings, timeout: float = 5.0) -> ControlClient:
    """A client of the scheduler's control interface named by *settings* (its token file too)."""
    return ControlClient.for_settings(settings, timeout)


def webui_url(host: str, port: int, scheme: str = "http") -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"{scheme}://[{host}]:{port}/" if ":" in host else f"{scheme}://{host}:{port}/"


class WebUIServer:
    """The app on a socket bound at construction; :meth:`run` blocks, :meth:`start` uses a thread.

    With *ssl_options* (an SSLContext, see :func:`~.auth.server_tls`) it serves HTTPS."""

    def __init__(self, app: tornado.web.Application, host: str = "127.0.0.1", port: int = 0,
                 ssl_options: Any = None):
        self.app = app
        self.host = host
        self.ssl_options = ssl_options
        self._sockets = tornado.netutil.bind_sockets(port, host)
        self.port: int = self._sockets[0].getsockname()[1]
        self.url = webui_url(host, self.port, "https" if ssl_options else "http")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stop_requested = False
        self._started = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> WebUIState:
        return self.app.settings["spiderflow"]

    def run(self) -> None:
        """Serve until :meth:`stop`."""
        asyncio.run(self._serve())

    def start(self) -> WebUIServer:
        """Serve in a daemon thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.run, name=f"spiderflow-webui-{self.port}", daemon=True)
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the web UI did not start within 30 s")
        return self

    def stop(self) -> None:
        """Stop serving (thread- and signal-safe); run() returns once connections are closed."""
        self._stop_requested = True
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def close(self) -> None:
        """stop() and wait for the thread started by start()."""
        self.stop()
        self.join(STOP_TIMEOUT * 2)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = tornado.httpserver.HTTPServer(self.app, max_body_size=MAX_BODY, ssl_options=self.ssl_options)
        server.add_sockets(self._sockets)
        logger.info("web UI on %s", self.url)
        self._started.set()
        try:
            if not self._stop_requested:
                await self._stop_event.wait()
        finally:
            server.stop()
            try:
                await asyncio.wait_for(server.close_all_connections(), STOP_TIMEOUT)
            except asyncio.TimeoutError:  # noqa: UP041 (not the builtin before Python 3.11)
                logger.warning("web UI: connections still open after %.0f s", STOP_TIMEOUT)
            await self.state.aclose()
            logger.info("web UI stopped")


_FROM_SETTINGS: Any = object()


def build_webui(settings: Settings, *, control: ControlClient | None = _FROM_SETTINGS,
                queues: dict[str, Any] | None = None, databases: Any = None,
                cookie_secret: str | None = None) -> WebUIServer:
    """A WebUIServer on ``webui_host:webui_port`` of *settings*, bound but not yet serving.

    *databases* (an object with projectdb, taskdb, resultdb) defaults to the settings' URLs,
    opened here and closed with the server; *control* to the scheduler named by
    ``scheduler_host``/``scheduler_port``/``scheduler_token``. Raises ConfigError when the
    address would need credentials or the TLS files are unusable, OSError when it cannot bind.
    """
    check_webui_settings(settings)
    tls = server_tls(settings)
    owned = []
    if databases is None:
        databases = open_databases(settings)
        owned.append(databases)
    if control is _FROM_SETTINGS:
        control = control_client(settings)
    app = make_app(settings, projectdb=databases.projectdb, taskdb=databases.taskdb, resultdb=databases.resultdb,
                   control=control, queues=queues, cookie_secret=cookie_secret or settings.cookie_secret,
                   owned=owned)
    try:
        return WebUIServer(app, settings.webui_host, settings.webui_port, ssl_options=tls)
    except BaseException:
        app.settings["spiderflow"].close()
        raise


def start_webui(settings: Settings, **kwargs: Any) -> WebUIServer:
    """:func:`build_webui` and serve it in a daemon thread; ``.url`` is its address, ``.close()`` stops it."""
    return build_webui(settings, **kwargs).start()
