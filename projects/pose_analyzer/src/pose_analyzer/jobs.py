"""Offline analysis of uploaded videos as background jobs with progress.

A job runs on a worker thread through the same driver as `pose-analyzer
analyze` (recordings.py, the engine's offline entry), writes report.json,
angles.csv and angles.png into data/jobs/<id>/, and stores the session and
its reps in the database like a live stream's.
"""

from __future__ import annotations

import enum
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
from pose_analyzer.storage import Database

log = logging.getLogger(__name__)


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class Job:
    id: str
    input: Path
    filename: str
    exercise: Exercise
    backend: str
    model: str | None
    out_dir: Path
    state: JobState = JobState.QUEUED
    progress: float = 0.0
    frames_done: int = 0
    frames_total: int | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    report: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "filename": self.filename,
            "exercise": self.exercise.name,
            "backend": self.backend,
            "model": self.model,
            "state": self.state.value,
            "progress": round(self.progress, 4),
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
            "error": self.error,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "session_id": self.id,
            "report": self.report,
        }


class JobRunner:
    def __init__(
        self, db: Database, metrics: PoseMetrics, jobs_dir: Path, models_dir: Path, workers: int = 1
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.jobs_dir = jobs_dir
        self.models_dir = models_dir
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="analysis-job")

    def submit(
        self, input: Path, filename: str, exercise: Exercise, backend: str, model: str | None
    ) -> Job:
        job_id = uuid.uuid4().hex[:12]
        job = Job(
            id=job_id,
            input=input,
            filename=filename,
            exercise=exercise,
            backend=backend,
            model=model,
            out_dir=self.jobs_dir / job_id,
        )
        with self._lock:
            self.jobs[job_id] = job
        self._pool.submit(self._run, job)
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def list(self) -> list[dict[str, Any]]:
        return [j.describe() | {"report": None} for j in self.jobs.values()]

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, job: Job) -> None:
        job.state = JobState.RUNNING
        try:
            self.db.start_session(
                job.id,
                kind="upload",
                source=job.filename,
                exercise=job.exercise.name,
                backend=job.backend,
            )
            report = self._analyze(job)
            for person in report.people:
                for rep in person.reps:
                    self.db.add_rep(job.id, person.id, rep.to_dict(), job.frames_done)
                for anomaly in person.anomalies:
                    self.db.add_anomaly(job.id, person.id, anomaly.rep_index, anomaly.reason)
            self.db.end_session(job.id, status="ended", frames=job.frames_done)
            job.report = report.to_dict()
            job.progress = 1.0
            job.state = JobState.SUCCEEDED
        except USER_ERRORS as exc:
            job.error = str(exc)
            job.state = JobState.FAILED
        except Exception as exc:  # the job fails, the service goes on
            log.exception("analysis job %s failed", job.id)
            job.error = f"{type(exc).__name__}: {exc}"
            job.state = JobState.FAILED
        finally:
            if job.state is JobState.FAILED:
                try:
                    self.db.end_session(
                        job.id, status="failed", frames=job.frames_done, error=job.error
                    )
                except Exception:
                    log.debug("no session to close for job %s", job.id)
            job.finished_at = time.time()
            self.metrics.jobs.labels(job.state.value).inc()

    def _analyze(self, job: Job) -> Report:
        """The analysis part of a job: the same driver as `pose-analyzer analyze`."""

        def on_total(total: int | None) -> None:
            job.frames_total = total

        def on_frame(frame: FramePoses) -> None:
            job.frames_done += 1
            if job.frames_total:
                job.progress = min(job.frames_done / job.frames_total, 0.99)

        options: dict[str, Any] = (
            {"mode": "video", "models_dir": self.models_dir} if job.backend == "mediapipe" else {}
        )
        if job.backend != "replay":
            options["refine"] = True  # as the CLI does offline (recordings.run_analysis)
        analysis, _, _ = analyze_input(
            job.input,
            job.exercise,
            backend=job.backend,
            model=job.model,
            detector_options=options,
            progress=False,
            on_frame=on_frame,
            on_total=on_total,
        )
        report = analysis.report
        report.input = job.filename
        write_outputs(report, job.exercise, job.out_dir)
        return report
