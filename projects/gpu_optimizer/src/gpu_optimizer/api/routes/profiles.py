"""Profiling jobs: queue one, follow it, list them, cancel one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from gpu_optimizer.api.deps import RunnerDep, SessionDep, SettingsDep
from gpu_optimizer.api.routes.errors import ERROR_RESPONSES, check_batch_size, check_model
from gpu_optimizer.api.schemas import JobCreated, JobOut, JobSummary, ProfileRequest
from gpu_optimizer.jobs import ray_tasks
from gpu_optimizer.nvml import default_reader
from gpu_optimizer.storage import JobState, ProfilingJob

router = APIRouter(prefix="/profiles", tags=["profiles"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobCreated,
    responses=ERROR_RESPONSES,
)
async def create_profile(
    body: ProfileRequest, settings: SettingsDep, runner: RunnerDep, response: Response
) -> JobCreated:
    """Queue a profiling job for a worker process; poll GET /profiles/{id} for its result."""
    check_batch_size(body.batch_size, settings.max_batch_size)
    await check_model(body.model, settings)
    if body.mode == "measure" and body.device == "cuda" and ray_tasks.ray_address() is None:
        # With a Ray cluster the job goes to a node that has a GPU, not to this machine.
        has_gpu = await run_in_threadpool(lambda: bool(default_reader().read(max_age_s=5.0)))
        if not has_gpu:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "device 'cuda': this machine has no NVIDIA GPU; "
                "use mode 'estimate' or device 'cpu'",
            )
    job = await run_in_threadpool(runner.submit, body.model_dump(mode="json"))
    url = f"/profiles/{job.id}"
    response.headers["Location"] = url
    return JobCreated(id=job.id, state=job.state, url=url)


@router.get("", response_model=list[JobSummary])
def list_profiles(
    session: SessionDep,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobSummary]:
    """Jobs, newest first; results only in GET /profiles/{id}."""
    query = select(ProfilingJob).order_by(ProfilingJob.created_at.desc()).limit(limit)
    if state is not None:
        query = query.where(ProfilingJob.state == state)
    return [JobSummary.from_row(job) for job in session.scalars(query)]


def _job_or_404(session: SessionDep, job_id: str) -> ProfilingJob:
    job = session.get(ProfilingJob, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"profiling job {job_id!r} not found")
    return job


@router.get("/{job_id}", response_model=JobOut, responses=ERROR_RESPONSES)
def get_profile(job_id: str, session: SessionDep) -> JobOut:
    return JobOut.from_row(_job_or_404(session, job_id))


@router.delete("/{job_id}", response_model=JobOut, responses=ERROR_RESPONSES)
def cancel_profile(job_id: str, session: SessionDep, runner: RunnerDep) -> JobOut:
    """Cancel a queued or running job (its worker process is killed); 409 if it already ended."""
    job = _job_or_404(session, job_id)
    if not runner.cancel(job_id):
        session.refresh(job)
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"profiling job {job_id!r} already ended: {job.state.value}"
        )
    session.refresh(job)
    return JobOut.from_row(job)
