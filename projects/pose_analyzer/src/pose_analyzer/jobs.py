"""Offline analysis of uploaded videos as persisted, cancellable background jobs.

A job is a row in the database from the moment it is accepted (the same job
model as gpu_optimizer's profiling jobs: queued -> running -> succeeded |
failed | cancelled, UTC timestamps), so it survives a restart: jobs a dead
process left queued or running are analysed again from their stored upload.
The analysis itself, from opening the video to a Report, is ``_analyze``; the
rest is bookkeeping: progress (in memory while running, written to the row
about once a second), report.json and angles.csv in data/jobs/<id>/, the
session and its reps in the database like a live stream's, and deleting the
upload when the job ends (after ``upload_retention_s``). The analysis goes
through the same driver as `pose-analyzer analyze` (recordings.py, the
engine's offline entry).

With a Ray address (``AIML_RAY_ADDRESS``) the analysis runs as a Ray task on
the cluster instead of in this process (ray_jobs.py); everything else here,
the states, cancellation, the timeout, the row, the session and the files, is
the same code for both.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pose_analyzer.exercises.schema import Exercise
from pose_analyzer.keypoints import FramePoses
from pose_analyzer.metrics import PoseMetrics
from pose_analyzer.recordings import USER_ERRORS, analyze_input, write_outputs
from pose_analyzer.report import Report
from pose_analyzer.storage import Database, JobRow
from pose_analyzer.storage.models import utcnow
from pose_analyzer.streams.memory import release_memory

log = logging.getLogger(__name__)

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
PROGRESS_WRITE_S = 1.0
RAY_POLL_S = 0.25
# Threads that wait on Ray tasks (they only wait: the cluster queues and runs the work).
RAY_JOB_THREADS = 32


class JobCancelled(Exception):
    pass


class JobFailed(Exception):
    """The job failed for a reason its message says (a task's user error, a timeout)."""


# A job ending on one of these fails with the exception's message as its reason.
_FAILURES: tuple[type[BaseException], ...] = (*USER_ERRORS, JobFailed)


@dataclass
class _Active:
    """What only the running process knows about a job: its live progress and cancel flag."""

    id: str
    input: Path
    filename: str
    exercise: Exercise
    backend: str
    model: str | None
    out_dir: Path
    frames_done: int = 0
    frames_total: int | None = None
    progress: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event)
    last_write: float = 0.0
    started: float | None = None  # monotonic, when the analysis began (the timeout's start)
    node_id: str | None = None  # the Ray node running it (Ray jobs only)


