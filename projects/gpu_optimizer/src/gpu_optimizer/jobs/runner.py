"""Runs profiling jobs and plans in worker processes and keeps the job table up to date.

One supervisor thread owns the worker processes: it starts queued jobs up to
``workers`` at a time, reads their progress and results from a pipe, kills
them at their deadline, and turns an exit without a result (an OOM kill, a
segfault, ``os._exit``) into a failed job with the exit status. Only the API
process writes the database; workers never see it.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from gpu_optimizer.jobs import entry, ray_tasks
from gpu_optimizer.metrics import JobMetrics
from gpu_optimizer.storage import TERMINAL_STATES, Database, JobState, ProfilingJob
from gpu_optimizer.storage.tables import utcnow

log = logging.getLogger(__name__)

_PRELOAD = "gpu_optimizer.jobs.preload"
ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING)
RESTART_MESSAGE = "interrupted by a service restart"


class TaskFailed(RuntimeError):
    """A plan or other task ended without a result; the message says why."""


class TaskTimedOut(TaskFailed):
    pass


def worker_context() -> BaseContext:
    """forkserver with torch preloaded (jobs start in milliseconds) where available, else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([_PRELOAD])
        return ctx
    return multiprocessing.get_context("spawn")


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount or 0)


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "worker process did not exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = ", most likely out of memory" if -exitcode == signal.SIGKILL else ""
        return f"worker process was killed by {name}{hint} before reporting a result"
    return f"worker process exited with code {exitcode} before reporting a result"


@dataclass
class _Running:
    key: str
    kind: str
    process: BaseProcess | None
    conn: Connection | None
    started: float
    deadline: float
    timeout_s: float
    model: str = ""
    mode: str = ""
    future: Future[dict[str, Any]] | None = None
    outcome: tuple[str, Any] | None = None
    progress: list[float] = field(default_factory=list)
    ref: Any = None  # a Ray ObjectRef instead of a process (measure jobs on a cluster)


@dataclass
class _Launch:
    key: str
    kind: str
    request: dict[str, Any]
    timeout_s: float
    future: Future[dict[str, Any]] | None
    model: str = ""
    mode: str = ""


@dataclass
class _Pending:
    kind: str
    request: dict[str, Any]
    timeout_s: float
    future: Future[dict[str, Any]]


