"""Offline analysis of uploaded videos as background jobs with progress.

A job runs on a worker thread: decode -> detect -> track -> analyze, then
writes report.json and angles.csv into data/jobs/<id>/ and stores the session
and its reps in the database like a live stream's.
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

from pose_analyzer.analysis import analyze_frames
from pose_analyzer.exercises.schema import Exercise
from pose_analyzer.keypoints import FramePoses
from pose_analyzer.metrics import PoseMetrics
from pose_analyzer.storage import Database
from pose_analyzer.tracking import Tracker
from pose_analyzer.video import VideoError, open_video

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
        from pose_analyzer.detectors import create_detector

        job.state = JobState.RUNNING
        detector = None
        try:
            video = open_video(job.input)
            job.frames_total = video.frame_count
            kw: dict[str, Any] = {"mode": "video", "models_dir": self.models_dir}
            detector = create_detector(
                job.backend, job.model, **(kw if job.backend == "mediapipe" else {})
            )
            self.db.start_session(
                job.id,
                kind="upload",
                source=job.filename,
                exercise=job.exercise.name,
                backend=job.backend,
            )

            def frames() -> Any:
                for index, t, image in video:
                    people = detector.detect([image], [t])[0]
                    yield FramePoses(index, t, video.width, video.height, people)

            def on_frame(frame: FramePoses) -> None:
                job.frames_done = frame.index + 1
                if job.frames_total:
                    job.progress = min(job.frames_done / job.frames_total, 0.99)

            report = analyze_frames(
                frames(),
                job.exercise,
                video.fps,
                input=job.filename,
                backend=job.backend,
                tracker=Tracker(),
                on_frame=on_frame,
            )
            job.out_dir.mkdir(parents=True, exist_ok=True)
            report.write_json(job.out_dir / "report.json")
            report.write_csv(job.out_dir / "angles.csv")
            for person in report.people:
                for rep in person.reps:
                    self.db.add_rep(job.id, person.id, rep.to_dict(), job.frames_done)
                for anomaly in person.anomalies:
                    self.db.add_anomaly(job.id, person.id, anomaly.rep_index, anomaly.reason)
            self.db.end_session(job.id, status="ended", frames=job.frames_done)
            job.report = report.to_dict()
            job.progress = 1.0
            job.state = JobState.SUCCEEDED
        except VideoError as exc:
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
            if detector is not None:
                detector.close()
            job.finished_at = time.time()
            self.metrics.jobs.labels(job.state.value).inc()
