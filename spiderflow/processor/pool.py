"""The processor's prefork pool (Celery's): callbacks run in forked child processes.

``spiderflow processor --pool prefork`` (or any of ``--concurrency N``, ``--autoscale
MAX,MIN``, ``--max-tasks-per-child N``, ``--max-memory-per-child KIB``). The processor's
main process keeps everything that touches a queue or the cluster: the consumer of
fetcher2processor, the job watch, the control panel, and the dispatch of every outcome to
status_queue or processor2result. Its children only run :meth:`Processor.process`: each
opens its own projectdb engine after the fork (an engine is never shared across a fork),
gets ``(task, fetch_result)`` (packed as on the queues) with the task's :class:`Job`
over a pipe, and sends the outcome back packed the same way. A child never touches a queue
and leaves with ``os._exit`` (no finalizer of an inherited connection runs in it); the
sockets it inherited are pointed at /dev/null as it starts.

* **Deliveries.** A receiver thread takes up to twice the pool's size of deliveries (one in
  each child and one reserved per child, ``inspect reserved``); the main loop gives each to
  an idle child, after the checks the solo loop makes (cancelled job, revoke, runtime time
  limit). A delivery is acknowledged only once its outcome is on an output queue (ack-late).
* **Recycling.** After a task, a child that has run ``max_tasks_per_child`` tasks, or whose
  resident memory is above ``max_memory_per_child`` KiB, is told to exit and a new one is
  forked: between two tasks, so that task's outcome is delivered as usual.
* **Time limits.** The soft limit (``process_soft_time_limit``) and the hard limit are raised
  in the child's callback by :class:`~.timelimit.TimeLimit`. A callback that does not return
  to the interpreter (stuck in C: a catastrophic regular expression, ``libc.sleep``) is
  killed by the parent :data:`KILL_GRACE` seconds past its hard limit (SIGKILL); its task
  fails with a TimeLimitExceeded error in its track (retried per the task's retries, like
  any failure) and a new child takes the place.
* **A child that dies** (kill -9, a segfault, the OOM killer) mid-task loses nothing: its
  task fails with a ``WorkerLostError`` in its track, is retried per its retries like any
  failure (so a callback that always crashes its child cannot crash children for ever) and
  its delivery is acknowledged once that status is queued. A new child takes its place.
* **revoke --terminate** of a running task kills its child (SIGKILL), as Celery does: the
  task's outcome is dropped, its delivery acknowledged, and a new child takes the place.
* **Warm stop** (SIGTERM, ``control shutdown``): no more deliveries are taken; those
  reserved are handed back to the queue where it can take them back (redis, amqp), else
  processed; the tasks in the children are finished (their hard limits still apply), then
  the children are told to exit (SIGKILL after :data:`CHILD_EXIT_WAIT` seconds).
* **Autoscale** (``MAX,MIN``): while every child is busy and deliveries wait (reserved, or in
  the queue), the pool grows up to MAX; after ``processor_autoscale_keepalive`` seconds with
  an idle child it shrinks to what is busy, not below MIN.

Children ignore SIGTERM, SIGINT and SIGHUP (the parent decides when they end, so a signal
to the whole process group is still a warm stop) and are killed by the kernel when the
parent dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import multiprocessing
import os
import selectors
import signal
import stat
import sys
import threading
import time
import traceback
from typing import Any

from ..exceptions import (
    QueueClosed,
    QueueEmpty,
    QueueError,
    SerializationError,
    StorageUnavailable,
)
from ..message import FetchResult, Task, pack, unpack
from ..storage import Outage

logger = logging.getLogger(__name__)

#: seconds past the hard time limit before the parent kills a child whose callback did not return
KILL_GRACE = 0.5
#: seconds a child told to exit (warm stop, shrink, recycling) gets before it is killed
CHILD_EXIT_WAIT = 5.0
#: a child whose project lookup (projectdb, compiling the script) took longer than this
#: tells the parent when the callback starts, so the hard limit counts from there
BEGIN_AFTER = 0.05
#: the most children a pool grows to (pool_grow, autoscale)
MAX_POOL = 512
#: seconds between two autoscale decisions
AUTOSCALE_EVERY = 0.5


class _Job:
    """One delivery in the pool: reserved, then in a child."""

    __slots__ = ("seq", "delivery", "task", "fetch_result", "limit", "started", "deadline", "child",
                 "terminated", "killed", "retry_at")

    def __init__(self, seq: int, delivery: Any):
        self.seq = seq
        self.delivery = delivery
        self.task: Task | None = None
        self.fetch_result: FetchResult | None = None
        self.limit = 0.0
        self.started = 0.0           # time.time() when given to a child
        self.deadline: float | None = None   # monotonic: kill the child past it
        self.child: _Child | None = None
        self.terminated = False      # revoke --terminate: the outcome is dropped
        self.killed: str | None = None   # why the parent killed the child ("time")
        self.retry_at = 0.0          # a database outage: not before this (monotonic)


class _Child:
    __slots__ = ("pid", "conn", "job", "tasks", "retiring", "born")

    def __init__(self, pid: int, conn: Any):
        self.pid = pid
        self.conn = conn
        self.job: _Job | None = None
        self.tasks = 0
        self.retiring: str | None = None     # why it is leaving (it gets no more tasks)
        self.born = time.time()


class _JobOf:
    """The child's ``processor.jobs``: the Job the parent sent with the task."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: Any = None

    def job(self, job_id: str | None) -> Any:
        job = self.current
        return job if job is not None and job_id is not None and getattr(job, "id", None) == job_id else None


