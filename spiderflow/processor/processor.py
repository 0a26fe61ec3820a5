"""The processor stage: run each fetched page through its project's callback.

:meth:`Processor.process` turns one ``(Task, FetchResult)`` into a :class:`ProcessOutcome`
(status pack, new tasks, result packs, logs, exception) without touching any queue; the
debugger and OneScheduler call it directly. :meth:`Processor.run` is the worker loop: it
takes pairs from fetcher2processor and puts one message per task: ``(StatusPack, Task, ...)``
(the status with the page's follow-up requests) on status_queue, or, when the page has
results, ``(StatusPack, ResultPack, ..., Task, ...)`` on processor2result, which the result
worker stores and then passes on to status_queue without its results. So the scheduler sees
a task done only together with its follows and once its results are stored; a page's output
is never split across queues where a crash could keep one part and lose the other. The
delivery is acknowledged once that message is queued; a database outage while loading a
project hands the task back and waits (the task does not fail for it).

With ``processor_pool`` prefork (``--pool prefork``, ``--concurrency N``, ...) the callbacks
run in child processes instead and :meth:`Processor.run` is the loop of
:class:`~.pool.PreforkPool`; the messages are the same.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..exceptions import QueueClosed, QueueError, SerializationError, StorageUnavailable
from ..message import SPECIAL_TASKS, FetchResult, ResultPack, StatusPack, Task, Track, md5_taskid, pack
from ..queues.base import Delivery
from ..settings import Settings
from ..storage import Outage
from .project import Project, ProjectManager, TaskRun
from .response import Response

logger = logging.getLogger(__name__)

#: Characters of the first result kept in track.process.result.
RESULT_SUMMARY = 100
#: Suffix of the task id of the second, third, ... result of one task: ``<taskid>#1``, ``#2``...
RESULT_SEPARATOR = "#"
#: Deliveries a solo processor takes at once, of those already waiting (see :meth:`Processor.run`).
RECEIVE_BATCH = 16

_STRICT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass(slots=True)
class ProcessOutcome:
    """Everything processing one task produced, ready to be put on the queues."""

    status_pack: StatusPack
    new_tasks: list[Task]
    results: list[ResultPack]
    logs: list[str]
    exception: str | None

    @property
    def ok(self) -> bool:
        return self.exception is None


class Processor:
    """Runs callbacks: fetcher2processor in; status_queue or processor2result out (newtask_queue
    only for follows when there is no status queue)."""

    def __init__(self, inqueue: Any = None, status_queue: Any = None, newtask_queue: Any = None,
                 result_queue: Any = None, projectdb: Any = None, settings: Settings | None = None,
                 clock: Callable[[], float] = time.time, *, projects: ProjectManager | None = None,
                 capture_stdout: bool = True, check_interval: float | None = None,
                 poll_interval: float = 1.0):
        self.inqueue = inqueue
        self.status_queue = status_queue
        self.newtask_queue = newtask_queue
        self.result_queue = result_queue
        self.settings = settings or Settings()
        self.clock = clock
        if check_interval is None:
            check_interval = self.settings.project_check_interval
        self.projects = projects or ProjectManager(projectdb, check_interval=check_interval, clock=clock,
                                                   time_limit=self.settings.process_time_limit)
        self.capture_stdout = capture_stdout
        self.poll_interval = poll_interval
        self.processed = 0
        self.failed = 0
        self.jobs: Any = None    # a spiderflow.jobs.JobWatch when jobs are on (the composition root sets it)
        self.control: Any = None     # the remote-control panel (spiderflow.control.panels), when there is a bus
        self.receive_batch = RECEIVE_BATCH
        self._outbox: list[tuple[Any, Any]] | None = None   # run(): the batch's encoded messages
        self._held: collections.deque[Delivery] = collections.deque()   # run(): deliveries not started yet
        self._stop = threading.Event()
        self.pool: Any = None        # the prefork pool (spiderflow.processor.pool), unless the pool is solo
        self.projects_seen: dict[str, tuple] = {}   # prefork: {project: (md5, updatetime, error)} of the children
        if self.settings.processor_pool_kind() == "prefork":
            from .pool import PreforkPool
            self.pool = PreforkPool(self)

    # -- one task, no queues ---------------------------------------------------------------------
    def process(self, task: Task | dict, fetch_result: FetchResult | dict, project: Project | None = None) -> ProcessOutcome:
        """Run *task*'s callback on *fetch_result* and build the messages; never raises for user errors."""
        task = Task.from_dict(task)
        fetch_result = FetchResult.from_dict(fetch_result)
        started = time.perf_counter()
        now = self.clock()
        response = Response.from_fetch_result(fetch_result, task)
        run = self._run(task, response, project, now)
        results, summary, result_error = self._result_packs(task, run.results, now)
        exception = run.exception
        if result_error:
            exception = f"{exception}\n\n{result_error}" if exception else result_error
            run.logs.append(f"[E {task.project}:{task.taskid}] {result_error}")
        new_tasks = run.follows + run.messages if run.messages else run.follows
        track = Track(
            fetch=self._fetch_track(task, fetch_result, response),
            process=self._process_track(run, exception, len(new_tasks), len(results), summary,
                                        time.perf_counter() - started),
        )
        status = StatusPack(taskid=task.taskid, project=task.project, url=task.url, track=track,
                            schedule=task.schedule)
        self.processed += 1
        if exception is None:
            logger.debug("process %s:%s %s -> [%d] follows:%d results:%d", task.project, task.taskid,
                         task.url, fetch_result.status_code, len(new_tasks), len(results))
        else:
            self.failed += 1
            logger.error("process %s:%s %s -> [%d] failed: %s", task.project, task.taskid, task.url,
                         fetch_result.status_code, exception.rstrip().rsplit("\n", 1)[-1])
        return ProcessOutcome(status, new_tasks, results, run.logs, exception)

    def failure(self, task: Task, fetch_result: FetchResult, error: str, elapsed: float = 0.0) -> ProcessOutcome:
        """The outcome of *task* failed with *error* without its callback's output (the prefork
        pool: a child killed past its hard time limit, or dead)."""
        try:
            response = Response.from_fetch_result(fetch_result, task)
            fetch = self._fetch_track(task, fetch_result, response)
        except Exception:      # the fetch track is what the scheduler keeps of the fetch: never fail on it
            fetch = {"ok": fetch_result.ok, "status_code": fetch_result.status_code, "url": fetch_result.url,
                     "time": fetch_result.time, "error": fetch_result.error, "content_length": len(fetch_result.content)}
        run = TaskRun(logs=[f"[E {task.project}:{task.taskid}] {error}"], exception=error)
        track = Track(fetch=fetch, process=self._process_track(run, error, 0, 0, None, elapsed))
        status = StatusPack(taskid=task.taskid, project=task.project, url=task.url, track=track,
                            schedule=task.schedule)
        return ProcessOutcome(status, [], [], run.logs, error)

    def _run(self, task: Task, response: Response, project: Project | None, now: float) -> TaskRun:
        if project is None:
            try:
                project = self.projects.get(task.project)
            except StorageUnavailable:
                raise       # not the task's fault: run() hands it back and waits for the database
            except Exception as exc:
                logger.exception("processor: cannot load project %s", task.project)
                return TaskRun(exception=f"ScriptError: cannot load project {task.project!r}: {exc}")
            if project is None:
                return TaskRun(exception=f"ScriptError: no project named {task.project!r}")
        settings = self.settings
        limit = task.process.time_limit or settings.process_time_limit
        handler = getattr(project, "handler", None)
        if handler is not None:   # self.job: the job running the project (spiderflow.jobs), or None
            handler.job = self.jobs.job(task.schedule.job) if self.jobs is not None else None
        soft = settings.process_soft_time_limit
        if soft is None:
            return project.run(task, response, time_limit=limit, capture_stdout=self.capture_stdout, now=now)
        return project.run(task, response, time_limit=limit, capture_stdout=self.capture_stdout, now=now,
                           soft_time_limit=soft)

    def _result_packs(self, task: Task, values: list[Any],
                      now: float) -> tuple[list[ResultPack], str | None, str | None]:
        """One ResultPack per result: the first keyed by the task id, the next by ``<taskid>#<n>``.

        The results of a message sent with a URL of its own (``send_message(project, msg,
        url=...)``) are keyed by the md5 of that URL instead, as pyspider keyed them: each such
        message makes a result of its own. Also returns the summary of the first pack's result
        for the track (from the JSON text its check produced) and the error for the results
        dropped, if any.
        """
        packs: list[ResultPack] = []
        errors: list[str] = []
        summary = None
        base, url = task.taskid, task.url
        if base == "_on_message" and values:
            save = task.fetch.save
            url = save["url"] if isinstance(save, dict) and isinstance(save.get("url"), str) else url
            if url != SPECIAL_TASKS["_on_message"][0]:
                base = md5_taskid(url)
        for index, value in enumerate(values):
            try:
                text = _STRICT_JSON.encode(value)
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                errors.append(f"result {index} of the callback holds text that is not valid Unicode and was "
                              f"dropped: {exc} (a lone surrogate such as \\ud800, e.g. from response.json)")
                continue
            except (TypeError, ValueError, RecursionError) as exc:
                errors.append(f"result {index} of the callback is not JSON data and was dropped: {exc}")
                continue
            if summary is None:
                summary = _summary(value if isinstance(value, str) else text)
            taskid = base if index == 0 else f"{base}{RESULT_SEPARATOR}{index}"
            packs.append(ResultPack(project=task.project, taskid=taskid, url=url, result=value, updatetime=now))
        return packs, summary, ("ResultError: " + "; ".join(errors)) if errors else None

    @staticmethod
    def _fetch_track(task: Task, result: FetchResult, response: Response) -> dict[str, Any]:
        headers = response.headers
        etag = headers.get("etag")
        last_modified = headers.get("last-modified")
        if result.status_code == 304:  # not modified: keep the validators of the fetch before
            etag = etag or task.track.fetch.get("etag")
            last_modified = last_modified or task.track.fetch.get("last_modified")
        track = {
            "ok": result.ok, "status_code": result.status_code, "url": result.url, "time": result.time,
            "error": result.error, "content_length": len(result.content),
            "etag": etag, "last_modified": last_modified,
        }
        if response.known_encoding is not None:
            track["encoding"] = response.known_encoding
        if result.truncated:
            track["truncated"] = True
        return track

    def _process_track(self, run: TaskRun, exception: str | None, follows: int, results: int,
                       summary: str | None, elapsed: float) -> dict[str, Any]:
        tail = self.settings.log_tail
        logs = "\n".join(run.logs[-tail:]) if tail > 0 else ""
        try:
            logs.encode("utf-8")
        except UnicodeEncodeError:   # a printed lone surrogate: the log line is kept, the character is not
            logs = _scrub(logs)
        track: dict[str, Any] = {
            "ok": exception is None, "time": elapsed, "follows": follows, "results": results,
            "logs": logs, "exception": exception, "result": summary,
        }
        if run.save:
            track["save"] = _plain(run.save)
        return track

    # -- the worker loop -----------------------------------------------------------------------------
    def handle(self, task: Task, fetch_result: FetchResult) -> ProcessOutcome:
        """Process one task and put what it produced on the queues."""
        outcome = self.process(task, fetch_result)
        self.dispatch(outcome)
        return outcome

    def process_checked(self, task: Task | dict, fetch_result: FetchResult | dict) -> ProcessOutcome:
        """:meth:`process`, and an outcome that cannot be serialized fails its task (in-process runs,
        whose outcome is stored without travelling on a queue; :meth:`dispatch` checks the others)."""
        outcome = self.process(task, fetch_result)
        try:
            pack((outcome.status_pack, *outcome.results, *outcome.new_tasks))
        except SerializationError as exc:
            return self._unsendable(outcome, exc)
        return outcome

    def dispatch(self, outcome: ProcessOutcome) -> None:
        """Put an outcome on the queues as one message (see the module docstring).

        An outcome that cannot be serialized (a lone surrogate such as ``"\\ud800"`` from
        ``response.json``, an int beyond 64 bits) fails its task instead: the task's status
        goes on alone with the error, so it is retried and then FAILED, never left ACTIVE.
        Within :meth:`run` the message is encoded now and sent with the rest of the batch.
        """
        outbox = self._outbox
        if outbox is not None:
            route = self._route(outcome)
            if route is not None and hasattr(route[0], "put_encoded"):     # else: a plain queue-like object
                queue, message = route
                try:
                    item = queue.encode(message)
                except SerializationError as exc:
                    queue, message = self._route(self._unsendable(outcome, exc))
                    item = queue.encode(message)
                outbox.append((queue, item))
                return
        try:
            self._put(outcome)
        except SerializationError as exc:
            self._put(self._unsendable(outcome, exc))

    def _route(self, outcome: ProcessOutcome) -> tuple[Any, Any] | None:
        """The queue an outcome goes to and its message; None when it goes nowhere as one message."""
        pack = outcome.status_pack
        if outcome.results and self.result_queue is not None:
            return self.result_queue, (pack, *outcome.results, *outcome.new_tasks)
        if self.status_queue is not None:
            return self.status_queue, ((pack, *outcome.new_tasks) if outcome.new_tasks else pack)
        return None

    def _put(self, outcome: ProcessOutcome) -> None:
        route = self._route(outcome)
        if route is not None:
            route[0].put(route[1])
        elif outcome.new_tasks and self.newtask_queue is not None:
            self.newtask_queue.put_many(outcome.new_tasks)   # no status queue: the follows alone

    def _unsendable(self, outcome: ProcessOutcome, exc: SerializationError) -> ProcessOutcome:
        """The outcome of a task whose output cannot be sent: failed, with the reason, and nothing else."""
        status = outcome.status_pack
        cause = exc.__cause__ or exc
        error = (f"SerializationError: the callback's output cannot be sent ({type(cause).__name__}: "
                 f"{_scrub(str(cause))}); its {len(outcome.results)} result(s) and {len(outcome.new_tasks)} "
                 "follow-up request(s) were dropped. Check the values it returns for text that is not "
                 "valid Unicode (lone surrogates such as \\ud800) or integers beyond 64 bits.")
        logger.error("process %s:%s %s failed: %s", status.project, status.taskid, _scrub(status.url), error)
        if outcome.exception is None:
            self.failed += 1
        process = dict(status.track.process)
        process.pop("save", None)
        process.update(ok=False, follows=0, results=0, result=None, exception=error,
                       logs=_scrub(process.get("logs") or ""))
        track = Track(fetch=_scrubbed(status.track.fetch), process=_scrubbed(process))
        pack = StatusPack(taskid=status.taskid, project=status.project, url=status.url, track=track,
                          schedule=status.schedule)
        return ProcessOutcome(pack, [], [], outcome.logs, error)

    def run(self, burst: bool = False) -> None:
        """Process until stop() (warm: the batch in hand is finished), or until drained with *burst*.

        The deliveries already waiting are taken together, up to :data:`RECEIVE_BATCH`; their
        outcomes go out with one ``put_encoded`` per output queue, and then the deliveries are
        acked together (one round trip each on redis, one confirm wait on amqp). Nothing is
        acked before its outcome is queued.
        """
        if self.pool is not None:
            self.pool.run(burst)
            return
        logger.info("processor starting%s", " (burst)" if burst else "")
        reason = "stopped"
        outage = Outage("processor")
        while not self._stop.is_set():
            try:
                deliveries = self.inqueue.receive_many(self.receive_batch, timeout=0 if burst else self.poll_interval)
            except QueueClosed:
                reason = "inqueue closed"
                break
            except QueueError as exc:  # a broker outage is temporary: wait and go on
                logger.error("processor: receiving failed (%s); retrying", exc)
                self._stop.wait(self.poll_interval)
                continue
            if not deliveries:
                if burst:
                    reason = "inqueue drained"
                    break
                continue
            stopped = self._run_batch(deliveries, outage)
            if stopped is not None:
                reason = stopped
                break
        logger.info("processor exiting: %s (%d tasks, %d failed)", reason, self.processed, self.failed)

    def _run_batch(self, deliveries: list[Delivery], outage: Outage) -> str | None:
        """Handle *deliveries* in order, send their outcomes, ack them; a reason to stop, or None."""
        held = self._held = collections.deque(deliveries)
        outbox: list[tuple[Any, Any]] = []
        self._outbox = outbox
        handled: list[Delivery] = []
        reason = None
        try:
            while held:     # a warm stop finishes the batch: not every backend can hand a delivery back
                delivery = held.popleft()
                try:
                    while True:
                        try:
                            self._handle_message(delivery.message)
                            break
                        except StorageUnavailable as exc:   # keep the task in hand until the database is back
                            if self._stop.wait(outage.failed(exc)):
                                raise QueueClosed("stopping during a database outage") from exc
                except QueueClosed:
                    held.appendleft(delivery)
                    reason = "stopped during a database outage"
                    break
                except Exception:
                    logger.exception("processor: failed to handle a message; going on")
                else:
                    if outage.since is not None:
                        outage.recovered()
                handled.append(delivery)
        finally:
            self._outbox = None
            rest = list(held)
            self._held = collections.deque()
        for delivery in rest:
            delivery.hand_back()
        try:
            self._send_outbox(outbox, handled)
        except QueueClosed:
            for delivery in handled:
                delivery.hand_back()
            return "an output queue is closed"
        except QueueError as exc:
            logger.error("processor: an output queue failed (%s); handing %d task(s) back", exc, len(handled))
            for delivery in handled:
                delivery.hand_back()
            self._stop.wait(self.poll_interval)
        return reason

    def _send_outbox(self, outbox: list[tuple[Any, Any]], handled: list[Delivery]) -> None:
        """Put the encoded messages of a batch, one call per queue (in order within each), and
        ack *handled* with the last of them (in the same script call on redis)."""
        by_queue: dict[int, tuple[Any, list[Any]]] = {}
        for queue, item in outbox:
            entry = by_queue.get(id(queue))
            if entry is None:
                by_queue[id(queue)] = (queue, [item])
            else:
                entry[1].append(item)
        groups = list(by_queue.values())
        for queue, items in groups[:-1]:
            queue.put_encoded(items)
        if groups:
            queue, items = groups[-1]
            queue.put_encoded(items, ack=handled)
        elif handled:
            self.inqueue.ack_many(handled)

    def reserved_tasks(self) -> list[Task]:
        """Tasks of the batch in hand not started yet (``inspect reserved``)."""
        out = []
        for delivery in list(self._held):
            message = delivery.message
            if isinstance(message, (tuple, list)) and message and isinstance(message[0], Task):
                out.append(message[0])
        return out

    def _handle_message(self, message: Any) -> None:
        if (isinstance(message, (tuple, list)) and len(message) == 2
                and isinstance(message[0], Task) and isinstance(message[1], FetchResult)):
            task = message[0]
            if self.jobs is not None and task.schedule.job is not None and self.jobs.cancelled(task.schedule.job):
                self.jobs.drop("processor", task)   # nothing of a cancelled job is processed or stored
                return
            if self.control is not None:    # revokes, runtime time limits, inspect active (spiderflow.control)
                self.control.handle(task, message[1])
            else:
                self.handle(task, message[1])
        else:
            logger.error("processor: dropping a message that is not (Task, FetchResult): %.200r", message)

    def stop(self) -> None:
        """Warm shutdown: finish the task in hand, then leave run()."""
        self._stop.set()
        if self.pool is not None:
            self.pool.wake()

    def project_errors(self) -> dict[str, str]:
        """{project: error} for every project whose script failed to load."""
        return self.projects.errors()


def _summary(text: str) -> str:
    """*text* cut to :data:`RESULT_SUMMARY` characters."""
    return text if len(text) <= RESULT_SUMMARY else text[:RESULT_SUMMARY - 3] + "..."


def _scrub(text: str) -> str:
    """*text* with anything UTF-8 cannot encode (lone surrogates) replaced by ``?``."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _scrubbed(value: Any) -> Any:
    """A copy of a track dict safe to send: strings scrubbed, values that are not plain dropped to repr."""
    if isinstance(value, str):
        return _scrub(value)
    if isinstance(value, dict):
        return {_scrub(str(k)): _scrubbed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrubbed(v) for v in value]
    if value is None or isinstance(value, (bool, float)) or (isinstance(value, int) and -2**63 <= value < 2**64):
        return value
    return _scrub(repr(value)[:1000])


def _plain(value: Any) -> Any:
    """*value* if it is JSON data, else its repr (track fields must survive every queue)."""
    try:
        _STRICT_JSON.encode(value)
        return value
    except (TypeError, ValueError, RecursionError):
        return repr(value)[:1000]


__all__ = ["ProcessOutcome", "Processor", "RESULT_SEPARATOR", "RESULT_SUMMARY"]
