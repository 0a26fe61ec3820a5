"""Every default in one frozen dataclass, and how a run's settings are resolved.

Precedence, highest first: command-line flag > ``SPIDERFLOW_<NAME>`` environment variable >
``-c`` config file (JSON, or TOML when the name ends in ``.toml``) > the defaults below.
:func:`load_settings` resolves them once; nothing below the CLI reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .exceptions import ConfigError

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

ENV_PREFIX = "SPIDERFLOW_"


#: Links per page the default bound of ``newtask_queue`` allows for (see Settings.queue_bounds).
NEWTASK_LINKS = 20


@dataclass(frozen=True, slots=True)
class Settings:
    """Every tunable of spiderflow with its default. Field names are the config-file keys."""

    # -- where things live -------------------------------------------------
    data_dir: str = "./data"
    taskdb: str | None = None          # None: sqlite:///<data_dir>/task.db
    projectdb: str | None = None       # None: sqlite:///<data_dir>/project.db
    resultdb: str | None = None        # None: sqlite:///<data_dir>/result.db
    queue: str | None = None           # None: memory:// in one process, multiprocessing for `all`
    queue_prefix: str = "spiderflow"   # redis keys / RabbitMQ queue names start with it; a URL's ?prefix= wins
    queue_maxsize: int = 100
    newtask_queue_maxsize: int | None = None   # None: NEWTASK_LINKS × queue_maxsize (see queue_bounds)
    log_level: str = "INFO"

    # -- scheduler -----------------------------------------------------------
    scheduler_host: str = "127.0.0.1"
    scheduler_port: int = 23333
    scheduler_token: str | None = None
    loop_interval: float = 0.1                 # seconds between run_once() calls when idle
    busy_loop_interval: float = 0.005          # ... when idle while tasks are in flight or messages queued
    loop_limit: int = 1000                     # max tasks selected per run_once
    inqueue_limit: int = 0                     # max ACTIVE tasks in queue per project (0: no limit)
    pool_cap: int = 0                          # max tasks in flight in the cluster (0: no limit); one stored
                                               # with `spiderflow queue cap` overrides it
    task_window: int = 10000                   # ACTIVE tasks held in memory per project
    task_load_page: int = 1000                 # tasks loaded from taskdb per page
    lease_time: float = 600.0                  # seconds before an unanswered task is re-sent
    default_rate: float = 1.0                  # tasks/s for a new project
    default_burst: float = 3.0
    retries: int = 3
    retry_delay: tuple[tuple[int, float], ...] = (
        (0, 30.0), (1, 3600.0), (2, 6 * 3600.0), (3, 12 * 3600.0), (-1, 24 * 3600.0),
    )                                          # (retried, delay); -1 is "any later retry"
    fail_pause_num: int = 10                   # consecutive failures that pause a project
    pause_time: float = 300.0
    unpause_check_num: int = 3                 # trial tasks after a pause
    delete_time: float = 24 * 3600.0           # STOP + group "delete" → dropped after this
    active_tasks: int = 100                    # recent tasks kept per project for the web UI
    counter_dump_interval: float = 60.0
    project_check_interval: float = 5.0        # seconds between projectdb polls (scheduler, processor)
    time_horizon: float = 300.0                # tasks due later than this stay in taskdb only
    finished_delay: float = 1.0                # a project stays drained this long before on_finished
    request_batch: int = 10000                 # new-task messages drained per loop
    status_batch: int = 10000                  # status packs drained per loop
    load_pages: int = 4                        # taskdb pages loaded per project per loop at most
    known_taskids: int = 100_000               # taskids per project remembered as stored: repeat links skip taskdb

    # -- fetcher -----------------------------------------------------------------
    poolsize: int = 100
    timeout: float = 120.0
    connect_timeout: float = 20.0
    user_agent: str = "spiderflow (+https://github.com/spiderflow/spiderflow)"
    proxy: str | None = None
    max_body_size: int = 10 * 1024 * 1024
    robots_txt_ttl: float = 3600.0
    max_redirects: int = 5
    block_private_addresses: bool = False      # refuse loopback, private, link-local, ... targets (each hop)

    # -- JavaScript rendering (fetch_type='js'; pip install 'spiderflow[js]') ------
    chromium_path: str | None = None           # the system's Chromium; None: chromium, chromium-browser or
                                               # google-chrome on PATH (never `playwright install`)
    js_poolsize: int = 2                       # pages rendering at once: one browser, a fresh context each
    js_viewport_width: int = 1024              # the default of a task's js_viewport_width (pyspider's)
    js_viewport_height: int = 768 * 3          # ... and of js_viewport_height
    js_idle_wait: float = 1.0                  # after load and js_script: up to this long for the network to go idle

    # -- processor -------------------------------------------------------------
    process_time_limit: float = 30.0           # the hard limit of a callback, seconds (0: none)
    process_soft_time_limit: float | None = None   # SoftTimeLimitExceeded (an Exception) is raised in the
                                               # callback at this many seconds; below process_time_limit
    log_tail: int = 100                        # log lines kept per task in track
    processor_pool: str | None = None          # solo (callbacks in the processor's process) or prefork
                                               # (child processes); None: prefork when an option below needs it
    processor_concurrency: int = 1             # prefork: callback child processes
    processor_autoscale: str | None = None     # prefork: "MAX,MIN" children, grown on backlog, shrunk when idle
    processor_autoscale_keepalive: float = 10.0    # autoscale: seconds with idle children before a shrink
    max_tasks_per_child: int | None = None     # prefork: a child is replaced after this many tasks
    max_memory_per_child: int | None = None    # prefork: ... once its resident memory passes this many KiB

    # -- result worker -----------------------------------------------------------
    result_batch: int = 100
    result_linger: float = 0.05                # seconds a result worker waits for its batch to fill
    result_sink: str | None = None             # resultdb (default), jsonl, an entry point name, or module:Class

    # -- nodes -------------------------------------------------------------------
    heartbeat_interval: float = 30.0           # seconds between node heartbeats; 0: processes don't register
    node_timeout: float = 300.0                # a node whose last heartbeat is older is offline
    node_id: str | None = None                 # a stable id in the registry (--node-id); None: a new one per start.
                                               # For `all`/`standalone` the device's id; its components get ID/kind#N
    node_name: str | None = None               # the name shown [the id; a device: the host name]
    device_id: str | None = None               # the device a component belongs to (set by all/standalone)
    node_history_keep: float = 24 * 3600.0     # seconds of heartbeat history kept
    monitoring: bool = False                   # log each heartbeat's health and the nodes that go offline

    # -- remote control (spiderflow control / inspect) ----------------------------
    revoke_expires: float = 3 * 3600.0         # seconds a `control revoke` stays in force (Celery's 3 h)

    # -- web UI ------------------------------------------------------------------
    webui_host: str = "127.0.0.1"
    webui_port: int = 5000
    username: str | None = None
    password: str | None = None
    token: str | None = None
    cookie_secret: str | None = None           # signs web UI sessions; None: random per process
    cookie_secure: bool = False                # session cookie only over HTTPS (behind a TLS proxy); on with TLS
    session_max_age: float = 12 * 3600.0       # seconds a web UI login lasts
    webui_certfile: str | None = None          # PEM certificate (chain): the web UI serves HTTPS
    webui_keyfile: str | None = None           # its PEM private key (None: in webui_certfile)
    login_max_failures: int = 5                # failed logins from one address before it must wait
    login_global_failures: int = 100           # ... from all addresses, before new addresses must wait
    login_lockout: float = 60.0                # the first wait, seconds; doubled by each further failure
    login_lockout_max: float = 900.0           # the longest wait
    login_window: float = 900.0                # failures are forgotten this long after the last (or its wait)
    debug_time_limit: float = 60.0             # seconds a debugger Run may take; then its worker is killed
    debug_memory_limit: int = 1024 * 1024 * 1024   # bytes of address space of a Run's worker; 0: no limit

    # -- jobs (one run of a project) and the scrapyd-compatible API -------------------
    max_proc: int = 0                          # jobs running at once in the cluster; 0: max_proc_per_cpu × CPUs
    max_proc_per_cpu: int = 4
    finished_to_keep: int = 100                # finished jobs kept (cluster-wide); older rows are deleted
    jobs_to_keep: int = 5                      # finished jobs per (project, spider) whose log and items are served
    projects_dir: str | None = None            # a git checkout of project scripts, for pullcode.json

    # -- process counts for `all` ------------------------------------------------
    fetcher_num: int = 1
    processor_num: int = 1
    result_worker_num: int = 1

    def __post_init__(self) -> None:
        for name in _CHECKED:
            why = _check_value(name, getattr(self, name))
            if why:
                raise ConfigError(f"setting {name!r} {why}, not {getattr(self, name)!r}")
        _check_processor_pool(self)

    # -- derived -------------------------------------------------------------------
    def processor_pool_kind(self) -> str:
        """``solo`` or ``prefork``: the one set, else prefork when a prefork-only setting asks for it."""
        if self.processor_pool is not None:
            return self.processor_pool
        return "prefork" if _prefork_options(self) else "solo"

    def processor_autoscale_range(self) -> tuple[int, int] | None:
        """``(max, min)`` of ``processor_autoscale``, or None."""
        if self.processor_autoscale is None:
            return None
        return _autoscale_pair(self.processor_autoscale)

    def db_url(self, role: str) -> str:
        """The database URL of *role* (``taskdb``, ``projectdb`` or ``resultdb``)."""
        url = getattr(self, role)
        if url:
            return url
        name = {"taskdb": "task", "projectdb": "project", "resultdb": "result"}[role]
        return f"sqlite:///{os.path.join(self.data_dir, name + '.db')}"

    def queue_bounds(self) -> dict[str, int]:
        """The bound of each pipeline queue, in messages.

        Every queue holds ``queue_maxsize`` messages except ``newtask_queue``: it carries one
        message per link, and a page sends all its links at once, so unless
        ``newtask_queue_maxsize`` is set it holds ``NEWTASK_LINKS × queue_maxsize`` — the links
        of about ``queue_maxsize`` pages, as pyspider's newtask_queue held ``queue_maxsize``
        lists of a page's follows. Bounded at 100 links, the processor stalled every few pages
        waiting for the scheduler to drain it.
        """
        from .queues import QUEUE_NAMES

        bounds = dict.fromkeys(QUEUE_NAMES, self.queue_maxsize)
        newtask = self.newtask_queue_maxsize
        bounds["newtask_queue"] = NEWTASK_LINKS * self.queue_maxsize if newtask is None else newtask
        return bounds

    def retry_delay_for(self, retried: int) -> float:
        """The delay before retry number *retried* (0 for the first retry)."""
        table = dict(self.retry_delay)
        return table.get(retried, table.get(-1, 0.0))

    def replace(self, **changes: Any) -> Settings:
        return load_settings(overrides=changes, base=self)


def _autoscale_pair(text: str) -> tuple[int, int]:
    """``"MAX,MIN"`` (Celery's --autoscale) as two ints; ValueError with the reason."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError("must be MAX,MIN: two whole numbers, e.g. 10,3")
    high, low = int(parts[0]), int(parts[1])
    if low < 1:
        raise ValueError("must be MAX,MIN with MIN >= 1")
    if high < low:
        raise ValueError(f"must be MAX,MIN with MAX >= MIN ({high} < {low})")
    return high, low


def _check_value(name: str, value: Any) -> str | None:
    """Why *value* is not a valid value of setting *name* (the processor pool's), or None."""
    if value is None:
        return None
    if name in ("processor_concurrency", "max_tasks_per_child", "max_memory_per_child"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return "must be a whole number >= 1" + ("" if name == "processor_concurrency" else
                                                   " (leave it unset for no limit)")
    elif name in ("process_soft_time_limit", "processor_autoscale_keepalive"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            return "must be a finite number of seconds above 0"
    elif name == "processor_pool":
        if value not in POOLS:
            return f"must be one of {', '.join(POOLS)}"
    elif name == "processor_autoscale":
        try:
            _autoscale_pair(value)
        except ValueError as exc:
            return str(exc)
    return None


#: the processor pools: callbacks in the processor's own process, or in forked children
POOLS = ("solo", "prefork")
_CHECKED = ("processor_pool", "processor_concurrency", "processor_autoscale", "processor_autoscale_keepalive",
            "max_tasks_per_child", "max_memory_per_child", "process_soft_time_limit")
_FLAGS = {"processor_concurrency": "--concurrency", "processor_autoscale": "--autoscale",
          "max_tasks_per_child": "--max-tasks-per-child", "max_memory_per_child": "--max-memory-per-child",
          "processor_pool": "--pool", "process_soft_time_limit": "--soft-time-limit"}


def _prefork_options(settings: Settings) -> list[str]:
    """The settings given that only a prefork pool has (as their flags)."""
    out = []
    if settings.processor_concurrency > 1:
        out.append(f"--concurrency {settings.processor_concurrency}")
    for name in ("processor_autoscale", "max_tasks_per_child", "max_memory_per_child"):
        if getattr(settings, name) is not None:
            out.append(f"{_FLAGS[name]} {getattr(settings, name)}")
    return out


def _check_processor_pool(settings: Settings) -> None:
    """The settings of the processor pool together: solo with prefork options, soft >= hard."""
    if settings.processor_pool == "solo":
        wanted = _prefork_options(settings)
        if wanted:
            raise ConfigError(f"the solo processor pool runs one callback at a time in the processor's own "
                              f"process; {', '.join(wanted)} need(s) the prefork pool: give --pool prefork "
                              "(processor_pool=prefork) or leave --pool out")
    soft, hard = settings.process_soft_time_limit, settings.process_time_limit
    if soft is not None and hard and hard > 0 and soft >= hard:
        raise ConfigError(f"the soft time limit ({soft:g} s, --soft-time-limit / process_soft_time_limit) must be "
                          f"below the hard one ({hard:g} s, --process-time-limit / process_time_limit)")


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Settings)}
_HINTS = typing.get_type_hints(Settings)


def _coerce(name: str, value: Any, source: str) -> Any:
    """Convert *value* to the type of setting *name*; strings from env/CLI are parsed."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    origin = typing.get_origin(base) or base

    def bad(why: str = "") -> ConfigError:
        want = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                tuple: "a list of [retried, delay] pairs"}.get(origin, str(base))
        return ConfigError(f"{source}: setting {name!r} must be {want}, not {value!r}{why}")

    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        if optional:
            return None
        raise bad()
    if origin is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.strip().lower() in ("1", "true", "yes", "on")
        raise bad()
    if origin in (int, float):
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)) and (origin is float or float(value).is_integer()):
            number = origin(value)
        elif isinstance(value, str):
            try:
                number = origin(value.strip())
            except ValueError:
                raise bad() from None
        else:
            raise bad()
        if not math.isfinite(number):   # inf and nan parse as floats, and no setting can be either
            raise bad(" (a finite number)")
        if name in _CHECKED and (why := _check_value(name, number)):
            raise ConfigError(f"{source}: setting {name!r} {why}, not {value!r}")
        return number
    if origin is str:
        if isinstance(value, str):
            if name in _CHECKED and (why := _check_value(name, value.strip().lower())):
                raise ConfigError(f"{source}: setting {name!r} {why}, not {value!r}")
            return value.strip().lower() if name in _CHECKED else value
        raise bad()
    if origin is tuple:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise bad(" (give JSON, e.g. [[0, 30], [1, 3600], [-1, 86400]])") from None
        if isinstance(value, Mapping):
            value = list(value.items())
        try:
            pairs = tuple((int(k), float(v)) for k, v in value)
        except (TypeError, ValueError, OverflowError):
            raise bad() from None
        if not all(math.isfinite(delay) and delay >= 0 for _, delay in pairs):
            raise bad(" (delays are finite numbers >= 0)")
        return pairs
    return value  # pragma: no cover - every field type is handled above


def is_loopback(host: str) -> bool:
    """Whether *host* is a loopback address: servers bound elsewhere must require credentials."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_config_file(path: str) -> dict[str, Any]:
    """Read a JSON (or .toml) config file; errors name the file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror or exc}") from exc
    try:
        if path.endswith(".toml"):
            if tomllib is None:
                raise ConfigError(f"config file {path!r}: TOML needs Python 3.11+; use JSON")
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "TOML" if path.endswith(".toml") else "JSON"
        raise ConfigError(f"config file {path!r} is not valid {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold an object of settings, not {type(data).__name__}")
    return data


def load_settings(
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Settings | None = None,
) -> Settings:
    """Resolve settings: *overrides* (flags) > *env* (``SPIDERFLOW_*``) > *config_file* > *base*.

    ``None`` values in *overrides* mean "flag not given" and are skipped. Unknown keys in
    the config file or overrides raise ConfigError naming the key (and the file).
    """
    values: dict[str, Any] = {}
    if config_file:
        for key, value in read_config_file(config_file).items():
            name = key.replace("-", "_")
            if name not in FIELDS:
                raise ConfigError(
                    f"config file {config_file!r}: unknown setting {key!r}; "
                    f"known settings: {', '.join(sorted(FIELDS))}"
                )
            values[name] = _coerce(name, value, f"config file {config_file!r}")
    for key, value in (env or {}).items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name in FIELDS:
            values[name] = _coerce(name, value, f"environment variable {key}")
        # other SPIDERFLOW_* variables (e.g. SPIDERFLOW_REQUIRE_SERVICES) are not settings
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"unknown setting {key!r}; known settings: {', '.join(sorted(FIELDS))}")
        values[name] = _coerce(name, value, f"option {_FLAGS.get(name, '--' + name.replace('_', '-'))}")
    return dataclasses.replace(base, **values) if base else Settings(**values)


def settings_from_environ(config_file: str | None = None, **overrides: Any) -> Settings:
    """For the CLI and bench only: resolve with the process environment."""
    return load_settings(config_file=config_file, env=os.environ, overrides=overrides)