class PreforkPool:
    """Runs a :class:`~.processor.Processor`'s callbacks in child processes (see the module docstring)."""

    def __init__(self, processor: Any):
        settings = processor.settings
        self.processor = processor
        self.settings = settings
        self.autoscale = settings.processor_autoscale_range()
        size = settings.processor_concurrency
        if self.autoscale is not None:
            size = sorted((self.autoscale[1], size, self.autoscale[0]))[1]
        self.size = min(size, MAX_POOL)
        self.max_tasks = settings.max_tasks_per_child
        self.max_memory = settings.max_memory_per_child
        self.keepalive = settings.processor_autoscale_keepalive
        self.children: dict[int, _Child] = {}
        self.reserved: collections.deque[_Job] = collections.deque()
        self.writes: collections.Counter[int] = collections.Counter()   # tasks given, per live child pid
        self.total_writes = 0
        self.replaced: collections.Counter[str] = collections.Counter()  # children replaced, by reason
        self._lock = threading.RLock()
        self._room = threading.Condition(self._lock)
        self._seq = 0
        self._wake_r = self._wake_w = -1
        self._stopping = False
        self._drained = False
        self._closed: str | None = None     # the inqueue is closed
        self._abort: str | None = None      # an output queue is closed: leave at once
        self._idle_since: float | None = None
        self._next_scale = 0.0
        self._outage = Outage("processor")
        self._receiver: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None

    # -- the loop ------------------------------------------------------------------------------
    def run(self, burst: bool = False) -> None:
        processor = self.processor
        logger.info("processor starting%s: prefork pool of %s child process(es)%s%s%s", " (burst)" if burst else "",
                    f"{self.autoscale[1]}..{self.autoscale[0]}" if self.autoscale else self.size,
                    f", max {self.max_tasks} tasks per child" if self.max_tasks else "",
                    f", max {self.max_memory} KiB per child" if self.max_memory else "",
                    f", soft time limit {self.settings.process_soft_time_limit:g} s"
                    if self.settings.process_soft_time_limit else "")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._receiver = threading.Thread(target=self._receive_loop, args=(burst,), name="processor-receive",
                                          daemon=True)
        reason = "stopped"
        try:
            self._maintain()
            self._receiver.start()
            while True:
                if processor._stop.is_set() and not self._stopping:
                    self._begin_stop()
                if self._abort is not None:
                    reason = self._abort
                    break
                self._assign()
                self._check_deadlines()
                if self.autoscale is not None and not self._stopping:
                    self._autoscale_tick()
                self._maintain()
                busy = self._busy()
                with self._lock:
                    waiting = len(self.reserved)
                if not busy and not waiting:
                    if self._stopping and not self._receiver.is_alive():   # its last delivery is in hand
                        break
                    if self._drained:
                        reason = "inqueue drained"
                        break
                    if self._closed is not None:
                        reason = self._closed
                        break
                self._wait(self._next_timeout())
        finally:
            self._shutdown()
        logger.info("processor exiting: %s (%d tasks, %d failed; %d child process(es) replaced)", reason,
                    processor.processed, processor.failed, sum(self.replaced.values()))

    def wake(self) -> None:
        """Wake the main loop (from a signal handler, the control agent, the receiver)."""
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def _wait(self, timeout: float) -> None:
        for key, _events in self._selector.select(max(0.0, timeout)):
            child = key.data
            if child is None:
                with contextlib.suppress(OSError):
                    while os.read(self._wake_r, 4096):
                        pass
            elif child.pid in self.children:     # not lost while an earlier event was read
                self._read(child)

    def _next_timeout(self) -> float:
        now = time.monotonic()
        timeout = AUTOSCALE_EVERY if self.autoscale is not None or self._stopping else 1.0
        with self._lock:
            for child in self.children.values():
                job = child.job
                if job is not None and job.deadline is not None:
                    timeout = min(timeout, job.deadline - now)
            if self.reserved and self.reserved[0].retry_at:
                timeout = min(timeout, self.reserved[0].retry_at - now)
        return max(timeout, 0.001)

    def _busy(self) -> int:
        with self._lock:
            return sum(1 for c in self.children.values() if c.job is not None)

    # -- receiving (a thread of its own) ----------------------------------------------------------
    def _capacity(self) -> int:
        return 2 * max(1, self.size)

    def _in_hand(self) -> int:
        return len(self.reserved) + sum(1 for c in self.children.values() if c.job is not None)

    def _receive_loop(self, burst: bool) -> None:
        try:
            self._receive(burst)
        finally:
            self.wake()          # the main loop waits for this thread's end to stop

    def _receive(self, burst: bool) -> None:
        processor = self.processor
        inqueue = processor.inqueue
        while True:
            with self._room:
                while not self._stopping and self._in_hand() >= self._capacity():
                    self._room.wait(0.5)
                if self._stopping:
                    return
            try:
                delivery = inqueue.receive(timeout=0 if burst else processor.poll_interval)
            except QueueEmpty:
                if burst:
                    self._drained = True
                    self.wake()
                    return
                continue
            except SerializationError:
                continue  # dropped and logged by the queue
            except QueueClosed:
                self._closed = "inqueue closed"
                self.wake()
                return
            except QueueError as exc:  # a broker outage is temporary: wait and go on
                logger.error("processor: receiving failed (%s); retrying", exc)
                processor._stop.wait(processor.poll_interval)
                continue
            except Exception:
                logger.exception("processor: receiving failed; retrying")
                processor._stop.wait(processor.poll_interval)
                continue
            with self._lock:
                if self._stopping and getattr(inqueue, "reliable", False):
                    delivery.hand_back()     # came in as the stop began: the queue takes it back
                    return
                self._seq += 1
                self.reserved.append(_Job(self._seq, delivery))
            self.wake()

    # -- giving tasks to children -------------------------------------------------------------------
    def _idle_child(self) -> _Child | None:
        for child in self.children.values():
            if child.job is None and child.retiring is None:
                return child
        return None

    def _assign(self) -> None:
        while True:
            with self._lock:
                if not self.reserved:
                    return
                job = self.reserved[0]
                if job.retry_at and job.retry_at > time.monotonic():
                    return
                child = self._idle_child()
                if child is None:
                    return
                self.reserved.popleft()
            if job.task is None and not self._admit(job):
                continue
            self._give(job, child)

    def _admit(self, job: _Job) -> bool:
        """The solo loop's checks: False (the delivery acked) for what must not run."""
        processor = self.processor
        message = job.delivery.message
        if not (isinstance(message, (tuple, list)) and len(message) == 2
                and isinstance(message[0], Task) and isinstance(message[1], FetchResult)):
            logger.error("processor: dropping a message that is not (Task, FetchResult): %.200r", message)
            self._ack(job)
            return False
        task = message[0]
        jobs = processor.jobs
        if jobs is not None and task.schedule.job is not None and jobs.cancelled(task.schedule.job):
            jobs.drop("processor", task)   # nothing of a cancelled job is processed or stored
            self._ack(job)
            return False
        control = processor.control
        if control is not None:
            task = control.admit(task)     # revokes and runtime time limits (spiderflow.control)
            if task is None:
                self._ack(job)
                return False
        job.task, job.fetch_result = task, message[1]
        job.limit = task.process.time_limit or self.settings.process_time_limit or 0.0
        return True

    def _give(self, job: _Job, child: _Child) -> None:
        processor = self.processor
        task = job.task
        job_args = processor.jobs.job(task.schedule.job) if processor.jobs is not None else None
        try:
            data = pack((task, job.fetch_result))
        except SerializationError as exc:   # cannot happen for what a queue decoded; never stall on it
            self._finish(job, processor.failure(task, job.fetch_result, f"SerializationError: {exc}"))
            return
        with self._lock:
            job.child = child
            child.job = job
            job.started = time.time()
            job.deadline = time.monotonic() + job.limit + KILL_GRACE if job.limit > 0 else None
            self.writes[child.pid] += 1
            self.total_writes += 1
        try:
            child.conn.send(("task", job.seq, data, job_args))
        except (OSError, ValueError) as exc:      # it died meanwhile: its end of the pipe is gone
            logger.debug("processor: sending to child %d failed: %s", child.pid, exc)
            self._lost(child)

    # -- what children send -----------------------------------------------------------------------------
    def _read(self, child: _Child) -> None:
        try:
            message = child.conn.recv()
        except (EOFError, OSError):
            self._lost(child)
            return
        except Exception:   # a reply that does not unpickle: the child is broken
            logger.exception("processor: a child process (pid %d) sent what cannot be read; replacing it",
                             child.pid)
            self._kill(child)
            self._lost(child)
            return
        kind, seq = message[0], message[1]
        job = child.job
        if job is None or job.seq != seq:
            return
        if kind == "begin":          # a slow project load: the callback starts now
            if job.limit > 0:
                job.deadline = time.monotonic() + job.limit + KILL_GRACE
            return
        with self._lock:
            child.job = None
            job.child = None
            self._room.notify()
        if kind == "done":
            child.tasks += 1
            _kind, _seq, target, data, exception, rss, info = message
            if info:
                self.processor.projects_seen.update(info)
            self._done(job, target, data, exception)
            if self.max_tasks and child.tasks >= self.max_tasks:
                self._retire(child, "max-tasks-per-child")
            elif self.max_memory and rss > self.max_memory:
                logger.info("processor: child process %d uses %d KiB, above max_memory_per_child %d KiB; "
                            "replacing it", child.pid, rss, self.max_memory)
                self._retire(child, "max-memory-per-child")
        elif kind == "outage":      # not the task's fault: hold it and try again (as the solo loop does)
            delay = self._outage.failed(StorageUnavailable(message[2]))
            if self._stopping:
                job.delivery.hand_back()
                return
            job.retry_at = time.monotonic() + delay
            with self._lock:
                self.reserved.appendleft(job)
        else:                       # "error": a bug of spiderflow's while processing
            logger.error("processor: failed to handle a message; going on:\n%s", message[2])
            self._ack(job)

    def _done(self, job: _Job, target: str | None, data: bytes, exception: str | None) -> None:
        """A child's outcome: *data* is the message for the queue *target*, packed as that queue
        carries it (see :func:`_message_of`), put on it as it is where the queue serializes."""
        if self._outage.since is not None:
            self._outage.recovered()
        processor = self.processor
        queue = {"result": processor.result_queue, "status": processor.status_queue,
                 "newtask": processor.newtask_queue}.get(target) if target else None

        def put() -> None:
            if queue is None:
                return
            if target == "newtask":
                queue.put_many(list(unpack(data)))     # follows alone: one message per task
            elif queue.serialize:
                queue._check_open()
                queue._put(data, None)                 # the bytes the queue would have made
            else:
                queue.put(unpack(data))
        self._finish(job, put, exception)

    def _finish(self, job: _Job, put: Any, exception: str | None = None) -> None:
        """Put the outcome (*put*: a ProcessOutcome, or a call that queues it) and ack *job*'s
        delivery; dropped if the job was terminated."""
        processor = self.processor
        task = job.task
        with self._lock:
            terminated = job.terminated
        if terminated:
            logger.warning("processor: dropped the outcome of %s:%s %s: revoked with terminate while its "
                           "callback ran", task.project, task.taskid, task.url)
            self._ack(job)
            return
        if not callable(put):
            exception = put.exception
        processor.processed += 1
        if exception is not None:
            processor.failed += 1
        try:
            if callable(put):
                put()
            else:
                processor.dispatch(put)
        except QueueClosed:
            job.delivery.hand_back()
            self._abort = "an output queue is closed"
            return
        except QueueError as exc:
            logger.error("processor: an output queue failed (%s); handing the task back", exc)
            job.delivery.hand_back()
            processor._stop.wait(processor.poll_interval)
            return
        except Exception:
            logger.exception("processor: failed to handle a message; going on")
        self._ack(job)

    def _ack(self, job: _Job) -> None:
        try:
            job.delivery.ack()
        except Exception:
            logger.exception("processor: acknowledging a delivery failed")

    # -- children that end ---------------------------------------------------------------------------------
    def _lost(self, child: _Child) -> None:
        """*child*'s pipe closed: it exited or died; fail (or drop) the task it had."""
        with self._lock:
            if self.children.pop(child.pid, None) is None:
                return
            job, child.job = child.job, None
            self.writes.pop(child.pid, None)
            self._room.notify()
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(child.conn)
        with contextlib.suppress(OSError):
            child.conn.close()
        how = _reap(child.pid)
        if child.retiring is not None and job is None:
            return                    # told to leave, and it left
        if job is None:
            logger.error("processor: child process %d died (%s) between tasks; starting another", child.pid, how)
            self.replaced["died"] += 1
            return
        task = job.task
        if job.terminated:
            self.replaced["terminated"] += 1
            self._finish(job, None)   # dropped, acked
            return
        if job.killed == "time":
            self.replaced["time-limit"] += 1
            error = (f"TimeLimitExceeded: the callback ran past the process time limit of {job.limit:g} s and "
                     f"did not return to the interpreter (stuck in C code, e.g. a regular expression); its "
                     f"child process (pid {child.pid}) was killed and replaced")
        else:
            self.replaced["died"] += 1
            error = (f"WorkerLostError: the child process (pid {child.pid}) running the callback died ({how}) "
                     "before the callback returned; the task failed and is retried per its retries")
        logger.error("process %s:%s %s failed: %s", task.project, task.taskid, task.url, error)
        self._finish(job, self.processor.failure(task, job.fetch_result, error, time.time() - job.started))

    def _kill(self, child: _Child) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        with self._lock:
            for child in self.children.values():
                job = child.job
                if job is not None and job.deadline is not None and now >= job.deadline and job.killed is None:
                    job.killed = "time"
                    task = job.task
                    logger.error("processor: %s:%s %s ran %.1f s past its hard time limit of %g s without "
                                 "returning; killing its child process %d", task.project, task.taskid, task.url,
                                 now - job.deadline + KILL_GRACE, job.limit, child.pid)
                    self._kill(child)

    def _retire(self, child: _Child, why: str) -> None:
        """Tell *child* to exit once idle (now, if it is); a new one is forked in its place."""
        if child.retiring is not None:
            return
        child.retiring = why
        if why in ("max-tasks-per-child", "max-memory-per-child"):
            self.replaced[why] += 1
        if child.job is None:
            with contextlib.suppress(OSError, ValueError):
                child.conn.send(("stop", 0))

    # -- the pool's size --------------------------------------------------------------------------------------
    def _maintain(self) -> None:
        """Fork children up to the size; retire the ones above it (idle ones first)."""
        with self._lock:
            active = [c for c in self.children.values() if c.retiring is None]
            size = self.size
            if self._stopping:     # only what the reserved deliveries still need
                size = min(size, len(self.reserved))
                if len(active) >= size:
                    return
            excess = len(active) - size
        if excess > 0:
            for child in sorted(active, key=lambda c: c.job is not None)[:excess]:
                self._retire(child, "shrink")
            return
        for child in list(self.children.values()):     # a busy child retired by a shrink: now idle
            if child.retiring is not None and child.job is None:
                with contextlib.suppress(OSError, ValueError):
                    child.conn.send(("stop", 0))
        for _ in range(-excess):
            self._spawn()

    def _spawn(self) -> None:
        parent_end, child_end = multiprocessing.Pipe(duplex=True)
        with self._lock:
            others = [c.conn for c in self.children.values()]
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:   # the child: never returns
            code = 1
            try:
                parent_end.close()
                for conn in others:
                    with contextlib.suppress(OSError):
                        conn.close()
                for fd in (self._wake_r, self._wake_w, self._selector.fileno()):
                    with contextlib.suppress(OSError):
                        os.close(fd)
                _drop_inherited_sockets(child_end.fileno())
                code = _child_main(self.processor, child_end)
            except BaseException:
                with contextlib.suppress(BaseException):
                    traceback.print_exc()
            finally:
                os._exit(code)
        child_end.close()
        child = _Child(pid, parent_end)
        with self._lock:
            self.children[pid] = child
            self._room.notify()
        self._selector.register(parent_end, selectors.EVENT_READ, child)
        logger.debug("processor: started child process %d", pid)

    def resize(self, size: int) -> int:
        """Set the pool's size (control: pool_grow, pool_shrink, autoscale); the main loop applies it."""
        with self._lock:
            self.size = max(1, min(MAX_POOL, int(size)))
            self._room.notify()
        self.wake()
        return self.size

    def set_autoscale(self, high: int, low: int) -> int:
        with self._lock:
            self.autoscale = (min(MAX_POOL, high), max(1, low))
            self._idle_since = None
        return self.resize(sorted((low, self.size, high))[1])

    def _autoscale_tick(self) -> None:
        now = time.monotonic()
        if now < self._next_scale:
            return
        self._next_scale = now + AUTOSCALE_EVERY
        high, low = self.autoscale
        with self._lock:
            active = [c for c in self.children.values() if c.retiring is None]
            busy = sum(1 for c in active if c.job is not None)
            waiting = len(self.reserved)
            size = self.size
        if busy >= size and size < high:
            if not waiting:
                try:
                    waiting = self.processor.inqueue.qsize()
                except Exception:
                    waiting = 0
            if waiting:
                self._idle_since = None
                grown = self.resize(min(high, busy + waiting))
                logger.info("processor: autoscale grew the pool to %d (%d task(s) waiting)", grown, waiting)
                return
        if busy < size and size > low and not waiting:
            if self._idle_since is None:
                self._idle_since = now
            elif now - self._idle_since >= self.keepalive:
                self._idle_since = None
                shrunk = self.resize(max(low, busy))
                logger.info("processor: autoscale shrank the pool to %d (idle for %g s)", shrunk, self.keepalive)
        else:
            self._idle_since = None

    # -- stopping ------------------------------------------------------------------------------------
    def _begin_stop(self) -> None:
        """Warm stop: take no more; hand reserved deliveries back where the queue can take them."""
        with self._lock:
            self._stopping = True
            self._room.notify_all()
            reliable = getattr(self.processor.inqueue, "reliable", False)
            handed = []
            for job in list(self.reserved):
                if reliable or job.retry_at:
                    self.reserved.remove(job)
                    handed.append(job)
        for job in handed:
            job.delivery.hand_back()
        busy = self._busy()
        logger.info("processor: stopping warmly: finishing %d task(s) in the children%s", busy,
                    f", {len(handed)} reserved handed back" if handed else "")

    def _shutdown(self) -> None:
        self._stopping = True
        with self._lock:
            self._room.notify_all()
            left = list(self.reserved)
            self.reserved.clear()
            children = list(self.children.values())
        for job in left:             # after an abort: whatever is still in hand goes back
            job.delivery.hand_back()
        for child in children:
            if child.job is not None:
                child.job.delivery.hand_back()
                self._kill(child)
            with contextlib.suppress(OSError, ValueError):
                child.conn.send(("stop", 0))
        deadline = time.monotonic() + CHILD_EXIT_WAIT
        for child in children:
            while time.monotonic() < deadline and _reap(child.pid, block=False) is None:
                time.sleep(0.01)
            if _reap(child.pid, block=False) is None:
                logger.warning("processor: child process %d did not exit in %g s; killing it", child.pid,
                               CHILD_EXIT_WAIT)
                self._kill(child)
                _reap(child.pid)
            with contextlib.suppress(OSError):
                child.conn.close()
        with self._lock:
            self.children.clear()
        if self._receiver is not None and self._receiver.is_alive():
            self._receiver.join(self.processor.poll_interval + 1.0)
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # -- the control panel's view (any thread) -------------------------------------------------------------
    def active(self) -> list[tuple[Task, float, float, int]]:
        """(task, started, time limit, child pid) of every task in a child."""
        with self._lock:
            return [(c.job.task, c.job.started, c.job.limit, c.pid) for c in self.children.values()
                    if c.job is not None]

    def reserved_tasks(self) -> list[Task]:
        with self._lock:
            messages = [j.delivery.message for j in self.reserved]
        return [m[0] for m in messages if isinstance(m, (tuple, list)) and m and isinstance(m[0], Task)]

    def terminate(self, matches: Any) -> list[tuple[Task, int]]:
        """Kill the children running a task for which ``matches(task)``; their outcomes are dropped."""
        done = []
        with self._lock:
            for child in self.children.values():
                job = child.job
                if job is not None and not job.terminated and matches(job.task):
                    job.terminated = True
                    self._kill(child)
                    done.append((job.task, child.pid))
        return done

    def stats(self) -> dict[str, Any]:
        with self._lock:
            pids = sorted(self.children)
            writes = {str(pid): self.writes.get(pid, 0) for pid in pids}
            out: dict[str, Any] = {
                "implementation": "prefork", "max-concurrency": self.size, "processes": pids,
                "max-tasks-per-child": self.max_tasks, "max-memory-per-child": self.max_memory,
                "timeouts": [self.settings.process_soft_time_limit, self.settings.process_time_limit],
                "writes": {"total": self.total_writes, "all": writes},
                "replaced": dict(self.replaced), "replacements": sum(self.replaced.values()),
                "in-flight": sum(1 for c in self.children.values() if c.job is not None),
                "reserved": len(self.reserved),
            }
            if self.autoscale is not None:
                out["autoscaler"] = {"max": self.autoscale[0], "min": self.autoscale[1], "current": self.size}
        return out


