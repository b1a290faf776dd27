"""FastAPI application of the pose service: middleware, routers and the lifespan, nothing else.

Laid out like gpu_optimizer's API (routes in api/routes/, typed dependencies
in api/deps.py, every error in api/errors.py) and built from the same
plumbing (gpu_optimizer.api.http): the optional API key, strict bounded JSON
bodies, one error shape, storage trouble as 503. docs/api.md is the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from gpu_optimizer.api.http import (
    ApiKeyMiddleware,
    BodyGuardMiddleware,
    declare_errors,
    scrub_access_logs,
)
from pose_analyzer import __version__
from pose_analyzer.api import errors
from pose_analyzer.api.routes import exercises, health, jobs, page, rigs, sessions, streams
from pose_analyzer.api.routes.page import STATIC
from pose_analyzer.exercises.registry import ExerciseCatalog
from pose_analyzer.jobs import JobRunner
from pose_analyzer.metrics import PoseMetrics, create_registry
from pose_analyzer.multiview.service import RigManager
from pose_analyzer.ray_jobs import ray_address
from pose_analyzer.settings import Settings, get_settings
from pose_analyzer.storage import Database
from pose_analyzer.streams.manager import StreamManager
from pose_analyzer.streams.memory import limit_arenas, release_memory

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    registry = create_registry()
    metrics = PoseMetrics(registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limit_arenas(settings.malloc_arenas)
        db = Database(settings.resolved_database_url)
        interrupted = await asyncio.to_thread(db.migrate)
        if interrupted:
            log.warning("%d session(s) of a previous run marked interrupted", interrupted)
        catalog = await asyncio.to_thread(ExerciseCatalog)
        for where, problem in catalog.errors.items():
            log.error("exercise definition %s not loaded: %s", where, problem)
        app.state.db = db
        app.state.catalog = catalog
        app.state.manager = StreamManager(settings, db, metrics)
        app.state.rigs = RigManager(settings, db, metrics, app.state.manager)
        app.state.jobs = JobRunner(
            db,
            metrics,
            settings.data_dir / "jobs",
            settings.models_dir,
            workers=1,
            upload_retention_s=settings.upload_retention_s,
            exercises=catalog,
            ray_address=ray_address(),  # AIML_RAY_ADDRESS: jobs run on the cluster
            timeout_s=settings.job_timeout_s or None,
        )
        requeued, failed = await asyncio.to_thread(app.state.jobs.recover)
        if requeued or failed:
            log.warning("restart: %d job(s) queued again, %d failed", requeued, failed)
        reaper = asyncio.get_running_loop().create_task(_reap(app.state.manager, app.state.rigs))
        # Import the detector libraries in the background so the first stream starts fast.
        warm = asyncio.get_running_loop().run_in_executor(None, _warm_imports)
        try:
            yield
        finally:
            reaper.cancel()
            warm.cancel()
            await app.state.rigs.stop_all()
            await app.state.manager.stop_all()
            app.state.jobs.shutdown()
            db.dispose()

    app = FastAPI(
        title="pose_analyzer",
        version=__version__,
        description="Live multi-stream pose analysis: angles, reps, form scores, anomalies.",
        lifespan=lifespan,
    )
    app.dependency_overrides[get_settings] = lambda: settings
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.settings = settings
    errors.install(app)
    open_paths = {"/health"} | (set() if settings.metrics_require_key else {"/metrics"})
    app.add_middleware(BodyGuardMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        ApiKeyMiddleware, key=settings.api_key, open_paths=open_paths, realm="pose_analyzer"
    )
    scrub_access_logs()
    for module in (health, page, exercises, streams, rigs, jobs, sessions):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    declare_errors(app, api_key=settings.api_key is not None)
    return app


def _warm_imports() -> None:
    with contextlib.suppress(Exception):
        import mediapipe.tasks.python.vision  # noqa: F401


CHECKPOINT_EVERY = 5  # reaper ticks (seconds) between frame checkpoints


async def _reap(manager: StreamManager, rigs: RigManager) -> None:
    tick = 0
    while True:
        await asyncio.sleep(1.0)
        tick += 1
        rigs.reap()
        if manager.reap():
            await asyncio.to_thread(release_memory)
        if tick % CHECKPOINT_EVERY == 0:
            try:
                await asyncio.to_thread(manager.checkpoint)
                await asyncio.to_thread(rigs.checkpoint)
            except Exception as exc:  # storage trouble: /health reports it
                log.warning("frame checkpoint not stored: %s", exc)
