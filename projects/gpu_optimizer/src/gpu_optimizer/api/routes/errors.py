"""Request checks shared by the routes: each failure is a 4xx naming the field and the value."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, status
from fastapi.concurrency import run_in_threadpool

from gpu_optimizer.api.schemas import ErrorOut
from gpu_optimizer.jobs.specs import SpecError, UserCodeRefused, validate_model
from gpu_optimizer.settings import Settings

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {
        "model": ErrorOut,
        "description": "the model spec runs user code from outside the allowed directory",
    },
    404: {"model": ErrorOut, "description": "no such job"},
    409: {"model": ErrorOut, "description": "the job already ended"},
}


def check_batch_size(batch_size: int, maximum: int) -> None:
    if batch_size > maximum:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"batch_size {batch_size} is above this service's maximum {maximum} "
            "(setting GPU_OPT_MAX_BATCH_SIZE)",
        )


async def check_model(spec: str, settings: Settings) -> str:
    """The worker's spec for ``spec``; 403 for refused user code, 422 for an unknown model."""
    try:
        return await run_in_threadpool(validate_model, spec, settings.user_models_dir)
    except UserCodeRefused as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
    except SpecError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except Exception as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"model {spec!r} cannot be loaded: {exc}"
        ) from None
