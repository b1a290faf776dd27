"""FastAPI application factory for the GPU optimizer service."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from gpu_optimizer import __version__
from gpu_optimizer.api.http import (
    ApiKeyMiddleware,
    BodyGuardMiddleware,
    ErrorOut,
    declare_errors,
    install_error_handlers,
    scrub_access_logs,
)
from gpu_optimizer.api.routes import machines, plans, profiles
from gpu_optimizer.jobs.runner import JobRunner
from gpu_optimizer.jobs.specs import validate_model, worker_spec
from gpu_optimizer.metrics import JobMetrics, create_registry
from gpu_optimizer.nvml import NvmlReader, default_reader
from gpu_optimizer.settings import Settings, get_settings
from gpu_optimizer.storage import Database

log = logging.getLogger(__name__)

GpuReaderDep = Annotated[NvmlReader, Depends(default_reader)]


class GpuProcessOut(BaseModel):
    pid: int
    used_memory_bytes: int | None


class GpuOut(BaseModel):
    """One GPU as NVML reports it, in base units; null where the GPU cannot report a value."""

    index: int
    uuid: str
    name: str
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    memory_free_bytes: int | None
    utilization_ratio: float | None
    memory_copy_utilization_ratio: float | None
    temperature_celsius: float | None
    power_watts: float | None
    power_limit_watts: float | None
    sm_clock_hertz: int | None
    memory_clock_hertz: int | None
    pcie_tx_bytes_per_second: int | None
    pcie_rx_bytes_per_second: int | None
    processes: list[GpuProcessOut] | None
    driver_version: str | None
    cuda_driver_version: str | None
    compute_capability: str | None


async def _recommend(runner: JobRunner, metrics: JobMetrics, settings: Settings) -> None:
    """Recommended batch per machine for the planner's workloads, once, in a worker process."""
    future = runner.run_task(
        "recommend", {"workloads": settings.recommend_workloads}, settings.plan_timeout_s
    )
    try:
        result = await asyncio.wrap_future(future)
    except Exception as exc:
        log.warning("batch-size recommendations for the metrics failed: %s", exc)
        return
    for row in result["recommendations"]:
        metrics.recommended_batch(row["machine"]["name"], row["workload"], row["recommended_batch"])


def _warm_validation() -> None:
    """Import torchvision for model-name checks now rather than in the first request."""
    try:
        validate_model("resnet18", None)
    except Exception as exc:
        log.warning("could not load torchvision for model checks: %s", exc)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    database = await asyncio.to_thread(Database, settings.sqlalchemy_url())
    runner = JobRunner(
        database,
        workers=settings.worker_count,
        job_timeout_s=settings.job_timeout_s,
        resolve_spec=lambda spec: worker_spec(spec, settings.user_models_dir),
        metrics=app.state.job_metrics,
    )
    failed, requeued = await asyncio.to_thread(runner.recover)
    if failed or requeued:
        log.warning(
            "restart: %d interrupted job(s) marked failed, %d queued again", failed, requeued
        )
    runner.start(warm_up=settings.warm_workers)
    threading.Thread(target=_warm_validation, name="warm-validation", daemon=True).start()
    app.state.database, app.state.runner = database, runner
    background = []
    if settings.recommend_at_startup:
        background.append(asyncio.create_task(_recommend(runner, app.state.job_metrics, settings)))
    try:
        yield
    finally:
        for task in background:
            task.cancel()
        await asyncio.to_thread(runner.stop)
        database.dispose()


class HealthOut(BaseModel):
    status: str
    service: str


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="gpu_optimizer", version=__version__, lifespan=_lifespan)
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    settings = settings or get_settings()
    app.state.settings = settings
    registry = create_registry()
    app.state.registry = registry
    app.state.job_metrics = JobMetrics(registry)
    install_error_handlers(app, storage_message="the job database is unavailable")
    open_paths = {"/health"} | (set() if settings.metrics_require_key else {"/metrics"})
    app.add_middleware(BodyGuardMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        ApiKeyMiddleware, key=settings.api_key, open_paths=open_paths, realm="gpu_optimizer"
    )
    scrub_access_logs()
    app.include_router(machines.router)
    app.include_router(profiles.router)
    app.include_router(plans.router)

    @app.get(
        "/health",
        response_model=HealthOut,
        responses={503: {"model": ErrorOut, "description": "the database is unavailable"}},
    )
    async def health(request: Request) -> Any:
        """Liveness for process managers: 200, or 503 when the job database cannot be used."""
        database: Database | None = getattr(request.app.state, "database", None)
        problem = await asyncio.to_thread(database.problem) if database else "starting"
        if problem is not None:
            log.error("health: database unavailable: %s", problem)
            return JSONResponse({"detail": "the job database is unavailable"}, status_code=503)
        return {"status": "ok", "service": "gpu_optimizer"}

    @app.get("/gpus", response_model=list[GpuOut])
    def gpus(reader: GpuReaderDep) -> list[GpuOut]:
        """Every GPU on this machine; an empty list where there is no GPU or no NVIDIA driver."""
        return [GpuOut(**dataclasses.asdict(r)) for r in reader.read(max_age_s=1.0)]

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    declare_errors(app, api_key=settings.api_key is not None)
    return app
