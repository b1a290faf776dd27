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
from typing import Any

from sqlalchemy import select, update

from gpu_optimizer.jobs import entry
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
    process: BaseProcess
    conn: Connection
    started: float
    deadline: float
    timeout_s: float
    model: str = ""
    mode: str = ""
    future: Future[dict[str, Any]] | None = None
    outcome: tuple[str, Any] | None = None
    progress: list[float] = field(default_factory=list)


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
        self._ctx = context or worker_context()
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._queue: collections.deque[str] = collections.deque()
        self._tasks: collections.deque[_Pending] = collections.deque()
        self._running: dict[str, _Running] = {}
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self, *, warm_up: bool = True) -> None:
        self._thread = threading.Thread(
            target=self._supervise, args=(warm_up,), name="gpu-optimizer-jobs", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Kill every worker; jobs still running are left for :meth:`recover` at the next start."""
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
            failed = session.execute(
                update(ProfilingJob)
                .where(ProfilingJob.state == JobState.RUNNING)
                .values(state=JobState.FAILED, error=RESTART_MESSAGE, finished_at=utcnow())
            ).rowcount
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
            if job_id in self._queue:
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

    def _supervise(self, warm_up: bool) -> None:
        if warm_up:
            try:
                process = self._ctx.Process(target=entry.noop, daemon=True)
                process.start()
                process.join()
            except Exception:
                log.exception("could not warm up the worker processes")
        while not self._stopping.is_set():
            try:
                self._start_ready()
                self._poll(timeout=0.2)
            except Exception:
                log.exception("job supervisor error; continuing")
                time.sleep(0.5)

    def _start_ready(self) -> None:
        with self._lock:
            while self._tasks:
                pending = self._tasks.popleft()
                if pending.future.set_running_or_notify_cancel():
                    self._launch(
                        uuid.uuid4().hex,
                        pending.kind,
                        pending.request,
                        pending.timeout_s,
                        pending.future,
                    )
            while self._queue and self._job_count() < self._workers:
                job_id = self._queue.popleft()
                self._start_job(job_id)

    def _job_count(self) -> int:
        return sum(1 for r in self._running.values() if r.kind == "profile")

    def _start_job(self, job_id: str) -> None:
        with self._db.session() as session:
            job = session.get(ProfilingJob, job_id)
            if job is None or job.state != JobState.QUEUED:
                return
            request = dict(job.request)
            try:
                request["model"] = self._resolve_spec(request["model"])
            except Exception as exc:
                session.commit()
                self._finish(job_id, JobState.FAILED, error=str(exc))
                return
            job.state = JobState.RUNNING
            job.started_at = utcnow()
            job.progress = 0.0
            session.commit()
        if self._metrics is not None:
            self._metrics.entered(JobState.RUNNING.value)
        run = self._launch(job_id, "profile", request, self._job_timeout_s, None)
        run.model, run.mode = job.model, job.mode

    def _launch(
        self,
        key: str,
        kind: str,
        request: dict[str, Any],
        timeout_s: float,
        future: Future[dict[str, Any]] | None,
    ) -> _Running:
        parent, child = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=entry.child_main,
            args=(child, kind, request),
            name=f"gpu-optimizer-{kind}-{key[:8]}",
            daemon=True,
        )
        now = time.monotonic()
        run = _Running(key, kind, process, parent, now, now + timeout_s, timeout_s, future=future)
        try:
            process.start()
        except Exception as exc:
            parent.close()
            child.close()
            run.outcome = ("error", f"could not start a worker process: {exc}")
            self._complete(run)
            return run
        child.close()
        self._running[key] = run
        return run

    def _poll(self, timeout: float) -> None:
        with self._lock:
            runs = list(self._running.values())
        waitables: list[Any] = [r.conn for r in runs] + [r.process.sentinel for r in runs]
        if waitables:
            wait(waitables, timeout=timeout)
        else:
            self._wake.wait(timeout)
        self._wake.clear()
        now = time.monotonic()
        with self._lock:
            for run in list(self._running.values()):
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
                    run.process.join(5)
                    if run.process.is_alive():
                        self._kill(run)
                    run.conn.close()
                    self._complete(run)

    def _drain(self, run: _Running) -> None:
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
        tag, value = run.outcome or ("error", "no outcome")
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
        if run.process.is_alive():
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
            changed = session.execute(
                update(ProfilingJob)
                .where(ProfilingJob.id == job_id, ProfilingJob.state.in_(ACTIVE_STATES))
                .values(**values)
            ).rowcount
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