class JobRunner:
    """Profiling jobs (persisted, queued, ``workers`` at a time) and one-off tasks (plans)."""

    def __init__(
        self,
        db: Database,
        *,
        workers: int = 1,
        job_timeout_s: float = 600.0,
        resolve_spec: Callable[[str], str] = lambda spec: spec,
        metrics: JobMetrics | None = None,
        context: BaseContext | None = None,
    ) -> None:
        self._db = db
        self._workers = workers
        self._job_timeout_s = job_timeout_s
        self._resolve_spec = resolve_spec
        self._metrics = metrics
        self._ctx: Any = context or worker_context()
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._queue: collections.deque[str] = collections.deque()
        self._tasks: collections.deque[_Pending] = collections.deque()
        self._running: dict[str, _Running] = {}
        self._starting: set[str] = set()
        self._cancelled: set[str] = set()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self, *, warm_up: bool = True) -> None:
        self._thread = threading.Thread(
            target=self._supervise, name="gpu-optimizer-jobs", daemon=True
        )
        self._thread.start()
        if warm_up:
            threading.Thread(
                target=self._warm_up, name="gpu-optimizer-warm-up", daemon=True
            ).start()

    def stop(self, timeout: float = 2.0) -> None:
        """Kill every worker; jobs still running are left for :meth:`recover` at the next start.

        The supervisor may be blocked starting a process while the forkserver still
        preloads; it is a daemon thread, and a worker it starts late exits by itself
        once this process is gone (see ``worker._exit_with_owner``).
        """
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            for run in list(self._running.values()):
                self._kill(run)
                if run.future is not None and not run.future.done():
                    run.future.set_exception(TaskFailed("the service is shutting down"))
            self._running.clear()

    def recover(self) -> tuple[int, int]:
        """Fail the jobs a previous process left running; queue again the ones it never started."""
        with self._db.session() as session:
            failed = _rowcount(
                session.execute(
                    update(ProfilingJob)
                    .where(ProfilingJob.state == JobState.RUNNING)
                    .values(state=JobState.FAILED, error=RESTART_MESSAGE, finished_at=utcnow())
                )
            )
            queued = session.scalars(
                select(ProfilingJob.id)
                .where(ProfilingJob.state == JobState.QUEUED)
                .order_by(ProfilingJob.created_at)
            ).all()
            session.commit()
        if self._metrics is not None:
            for _ in range(failed or 0):
                self._metrics.entered(JobState.FAILED.value)
        with self._lock:
            self._queue.extend(queued)
        self._wake.set()
        return failed or 0, len(queued)

    # -- API -------------------------------------------------------------------

    def submit(self, request: dict[str, Any]) -> ProfilingJob:
        """Store a queued job for ``request`` (already validated) and queue it."""
        job = ProfilingJob(
            id=uuid.uuid4().hex,
            created_at=utcnow(),
            state=JobState.QUEUED,
            model=request["model"],
            mode=request["mode"],
            request=request,
            progress=0.0,
        )
        with self._db.session() as session:
            session.add(job)
            session.commit()
        if self._metrics is not None:
            self._metrics.entered(JobState.QUEUED.value)
        with self._lock:
            self._queue.append(job.id)
        self._wake.set()
        return job

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job (its worker is killed); False if it had already ended."""
        with self._lock:
            run = self._running.pop(job_id, None)
            if run is not None:
                self._kill(run)
                self._finish(job_id, JobState.CANCELLED, error="cancelled by request", run=run)
                return True
            if job_id in self._starting:
                self._cancelled.add(job_id)
            elif job_id in self._queue:
                self._queue.remove(job_id)
            return self._finish(job_id, JobState.CANCELLED, error="cancelled by request")

    def run_task(
        self, kind: str, request: dict[str, Any], timeout_s: float
    ) -> Future[dict[str, Any]]:
        """Run a one-off task (a plan) in its own worker process; the future holds its result."""
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            self._tasks.append(_Pending(kind, request, timeout_s, future))
        self._wake.set()
        return future

    # -- supervisor ------------------------------------------------------------

    def _warm_up(self) -> None:
        """Start the forkserver (it preloads torch) now rather than at the first job."""
        try:
            process = self._ctx.Process(target=entry.noop, daemon=True)
            process.start()
            process.join()
        except Exception:
            log.exception("could not warm up the worker processes")

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            try:
                self._start_ready()
                self._poll(timeout=0.2)
            except Exception:
                log.exception("job supervisor error; continuing")
                time.sleep(0.5)

    def _start_ready(self) -> None:
        launches: list[_Launch] = []
        with self._lock:
            # Plans get their own ``workers`` slots, so a long job never delays a plan;
            # the startup recommendation is a single background task and takes none.
            waiting: collections.deque[_Pending] = collections.deque()
            plans = self._count("plan")
            while self._tasks:
                pending = self._tasks.popleft()
                if pending.kind == "plan" and plans >= self._workers:
                    waiting.append(pending)
                    continue
                if pending.future.set_running_or_notify_cancel():
                    plans += pending.kind == "plan"
                    launches.append(
                        _Launch(
                            uuid.uuid4().hex,
                            pending.kind,
                            pending.request,
                            pending.timeout_s,
                            pending.future,
                        )
                    )
            self._tasks = waiting
            jobs = self._count("profile")
            while self._queue and jobs < self._workers:
                launch = self._prepare_job(self._queue.popleft())
                if launch is not None:
                    jobs += 1
                    launches.append(launch)
            self._starting.update(launch.key for launch in launches)
        # Outside the lock: starting a process waits for the forkserver, which may
        # still be preloading, and cancel/stop must not wait for that.
        for launch in launches:
            self._launch(launch)

    def _count(self, kind: str) -> int:
        return sum(1 for r in self._running.values() if r.kind == kind)

    def _prepare_job(self, job_id: str) -> _Launch | None:
        with self._db.session() as session:
            job = session.get(ProfilingJob, job_id)
            if job is None or job.state != JobState.QUEUED:
                return None
            request = dict(job.request)
            try:
                request["model"] = self._resolve_spec(request["model"])
            except Exception as exc:
                session.commit()
                self._finish(job_id, JobState.FAILED, error=str(exc))
                return None
            job.state = JobState.RUNNING
            job.started_at = utcnow()
            job.progress = 0.0
            session.commit()
            model, mode = job.model, job.mode
        if self._metrics is not None:
            self._metrics.entered(JobState.RUNNING.value)
        return _Launch(job_id, "profile", request, self._job_timeout_s, None, model, mode)

    def _launch(self, launch: _Launch) -> None:
        address = ray_tasks.ray_address()
        if address and launch.kind == "profile" and launch.request.get("mode") == "measure":
            self._launch_ray(launch, address)
            return
        parent, child = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=entry.child_main,
            args=(child, launch.kind, launch.request),
            name=f"gpu-optimizer-{launch.kind}-{launch.key[:8]}",
            daemon=True,
        )
        now = time.monotonic()
        run = _Running(
            launch.key,
            launch.kind,
            process,
            parent,
            now,
            now + launch.timeout_s,
            launch.timeout_s,
            model=launch.model,
            mode=launch.mode,
            future=launch.future,
        )
        try:
            process.start()
        except Exception as exc:
            parent.close()
            child.close()
            run.outcome = ("error", f"could not start a worker process: {exc}")
        else:
            child.close()
        with self._lock:
            self._starting.discard(run.key)
            if run.key in self._cancelled or self._stopping.is_set():
                # Cancelled (the job row is already final) or shutting down while starting.
                self._cancelled.discard(run.key)
                if run.outcome is None:
                    self._kill(run)
                    parent.close()
                if run.future is not None and not run.future.done():
                    run.future.set_exception(TaskFailed("the service is shutting down"))
            elif run.outcome is not None:
                self._complete(run)
            else:
                self._running[run.key] = run

    def _launch_ray(self, launch: _Launch, address: str) -> None:
        """A measure job as a Ray task on the cluster: same states, timeout and cancel."""
        now = time.monotonic()
        run = _Running(
            launch.key, launch.kind, None, None, now, now + launch.timeout_s, launch.timeout_s,
            model=launch.model, mode=launch.mode, future=launch.future,
        )  # fmt: skip
        try:
            run.ref = ray_tasks.submit(address, launch.request)
        except Exception as exc:
            run.outcome = ("error", f"could not start a Ray task on {address}: {exc}")
        with self._lock:
            self._starting.discard(run.key)
            if run.key in self._cancelled or self._stopping.is_set():
                self._cancelled.discard(run.key)
                self._kill(run)
            elif run.outcome is not None:
                self._complete(run)
            else:
                self._running[run.key] = run

    def _poll_ray(self, run: _Running, now: float) -> None:
        if ray_tasks.ready(run.ref, 0):
            run.outcome = ray_tasks.outcome(run.ref)
        elif now > run.deadline:
            self._kill(run)
            run.outcome = ("timeout", f"exceeded the timeout of {run.timeout_s:g} s")

    def _poll(self, timeout: float) -> None:
        with self._lock:
            runs = list(self._running.values())
        local = [r for r in runs if r.process is not None and r.conn is not None]
        waitables: list[Any] = [r.conn for r in local] + [
            r.process.sentinel for r in local if r.process is not None
        ]
        if waitables:
            wait(waitables, timeout=timeout)
        elif len(local) < len(runs):
            ray_tasks.ready(next(r.ref for r in runs if r.ref is not None), timeout)
        else:
            self._wake.wait(timeout)
        self._wake.clear()
        now = time.monotonic()
        with self._lock:
            for run in list(self._running.values()):
                if run.process is None or run.conn is None:
                    if run.outcome is None:
                        self._poll_ray(run, now)
                    if run.outcome is not None:
                        self._running.pop(run.key, None)
                        self._complete(run)
                    continue
                self._drain(run)
                if run.outcome is None and now > run.deadline:
                    self._kill(run)
                    run.outcome = ("timeout", f"exceeded the timeout of {run.timeout_s:g} s")
                if run.outcome is None and not run.process.is_alive():
                    self._drain(run)
                    if run.outcome is None:
                        run.process.join(1)
                        run.outcome = ("error", describe_exit(run.process.exitcode))
                if run.outcome is not None:
                    self._running.pop(run.key, None)
                    run.process.join(2)
                    if run.process.is_alive():
                        self._kill(run)
                    run.conn.close()
                    self._complete(run)

    def _drain(self, run: _Running) -> None:
        if run.conn is None:
            return
        try:
            while run.outcome is None and run.conn.poll():
                tag, value = run.conn.recv()
                if tag == "progress":
                    run.progress.append(value)
                    if run.kind == "profile":
                        self._set_progress(run.key, value)
                else:
                    run.outcome = (tag, value)
        except (EOFError, OSError):
            pass

    def _complete(self, run: _Running) -> None:
        outcome: tuple[str, Any] = run.outcome or ("error", "no outcome")
        tag, value = outcome
        if run.kind != "profile":
            if run.future is not None and not run.future.done():
                if tag == "result":
                    run.future.set_result(value)
                elif tag == "timeout":
                    run.future.set_exception(TaskTimedOut(value))
                else:
                    run.future.set_exception(TaskFailed(value))
            return
        if tag == "result":
            self._finish(run.key, JobState.SUCCEEDED, result=value, run=run)
        elif tag == "timeout":
            self._finish(run.key, JobState.TIMED_OUT, error=value, run=run)
        else:
            self._finish(run.key, JobState.FAILED, error=value, run=run)

    def _kill(self, run: _Running) -> None:
        if run.ref is not None:
            ray_tasks.cancel(run.ref)
            return
        if run.process is not None and run.process.is_alive():
            run.process.kill()
            run.process.join(5)

    # -- database --------------------------------------------------------------

    def _set_progress(self, job_id: str, progress: float) -> None:
        with self._db.session() as session:
            session.execute(
                update(ProfilingJob)
                .where(ProfilingJob.id == job_id, ProfilingJob.state == JobState.RUNNING)
                .values(progress=max(0.0, min(1.0, progress)))
            )
            session.commit()

    def _finish(
        self,
        job_id: str,
        state: JobState,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        run: _Running | None = None,
    ) -> bool:
        """Move an active job to a terminal state; False if it had already ended."""
        assert state in TERMINAL_STATES
        values: dict[str, Any] = {"state": state, "finished_at": utcnow(), "error": error}
        if result is not None:
            values.update(result=result, progress=1.0)
        with self._db.session() as session:
            changed = _rowcount(
                session.execute(
                    update(ProfilingJob)
                    .where(ProfilingJob.id == job_id, ProfilingJob.state.in_(ACTIVE_STATES))
                    .values(**values)
                )
            )
            session.commit()
        if not changed:
            return False
        if self._metrics is not None:
            if run is not None:
                self._metrics.finished(state.value, time.monotonic() - run.started)
            else:
                self._metrics.entered(state.value)
            if result is not None and run is not None:
                self._metrics.observed_peak(run.model, run.mode, result.get("peak_bytes", 0))
        return True
