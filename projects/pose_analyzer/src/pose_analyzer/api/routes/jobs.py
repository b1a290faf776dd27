"""Uploaded videos analysed as background jobs: submit, follow, list, cancel."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, Response, UploadFile

from gpu_optimizer.storage.guard import StorageUnavailable
from pose_analyzer.api.deps import CatalogDep, JobsDep, SettingsDep
from pose_analyzer.api.errors import responses
from pose_analyzer.api.schemas import JobInfo, JobState
from pose_analyzer.streams.manager import StreamRequestError, check_model
from pose_analyzer.streams.sources import KEYPOINT_SUFFIXES, VIDEO_SUFFIXES

router = APIRouter(tags=["jobs"])
UploadBackend = Literal["mediapipe", "yolo", "replay"]


@router.post(
    "/analyze",
    status_code=202,
    response_model=JobInfo,
    responses=responses(400, 413, 415, 422),
)
async def analyze(
    jobs: JobsDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    response: Response,
    file: Annotated[UploadFile, File(description="a video file or a keypoint file (.jsonl)")],
    exercise: Annotated[str, Form(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")],
    backend: Annotated[UploadBackend | None, Form()] = None,
    model: Annotated[str | None, Form(max_length=512)] = None,
) -> dict[str, Any]:
    """Store the upload and queue its analysis; poll the job's `url` for progress and report.

    Without a backend, a keypoint file is replayed and a video goes to the service's
    default backend (and, for MediaPipe, its default model)."""
    definition = catalog.get(exercise)
    if model is not None and "\x00" in model:
        raise StreamRequestError("model must not contain NUL bytes")
    name = Path(file.filename or "upload").name[:255]
    suffix = Path(name).suffix.lower()
    keypoints = suffix in KEYPOINT_SUFFIXES
    if suffix not in VIDEO_SUFFIXES and not keypoints:
        raise HTTPException(
            415,
            f"unsupported file {name!r}; upload a video ({', '.join(VIDEO_SUFFIXES)}) "
            f"or a keypoint file ({', '.join(KEYPOINT_SUFFIXES)})",
        )
    chosen: str = backend or ("replay" if keypoints else settings.default_backend)
    if (chosen == "replay") != keypoints:
        raise HTTPException(
            422, f"the replay backend reads keypoint files and only those; got {name!r}"
        )
    if model is None and chosen == "mediapipe":
        model = settings.default_model
    if chosen != "replay" and jobs.ray_address is None:
        # On a cluster the worker checks the model against its own models directory.
        await asyncio.to_thread(check_model, chosen, model, settings.models_dir)
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    dest = settings.uploads_dir / f"{uuid.uuid4().hex[:12]}{suffix}"
    try:
        size = await asyncio.to_thread(_save_upload, file, dest, settings.max_upload_bytes)
    except OSError as exc:
        dest.unlink(missing_ok=True)
        raise StorageUnavailable(f"the upload cannot be stored: {exc.strerror}") from None
    if size is None:
        raise HTTPException(
            413,
            f"upload larger than {settings.max_upload_bytes} bytes (POSE_MAX_UPLOAD_BYTES)",
        )
    if size == 0:
        dest.unlink(missing_ok=True)
        raise HTTPException(400, f"{name} is empty (0 bytes)")
    try:
        job = await asyncio.to_thread(jobs.submit, dest, name, definition, chosen, model)
    except Exception:
        dest.unlink(missing_ok=True)
        raise
    response.headers["Location"] = job["url"]
    return job


@router.get("/jobs", response_model=list[JobInfo])
async def list_jobs(
    jobs: JobsDep,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Jobs, newest first; reports only in GET /jobs/{id}."""
    return await asyncio.to_thread(jobs.list, limit, state)


@router.get("/jobs/{job_id}", response_model=JobInfo, responses=responses(404))
async def get_job(job_id: str, jobs: JobsDep) -> dict[str, Any]:
    job = await asyncio.to_thread(jobs.describe_id, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id[:64]!r}")
    return job


@router.delete("/jobs/{job_id}", response_model=JobInfo, responses=responses(404, 409))
async def cancel_job(job_id: str, jobs: JobsDep) -> dict[str, Any]:
    """Cancel a queued or running job (its upload is deleted); 409 if it already ended."""
    job = await asyncio.to_thread(jobs.describe_id, job_id, False)
    if job is None:
        raise HTTPException(404, f"no job {job_id[:64]!r}")
    if not await asyncio.to_thread(jobs.cancel, job_id):
        raise HTTPException(409, f"job {job_id!r} already ended: {job['state']}")
    return await asyncio.to_thread(jobs.describe_id, job_id, False) or job


def _save_upload(file: UploadFile, dest: Path, limit: int) -> int | None:
    """Copy the upload to dest; None (and nothing kept) when it exceeds `limit` bytes."""
    size = 0
    with dest.open("wb") as out:
        while chunk := file.file.read(1 << 20):
            size += len(chunk)
            if size > limit:
                break
            out.write(chunk)
    if size > limit:
        dest.unlink(missing_ok=True)
        return None
    return size