class JobRunner:
    def __init__(
        self,
        db: Database,
        metrics: PoseMetrics,
        jobs_dir: Path,
        models_dir: Path,
        workers: int = 1,
        upload_retention_s: float = 0.0,
        exercises: Any = None,
        ray_address: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.jobs_dir = jobs_dir
        self.models_dir = models_dir
        self.upload_retention_s = upload_retention_s
        self._exercises = exercises  # an ExerciseCatalog, for jobs recovered at start
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self.timeout_s = timeout_s or None
        self.ray_address = ray_address or None
        self._ray: Any = None
        if ray_address:
            from pose_analyzer.ray_jobs import RayJobs

            self._ray = RayJobs(ray_address)
            workers = max(workers, RAY_JOB_THREADS)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="analysis-job")

    # -- API ----------------------------------------------------------------------------

    def submit(
        self, input: Path, filename: str, exercise: Exercise, backend: str, model: str | None
    ) -> dict[str, Any]:
        job_id = uuid.uuid4().hex[:12]
        self.db.add_job(
            JobRow(
                id=job_id,
                state="queued",
                filename=filename,
                exercise=exercise.name,
                backend=backend,
                model=model,
                input_path=str(input),
                progress=0.0,
                frames_done=0,
                created_at=utcnow(),
            )
        )
        self.metrics.jobs.labels("queued").inc()
        self._queue(_Active(job_id, input, filename, exercise, backend, model, self._out(job_id)))
        return self.describe_id(job_id) or {}

    def recover(self) -> tuple[int, int]:
        """Queue again the jobs a previous process left active; fail those it cannot redo."""
        requeued = failed = 0
        for row in self.db.active_jobs():
            upload = Path(row.input_path) if row.input_path else None
            exercise = None
            if self._exercises is not None:
                try:
                    exercise = self._exercises.get(row.exercise)
                except Exception as exc:
                    log.warning("job %s: exercise %s unavailable: %s", row.id, row.exercise, exc)
            if upload is None or not upload.is_file() or exercise is None:
                self.db.finish_job(row.id, "failed", error="interrupted by a service restart")
                failed += 1
                continue
            self.db.update_job(row.id, state="queued", progress=0.0, frames_done=0)
            self._queue(
                _Active(
                    row.id,
                    upload,
                    row.filename,
                    exercise,
                    row.backend,
                    row.model,
                    self._out(row.id),
                )
            )
            requeued += 1
        self.sweep_uploads()
        return requeued, failed

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when it had already ended."""
        with self._lock:
            active = self._active.get(job_id)
        if active is not None:
            active.cancel.set()
        ended = self.db.finish_job(job_id, "cancelled", error="cancelled by request")
        if ended:
            self.metrics.jobs.labels("cancelled").inc()
            if active is None:
                self._drop_upload(job_id)
        return ended

    def describe_id(self, job_id: str, with_report: bool = True) -> dict[str, Any] | None:
        row = self.db.get_job(job_id)
        return None if row is None else self.describe(row, with_report)

    def list(self, limit: int = 100, state: str | None = None) -> list[dict[str, Any]]:
        return [self.describe(r, with_report=False) for r in self.db.list_jobs(limit, state)]

    def describe(self, row: JobRow, with_report: bool = True) -> dict[str, Any]:
        with self._lock:
            active = self._active.get(row.id)
        running = active is not None and row.state == "running"
        report = None
        if with_report and row.state == "succeeded":
            path = self._out(row.id) / "report.json"
            try:
                report = json.loads(path.read_text())
            except (OSError, ValueError):
                report = None
        return {
            "id": row.id,
            "url": f"/jobs/{row.id}",
            "state": row.state,
            "filename": row.filename,
            "exercise": row.exercise,
            "backend": row.backend,
            "model": row.model,
            "progress": round(active.progress if running and active else row.progress, 4),
            "frames_done": active.frames_done if running and active else row.frames_done,
            "frames_total": active.frames_total if running and active else row.frames_total,
            "node_id": active.node_id if running and active else None,
            "error": row.error,
            "created_at": _utc(row.created_at),
            "started_at": _utc(row.started_at),
            "finished_at": _utc(row.finished_at),
            "session_id": row.id,
            "report": report,
        }

    def shutdown(self) -> None:
        with self._lock:
            for active in self._active.values():
                active.cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def sweep_uploads(self) -> None:
        """Delete the uploads of ended jobs older than the retention."""
        before = utcnow() - dt.timedelta(seconds=self.upload_retention_s)
        try:
            rows = self.db.expired_uploads(before)
        except Exception as exc:
            log.warning("upload sweep skipped: %s", exc)
            return
        for row in rows:
            self._drop_upload(row.id, row.input_path)

    # -- machinery ----------------------------------------------------------------------

    def _out(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def _queue(self, active: _Active) -> None:
        with self._lock:
            self._active[active.id] = active
        self._pool.submit(self._run, active)

    def _drop_upload(self, job_id: str, path: str | None = None) -> None:
        if path is None:
            row = self.db.get_job(job_id)
            path = row.input_path if row is not None else None
        if path:
            Path(path).unlink(missing_ok=True)
        self.db.update_job(job_id, input_path=None)

    def _run(self, job: _Active) -> None:
        state, error = "failed", None
        try:
            if job.cancel.is_set():
                raise JobCancelled
            if self._ray is None:  # a Ray job is running once its task has started
                self.db.update_job(job.id, state="running", started_at=utcnow())
            # A job analysed again after a restart starts its session afresh.
            self.db.delete_session(job.id)
            self.db.start_session(
                job.id,
                kind="upload",
                source=job.filename,
                exercise=job.exercise.name,
                backend=job.backend,
            )
            report = self._analyze_on_ray(job) if self._ray is not None else self._analyze(job)
            for person in report.people:
                for rep in person.reps:
                    self.db.add_rep(job.id, person.id, rep.to_dict(), job.frames_done)
                for anomaly in person.anomalies:
                    self.db.add_anomaly(job.id, person.id, anomaly.rep_index, anomaly.reason)
            self.db.end_session(job.id, status="ended", frames=job.frames_done)
            state = "succeeded"
        except JobCancelled:
            state, error = "cancelled", "cancelled by request"
        except _FAILURES as exc:
            error = str(exc)
        except Exception as exc:  # the job fails, the service goes on
            log.exception("analysis job %s failed", job.id)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self._close(job, state, error)

    def _close(self, job: _Active, state: str, error: str | None) -> None:
        try:
            if state != "succeeded":
                self.db.end_session(
                    job.id,
                    status="failed" if state == "failed" else "ended",
                    frames=job.frames_done,
                    error=error,
                )
            values: dict[str, Any] = {
                "frames_done": job.frames_done,
                "frames_total": job.frames_total,
                "error": error,
            }
            if state == "succeeded":
                values["progress"] = 1.0
            if self.db.finish_job(job.id, state, **values):
                self.metrics.jobs.labels(state).inc()
            else:  # cancelled by request meanwhile: keep how far it got
                self.db.update_job(
                    job.id, frames_done=job.frames_done, frames_total=job.frames_total
                )
            if self.upload_retention_s <= 0:
                self._drop_upload(job.id, str(job.input))
            else:
                self.sweep_uploads()
        except Exception:
            # Storage trouble: the row stays active and the next start analyses it again.
            log.exception("analysis job %s: could not record its end", job.id)
        finally:
            with self._lock:
                self._active.pop(job.id, None)
            if self._ray is not None:
                self._ray.forget(job.id)
            release_memory()

    def _on_frame(self, job: _Active, frame: FramePoses) -> None:
        if job.cancel.is_set():
            raise JobCancelled
        self._check_timeout(job)
        self._progress(job, frame.index + 1, job.frames_total)

    def _check_timeout(self, job: _Active) -> None:
        started, limit = job.started, self.timeout_s
        if limit is not None and started is not None and time.monotonic() - started > limit:
            raise JobFailed(f"timed out after {limit:g} s (POSE_JOB_TIMEOUT_S)")

    def _progress(self, job: _Active, done: int, total: int | None) -> None:
        job.frames_done, job.frames_total = done, total
        if job.frames_total:
            job.progress = min(job.frames_done / job.frames_total, 0.99)
        now = time.monotonic()
        if now - job.last_write >= PROGRESS_WRITE_S:
            job.last_write = now
            try:
                self.db.update_job(
                    job.id,
                    progress=round(job.progress, 4),
                    frames_done=job.frames_done,
                    frames_total=job.frames_total,
                )
            except Exception as exc:
                log.warning("job %s: progress not stored: %s", job.id, exc)

    def _analyze(self, job: _Active) -> Report:
        """The analysis of one upload in this process."""

        def on_total(total: int | None) -> None:
            job.frames_total = total

        job.started = time.monotonic()
        return analyze_upload_file(
            job.input,
            job.filename,
            job.exercise,
            job.backend,
            job.model,
            self.models_dir,
            job.out_dir,
            on_frame=lambda frame: self._on_frame(job, frame),
            on_total=on_total,
        )

    def _analyze_on_ray(self, job: _Active) -> Report:
        """The analysis of one upload as a Ray task (ray_jobs.py); its files written here.

        Ray retries a task whose worker or node died once (``max_retries=1``); a result
        lost with its node before it was fetched is submitted once more from here.
        Whatever ran, only the result fetched here is stored, once, under the job's id.
        """
        import ray

        ray_jobs = self._ray
        spec = {
            "job_id": job.id,
            "filename": job.filename,
            "suffix": job.input.suffix,
            "exercise": job.exercise,
            "backend": job.backend,
            "model": job.model,
        }
        try:
            data = ray_jobs.put(job.input.read_bytes())
        except OSError as exc:
            raise JobFailed(f"the upload cannot be read: {exc.strerror}") from None
        lost = (
            ray.exceptions.ObjectLostError,
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
        )
        for resubmit in (False, True):
            ref = ray_jobs.submit(spec, data)
            try:
                result = self._wait_ray(job, ref)
                break
            except ray.exceptions.TaskCancelledError:
                raise JobCancelled from None
            except lost as exc:
                if resubmit:
                    raise JobFailed(f"the Ray task was lost twice: {_first_line(exc)}") from None
                log.warning("job %s: Ray task lost (%s); submitting it again", job.id, exc)
            except ray.exceptions.RayTaskError as exc:
                from pose_analyzer.ray_jobs import TaskUserError

                cause = getattr(exc, "cause", None)
                if isinstance(cause, TaskUserError):
                    raise JobFailed(str(cause)) from None
                if cause is not None:
                    log.error("job %s failed on Ray: %s", job.id, exc)
                    raise JobFailed(f"{type(cause).__name__}: {_first_line(cause)}") from None
                raise JobFailed(_first_line(exc)) from None
        self._progress(job, int(result["frames_done"]), result["frames_total"])
        job.out_dir.mkdir(parents=True, exist_ok=True)
        for name, content in result["files"].items():
            (job.out_dir / Path(name).name).write_bytes(content)
        report: Report = result["report"]
        return report

    def _wait_ray(self, job: _Active, ref: Any) -> dict[str, Any]:
        import ray

        pid = None
        while True:
            done, _ = ray.wait([ref], num_returns=1, timeout=RAY_POLL_S)
            seen = self._ray.progress(job.id)
            if seen is not None:
                if seen["pid"] != pid:  # an attempt started: the timeout counts from here
                    if pid is None and not job.cancel.is_set():
                        self.db.update_job(job.id, state="running", started_at=utcnow())
                    pid, job.started, job.node_id = seen["pid"], time.monotonic(), seen["node_id"]
                self._progress(job, int(seen["frames_done"]), seen["frames_total"])
            if done:
                value: dict[str, Any] = ray.get(ref)
                return value
            try:
                if job.cancel.is_set():
                    raise JobCancelled
                self._check_timeout(job)
            except BaseException:
                ray.cancel(ref, force=True)
                raise


def analyze_upload_file(
    input: Path,
    filename: str,
    exercise: Exercise,
    backend: str,
    model: str | None,
    models_dir: Path,
    out_dir: Path,
    *,
    on_frame: Any = None,
    on_total: Any = None,
) -> Report:
    """The analysis of one upload: the same driver as `pose-analyzer analyze`
    (recordings.py), the upload in, a Report and its files out. Local jobs and
    Ray tasks (ray_jobs.py) both run this."""
    options: dict[str, Any] = (
        {"mode": "video", "models_dir": models_dir} if backend == "mediapipe" else {}
    )
    if backend != "replay":
        options["refine"] = True  # as the CLI does offline (recordings.run_analysis)
    analysis, _, _ = analyze_input(
        input,
        exercise,
        backend=backend,
        model=model,
        detector_options=options,
        progress=False,
        on_frame=on_frame,
        on_total=on_total,
    )
    report = analysis.report
    report.input = filename
    write_outputs(report, exercise, out_dir)
    return report


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite keeps no time zone; every timestamp stored here is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value
