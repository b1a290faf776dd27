"""Upload jobs as Ray tasks: the pose service's hand-off to a cluster when AIML_RAY_ADDRESS is set.

The service stays the only writer: it keeps the job row, the session, the reps
and data/jobs/<id>/, exactly as for a job in its own thread pool. What moves to
the cluster is the analysis, :func:`analyze_upload`, a plain Ray task:

- the upload's bytes travel through the object store, so a worker needs no
  shared folder; the task writes them to scratch space on its node;
- the detector model is resolved on the worker, against that machine's own
  models directory (``POSE_MODELS_DIR`` in the environment its node was started
  with, else the repository's ``models/``); a missing model fails the job with
  the node named and how to provision it;
- it returns the Report and the report files' bytes; the service writes them once,
  keyed by job id, so a task Ray ran twice (its worker or node died) is stored once;
- live progress goes to a small actor pinned to the service's node
  (:class:`Progress`): the task sends (frames done, total) about four times a
  second, fire and forget, and the service reads it while it waits on the result.

Why an actor and not a streaming-generator task: the result stays a plain task
return, so Ray's retry of a task whose worker died (``max_retries=1``), the
lineage reconstruction of a lost result and ``ray.cancel`` behave as for every
other task in this repository (``batch``, gpu_optimizer's measure jobs), and a
slow reader of progress never holds back the analysis; a retried generator
would instead skip the progress items of its first attempt by index.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gpu_optimizer.cluster import RAY_ADDRESS_ENV, cluster_address

PROGRESS_EVERY_S = 0.25
_lock = threading.Lock()


class TaskUserError(Exception):
    """What a user did wrong (bad file, unknown model), as the message a job's `error` shows."""


def ray_address() -> str | None:
    """The cluster upload jobs go to, or None (the service's own thread pool) when unset."""
    value = os.environ.get(RAY_ADDRESS_ENV)
    return cluster_address(value) if value else None


class Progress:
    """Per job: the node and process of its current attempt and its frames done / total."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}

    def started(self, job_id: str, node_id: str, pid: int) -> None:
        attempts = int(self.jobs.get(job_id, {}).get("attempts", 0)) + 1
        self.jobs[job_id] = {"node_id": node_id, "pid": pid, "attempts": attempts,
                             "frames_done": 0, "frames_total": None}  # fmt: skip

    def frames(self, job_id: str, pid: int, done: int, total: int | None) -> None:
        entry = self.jobs.get(job_id)
        if entry is not None and entry["pid"] == pid:  # a stale attempt does not count
            entry["frames_done"], entry["frames_total"] = done, total

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.jobs.get(job_id)

    def forget(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)


def worker_models_dir() -> Path:
    """The models directory of the machine the task runs on (its node's environment)."""
    from pose_analyzer.settings import Settings

    return Settings().models_dir


def analyze_upload(spec: dict[str, Any], data: bytes, progress: Any) -> dict[str, Any]:
    """Runs in a Ray worker: analyse one upload in scratch space, return the Report and files."""
    import ray

    from pose_analyzer.jobs import analyze_upload_file
    from pose_analyzer.recordings import USER_ERRORS
    from pose_analyzer.streams.manager import StreamRequestError, check_model

    job_id = spec["job_id"]
    node_id = ray.get_runtime_context().get_node_id()
    pid = os.getpid()
    progress.started.remote(job_id, node_id, pid)
    state: dict[str, Any] = {"done": 0, "total": None, "sent": 0.0}

    def on_total(total: int | None) -> None:
        state["total"] = total
        progress.frames.remote(job_id, pid, 0, total)

    def on_frame(frame: Any) -> None:
        state["done"] = frame.index + 1
        now = time.monotonic()
        # Throttled, and once when the last frame is in (the analysis proper follows:
        # for a keypoint file nearly all of the time, for a video the detection is).
        if now - float(state["sent"]) >= PROGRESS_EVERY_S or state["done"] == state["total"]:
            state["sent"] = now
            progress.frames.remote(job_id, pid, state["done"], state["total"])

    models_dir = worker_models_dir()
    user_errors: tuple[type[BaseException], ...] = (*USER_ERRORS, StreamRequestError)
    backend, model = spec["backend"], spec["model"]
    try:
        if backend != "replay":
            check_model(backend, model, models_dir)
        with tempfile.TemporaryDirectory(prefix="pose-job-") as scratch:
            # Named as the user named it, so an error about the file names their file.
            name = Path(spec["filename"]).name
            if not name.lower().endswith(spec["suffix"].lower()):
                name = f"upload{spec['suffix']}"
            source = Path(scratch) / name
            source.write_bytes(data)
            out = Path(scratch) / "out"
            report = analyze_upload_file(
                source,
                spec["filename"],
                spec["exercise"],
                backend,
                model,
                models_dir,
                out,
                on_frame=on_frame,
                on_total=on_total,
            )
            files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
    except user_errors as exc:
        where = f" (models directory {models_dir} on Ray node {node_id[:12]})"
        message = str(exc)
        if backend != "replay" and isinstance(exc, (FileNotFoundError, StreamRequestError)):
            message += where
        raise TaskUserError(message) from None
    progress.frames.remote(job_id, pid, state["done"], state["total"])
    return {
        "report": report,
        "files": files,
        "node_id": node_id,
        "pid": pid,
        "frames_done": state["done"],
        "frames_total": state["total"],
    }


class RayJobs:
    """The service's side: one connection, one progress actor, a task per job."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._actor: Any = None

    def _ready(self) -> Any:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from gpu_optimizer.cluster import connect

        with _lock:
            if not ray.is_initialized():
                connect(self.address)
            if self._actor is None:
                here = ray.get_runtime_context().get_node_id()
                self._actor = (
                    ray.remote(num_cpus=0)(Progress)
                    .options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True))
                    .remote()
                )
        return self._actor

    def put(self, data: bytes) -> Any:
        import ray

        self._ready()
        return ray.put(data)

    def submit(self, spec: dict[str, Any], data_ref: Any) -> Any:
        import ray

        actor = self._ready()
        gpus = 0
        if spec["backend"] == "yolo" and ray.cluster_resources().get("GPU", 0) >= 1:
            gpus = 1
        remote: Any = ray.remote(analyze_upload)
        return remote.options(
            num_cpus=1, num_gpus=gpus, max_retries=1, retry_exceptions=False
        ).remote(spec, data_ref, actor)

    def progress(self, job_id: str) -> dict[str, Any] | None:
        import ray

        try:
            value: dict[str, Any] | None = ray.get(self._ready().get.remote(job_id), timeout=5)
            return value
        except (ray.exceptions.RayError, TimeoutError):
            return None

    def forget(self, job_id: str) -> None:
        if self._actor is not None:
            self._actor.forget.remote(job_id)