# -- the child --------------------------------------------------------------------------------------------

def _child_main(parent: Any, conn: Any) -> int:
    """The loop of a child process: run each task sent, send its outcome back; 0 when told to stop."""
    from .processor import Processor
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)   # the parent decides when a child ends
    _die_with_parent()
    _fresh_locks()
    projects = _child_projects(parent.projects)
    processor = Processor(settings=parent.settings, clock=parent.clock, projects=projects,
                          capture_stdout=parent.capture_stdout)
    processor.pool = None
    jobs = processor.jobs = _JobOf()
    sent: dict[str, tuple] = {}
    page = os.sysconf("SC_PAGE_SIZE") // 1024
    measure = parent.settings.max_memory_per_child is not None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return 0       # the parent is gone
        if message[0] != "task":
            return 0
        _kind, seq, data, jobs.current = message
        try:
            task, fetch_result = unpack(data)
            started = time.monotonic()
            try:
                projects.get(task.project)    # loaded here, so that a slow load is not the callback's time
            except StorageUnavailable:
                raise
            except Exception:
                pass                          # process() reports it
            if time.monotonic() - started > BEGIN_AFTER:
                conn.send(("begin", seq))
            outcome = processor.process(task, fetch_result)
            try:
                target, packed = _message_of(parent, outcome)
            except SerializationError as exc:
                outcome = processor._unsendable(outcome, exc)
                target, packed = _message_of(parent, outcome)
            info = _project_info(projects, task.project, sent)
            conn.send(("done", seq, target, packed, outcome.exception, _rss_kib(page) if measure else 0, info))
        except StorageUnavailable as exc:
            conn.send(("outage", seq, str(exc)))
        except (EOFError, OSError, BrokenPipeError):
            return 0
        except Exception:
            conn.send(("error", seq, traceback.format_exc()))
        finally:
            jobs.current = None


