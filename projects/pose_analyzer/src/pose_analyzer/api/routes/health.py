"""Liveness and metrics: open by default, so process managers and Prometheus need no key."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gpu_optimizer.api.http import ErrorOut
from pose_analyzer.api.deps import DatabaseDep
from pose_analyzer.api.schemas import Health

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": ErrorOut, "description": "the session database is unavailable"}},
)
async def health(db: DatabaseDep) -> Any:
    """200 while the service can store what it analyses; 503 (and why, in the log) if not."""
    problem = await asyncio.to_thread(db.problem)
    if problem is not None:
        log.error("health: session database unavailable: %s", problem)
        return JSONResponse({"detail": "the session database is unavailable"}, status_code=503)
    return {"status": "ok", "service": "pose_analyzer"}


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
