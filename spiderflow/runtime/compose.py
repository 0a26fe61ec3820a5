"""The composition root: the only place that turns settings and URLs into components.

``build_*`` make one component from settings, queues and databases; :func:`open_queues`
the pipeline's queues; :func:`start_node` registers a process as a node and starts its
heartbeats. Nothing here runs anything: :mod:`.component` runs one component,
:mod:`.supervisor` runs ``spiderflow all``, :mod:`.inprocess` runs ``one`` and ``crawl()``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from ..exceptions import ConfigError
from ..queues import BaseQueue, SchedulerLock, acquire_scheduler_lock, connect_queues
from ..settings import Settings
from ..storage import Databases, connect_nodedb, open_databases

__all__ = ["COMPONENTS", "LOCAL_QUEUES", "Databases", "open_databases", "open_queues", "queue_scheme",
           "build_scheduler", "build_fetcher", "build_processor", "build_result_worker", "build_component",
           "start_node", "start_device", "component_settings", "node_lister", "control_client", "check_port_free",
           "scheduler_lock"]

logger = logging.getLogger(__name__)

COMPONENTS = ("scheduler", "fetcher", "processor", "result-worker")
#: queue backends that cannot be shared by processes started separately
LOCAL_QUEUES = ("memory", "multiprocessing")


def open_queues(settings: Settings, default: str = "memory://") -> dict[str, BaseQueue]:
    """The five pipeline queues on ``settings.queue`` (or *default*), bounded by ``settings.queue_bounds()``
    and named with ``settings.queue_prefix``."""
    return connect_queues(settings.queue or default, settings.queue_bounds(), prefix=settings.queue_prefix)


def scheduler_lock(settings: Settings, queues: dict[str, BaseQueue] | None = None,
                   default: str = "memory://") -> SchedulerLock:
    """The lock of the one scheduler of the cluster on ``settings.queue`` (or *default*):
    ConfigError, naming the running scheduler, if another holds it; ``release()`` it on exit.

    The prefix is the one *queues* were opened with, so that the lock always guards the
    queues this scheduler uses (else ``settings.queue_prefix``).
    """
    prefix = getattr((queues or {}).get("newtask_queue"), "prefix", None) or settings.queue_prefix
    return acquire_scheduler_lock(settings.queue or default, prefix, settings.data_dir)


def queue_scheme(settings: Settings, default: str) -> str:
    return (settings.queue or default).split("://", 1)[0].lower()


# -- components ----------------------------------------------------------------------------

def build_scheduler(settings: Settings, queues: dict[str, BaseQueue], dbs: Databases):
    from ..jobs import connect_jobdb
    from ..jobs.runner import JobRunner
    from ..scheduler import Scheduler
    scheduler = Scheduler(projectdb=dbs.projectdb, taskdb=dbs.taskdb, resultdb=dbs.resultdb,
                          newtask_queue=queues["newtask_queue"], status_queue=queues["status_queue"],
                          out_queue=queues["scheduler2fetcher"], settings=settings)
    scheduler.jobs = JobRunner(scheduler, connect_jobdb(settings.db_url("projectdb")), scheduler._clock)
    return scheduler


def job_watch(settings: Settings):
    """What a fetcher or processor knows of jobs (cancelled ones, arguments), read in the background."""
    from ..jobs import connect_jobdb
    from ..jobs.watch import JobWatch
    return JobWatch(connect_jobdb(settings.db_url("projectdb"))).start()


def build_fetcher(settings: Settings, queues: dict[str, BaseQueue] | None = None):
    from ..fetcher import Fetcher
    queues = queues or {}
    fetcher = Fetcher(queues.get("scheduler2fetcher"), queues.get("fetcher2processor"), settings)
    if queues:      # a pipeline's fetcher (not the one-off fetches of `queue check`)
        fetcher.jobs = job_watch(settings)
    return fetcher


def build_processor(settings: Settings, queues: dict[str, BaseQueue] | None, dbs: Databases):
    from ..processor import Processor
    queues = queues or {}
    processor = Processor(inqueue=queues.get("fetcher2processor"), status_queue=queues.get("status_queue"),
                          newtask_queue=queues.get("newtask_queue"), result_queue=queues.get("processor2result"),
                          projectdb=dbs.projectdb, settings=settings)
    if queues:
        processor.jobs = job_watch(settings)
    return processor


def build_result_worker(settings: Settings, queues: dict[str, BaseQueue] | None, dbs: Databases | None,
                        sink: str | None = None, **kwargs: Any):
    from ..result import load_result_worker_class
    cls = load_result_worker_class(sink or settings.result_sink)
    queues = queues or {}
    worker = cls(queues.get("processor2result"), dbs.resultdb if dbs else None, settings, **kwargs)
    worker.status_queue = queues.get("status_queue")   # set here: a custom sink's __init__ need not know it
    return worker


def build_component(kind: str, settings: Settings, queues: dict[str, BaseQueue], dbs: Databases | None):
    """One component of *kind* (one of :data:`COMPONENTS`)."""
    if kind == "scheduler":
        return build_scheduler(settings, queues, dbs)
    if kind == "fetcher":
        return build_fetcher(settings, queues)
    if kind == "processor":
        return build_processor(settings, queues, dbs)
    if kind == "result-worker":
        return build_result_worker(settings, queues, dbs)
    raise ConfigError(f"unknown component {kind!r}; known: {', '.join(COMPONENTS)}")


# -- nodes: every component process registers and heartbeats (spiderflow.nodes) -------------------

def start_node(kind: str, settings: Settings, component: Any = None, *, name: str | None = None,
               port: int | None = None, capabilities: dict[str, Any] | None = None, aggregate: bool = False):
    """Register this process as a node of *kind* and start its heartbeat thread.

    The registry is in the projectdb database. The node's id and name are ``node_id`` and
    ``node_name`` (a new random id when unset: see :mod:`spiderflow.nodes`); a ``node_id``
    that belongs to another live node raises ConfigError. Returns the
    :class:`~spiderflow.nodes.Node` (``stop()`` it on a warm shutdown), or None when
    ``heartbeat_interval`` is 0.
    """
    if settings.heartbeat_interval <= 0:
        return None
    from ..nodes import COMPONENT_STATS, Node
    from ..nodes import capabilities as node_capabilities
    stats = COMPONENT_STATS.get(kind)
    url = settings.db_url("projectdb")
    if port is None:
        port = {"scheduler": settings.scheduler_port, "webui": settings.webui_port}.get(kind)
    return Node(lambda: connect_nodedb(url), kind, name=name or settings.node_name, node_id=settings.node_id,
                device=settings.device_id,
                stats=(lambda: stats(component)) if stats and component is not None else None,
                interval=settings.heartbeat_interval, timeout=settings.node_timeout, data_dir=settings.data_dir,
                port=port, capabilities=capabilities or node_capabilities([kind], settings.poolsize),
                aggregate=aggregate, history_keep=settings.node_history_keep,
                monitoring=settings.monitoring).start()


def start_device(settings: Settings, kinds: list[str]):
    """The node of this machine for ``all``/``standalone`` when ``node_id`` names one (else None):
    kind ``device``, named after the host unless ``node_name`` says otherwise, its stats the
    sums over its components; ConfigError if the id belongs to another live node."""
    if not settings.node_id:
        return None
    from ..nodes import capabilities, check_node_id
    check_node_id(settings.node_id, "the device id")
    device = settings.replace(device_id=settings.node_id, node_name=settings.node_name or socket.gethostname())
    return start_node("device", device, capabilities=capabilities(kinds, settings.poolsize), aggregate=True,
                      port=settings.webui_port if "webui" in kinds else None)


def component_settings(settings: Settings, kind: str, index: int) -> Settings:
    """The settings of component *kind* number *index* of ``all``: on a device (``node_id``),
    the node ``ID/kind#index`` of that device (the device's node alone does the monitoring);
    with only a ``node_name`` NAME, the node named ``NAME/kind#index`` (with an id of its own)."""
    if not settings.node_id:
        if settings.node_name:
            return settings.replace(node_name=f"{settings.node_name}/{kind}#{index}")
        return settings
    from ..nodes import component_identity
    node_id, name = component_identity(settings.node_id, settings.node_name, kind, index)
    return settings.replace(node_id=node_id, node_name=name, device_id=settings.node_id, monitoring=False)


def node_lister(settings: Settings) -> Callable[[bool], list[dict[str, Any]]]:
    """``nodes(include_offline)``: the registry's nodes, read on each call (the control interface)."""
    def nodes(include_offline: bool = False) -> list[dict[str, Any]]:
        db = connect_nodedb(settings.db_url("projectdb"))
        try:
            return db.list(include_offline, timeout=settings.node_timeout)
        finally:
            db.close()
    return nodes


def control_client(settings: Settings, timeout: float = 10.0):
    """A client of the scheduler's control interface (:meth:`ControlClient.for_settings`)."""
    from ..scheduler.control import ControlClient
    return ControlClient.for_settings(settings, timeout)


# -- one component in this process -------------------------------------------------------------

#: Objects allocated (net) between young-generation collections in a running component;
#: Python's default is 700, which at several hundred pages a second means a collection


def check_port_free(host: str, port: int, what: str, option: str) -> None:
    """Fail before anything starts when *port* is taken (0 means "any free port")."""
    if not port:
        return
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise ConfigError(f"the {what} cannot listen on {host}:{port} ({exc.strerror or exc}); "
                          f"choose another port with {option}") from None