def _message_of(processor: Any, outcome: Any) -> tuple[str | None, bytes]:
    """(queue, packed message) of *outcome*, as :meth:`Processor._put` would put it."""
    status = outcome.status_pack
    if outcome.results and processor.result_queue is not None:
        return "result", pack((status, *outcome.results, *outcome.new_tasks))
    if processor.status_queue is not None:
        return "status", pack((status, *outcome.new_tasks) if outcome.new_tasks else status)
    if outcome.new_tasks and processor.newtask_queue is not None:
        return "newtask", pack(tuple(outcome.new_tasks))
    return None, b""


def _child_projects(parent: Any) -> Any:
    """The child's ProjectManager: a projectdb engine of its own, the added projects as they are."""
    from .project import ProjectManager
    db = parent.projectdb
    if db is None:
        return parent          # projects added in memory only: the copy the fork made is the child's
    manager = ProjectManager(_reopen(db), env=parent.env, check_interval=parent.check_interval,
                             clock=parent.clock, time_limit=parent.time_limit)
    for name in parent._added:
        manager._projects[name] = parent._projects[name]
    manager._added = set(parent._added)
    return manager


def _reopen(db: Any) -> Any:
    """*db* on an engine made in this process (never the parent's, whose pool was forked)."""
    engine = getattr(db, "engine", None)
    if engine is None:
        return db
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return db              # an in-memory database lives in the copy the fork made
    from ..storage.engine import cached_engine
    return type(db)(cached_engine(url))


