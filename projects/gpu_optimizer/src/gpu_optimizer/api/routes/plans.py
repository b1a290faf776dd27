"""Batch-size plans per machine profile, computed by the planner in a worker process."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from gpu_optimizer.api.deps import RunnerDep, SessionDep, SettingsDep
from gpu_optimizer.api.routes.errors import ERROR_RESPONSES, check_model
from gpu_optimizer.api.schemas import ErrorOut, PlanOut, PlanRequest
from gpu_optimizer.jobs.runner import TaskFailed, TaskTimedOut
from gpu_optimizer.storage import MeasuredPeak

router = APIRouter(tags=["plans"])

PLAN_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{code: ERROR_RESPONSES[code] for code in (403,)},
    504: {"model": ErrorOut, "description": "planning ran past the plan timeout"},
}


def _measurements(session: Session) -> list[dict[str, Any]]:
    """measure-fleet's stored peaks, as plain values for the planning worker."""
    return [
        row.to_dict()
        for row in session.scalars(select(MeasuredPeak).order_by(MeasuredPeak.measured_at))
    ]


@router.post("/plans", response_model=PlanOut, responses=PLAN_RESPONSES)
async def create_plan(
    body: PlanRequest, settings: SettingsDep, runner: RunnerDep, session: SessionDep
) -> PlanOut:
    """Largest batch per machine profile: plain, checkpointing, offload, and the plan to use.

    The model runs (on fake tensors) in a worker process, like a profiling job,
    so user code cannot take the service down; this call waits for it.
    """
    spec = await check_model(body.model, settings)
    request = body.model_dump(mode="json")
    measurements = await run_in_threadpool(_measurements, session)
    task = {**request, "model": spec, "measurements": measurements}
    future = runner.run_task("plan", task, settings.plan_timeout_s)
    try:
        result = await asyncio.wrap_future(future)
    except TaskTimedOut as exc:
        raise HTTPException(
            status.HTTP_504_GATEWAY_TIMEOUT, f"planning {body.model!r}: {exc}"
        ) from None
    except TaskFailed as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"planning {body.model!r} failed: {exc}"
        ) from None
    return PlanOut(**request, machines=result["machines"])
