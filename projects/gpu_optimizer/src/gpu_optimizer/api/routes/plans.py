"""Batch-size plans per machine profile, computed by the planner in a worker process."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, status

from gpu_optimizer.api.deps import RunnerDep, SettingsDep
from gpu_optimizer.api.routes.errors import ERROR_RESPONSES, check_model
from gpu_optimizer.api.schemas import ErrorOut, PlanOut, PlanRequest
from gpu_optimizer.jobs.runner import TaskFailed, TaskTimedOut

router = APIRouter(tags=["plans"])

PLAN_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{code: ERROR_RESPONSES[code] for code in (403,)},
    504: {"model": ErrorOut, "description": "planning ran past the plan timeout"},
}


@router.post("/plans", response_model=PlanOut, responses=PLAN_RESPONSES)
async def create_plan(body: PlanRequest, settings: SettingsDep, runner: RunnerDep) -> PlanOut:
    """Largest batch per machine profile: plain, checkpointing, offload, and the plan to use.

    The model runs (on fake tensors) in a worker process, like a profiling job,
    so user code cannot take the service down; this call waits for it.
    """
    spec = await check_model(body.model, settings)
    request = body.model_dump(mode="json")
    future = runner.run_task("plan", {**request, "model": spec}, settings.plan_timeout_s)
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