def _project_info(projects: Any, name: str, sent: dict[str, tuple]) -> dict[str, tuple] | None:
    """What the parent does not know yet of project *name* (for ``inspect registered``)."""
    project = projects._projects.get(name)
    if project is None:
        return None
    key = (project.md5, project.updatetime, project.error.splitlines()[0] if project.error else None)
    if sent.get(name) == key:
        return None
    sent[name] = key
    return {name: key}


def _rss_kib(page_kib: int) -> int:
    """This process's resident memory in KiB (Celery's max_memory_per_child unit)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * page_kib
    except (OSError, ValueError, IndexError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reap(pid: int, block: bool = True) -> str | None:
    """Wait for child *pid*; how it ended, or None if it still runs (*block* False)."""
    deadline = time.monotonic() + CHILD_EXIT_WAIT
    while True:
        try:
            got, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return "already reaped"
        if got == pid:
            if os.WIFSIGNALED(status):
                return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
            return f"exit code {os.WEXITSTATUS(status)}"
        if not block:
            return None
        if time.monotonic() > deadline:   # pragma: no cover - a blocking waitpid returns
            return None


def _die_with_parent() -> None:
    """Linux: the kernel kills this child when the processor dies (its pipe may not be read then)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)    # PR_SET_PDEATHSIG
        if os.getppid() == 1:            # the parent died before prctl
            os._exit(1)


def _drop_inherited_sockets(keep: int) -> None:
    """Point every socket this child inherited (the parent's broker and database connections)
    at /dev/null, but *keep*: its copy would keep the parent's connection open after the parent
    closes or drops it (RabbitMQ then redelivers that connection's messages only once its
    heartbeat times out). The descriptors stay taken, so no object of the parent's that the
    fork copied can ever use a number that a new connection of this child got."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for name in names:
            fd = int(name)
            if fd <= 2 or fd in (keep, devnull):
                continue
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.dup2(devnull, fd, inheritable=False)
            except OSError:
                continue
    finally:
        os.close(devnull)


def _fresh_locks() -> None:
    """Module locks another thread of the parent may have held at the fork: this child has no
    other thread, so new ones are safe (storage's engine cache)."""
    from ..storage import engine
    engine._lock = threading.Lock()


__all__ = ["BEGIN_AFTER", "CHILD_EXIT_WAIT", "KILL_GRACE", "MAX_POOL", "PreforkPool"]
