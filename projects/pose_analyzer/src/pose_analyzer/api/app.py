"""FastAPI application of the pose service: HTTP and WebSocket translated to library calls."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    UploadFile,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pose_analyzer import __version__
from pose_analyzer.api.schemas import (
    Health,
    JobInfo,
    SessionDetail,
    SessionOut,
    StreamCreate,
    StreamInfo,
)
from pose_analyzer.exercises.registry import UnknownExerciseError, get_exercise, load_exercises
from pose_analyzer.jobs import JobRunner
from pose_analyzer.metrics import PoseMetrics, create_registry
from pose_analyzer.settings import Settings, get_settings
from pose_analyzer.storage import Database
from pose_analyzer.streams.manager import (
    StreamLimitError,
    StreamManager,
    StreamRequestError,
    StreamStartError,
)
from pose_analyzer.streams.sources import KEYPOINT_SUFFIXES, VIDEO_SUFFIXES, SourceError

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent.parent / "static"
UPLOAD_BACKENDS = ("mediapipe", "yolo", "replay")

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_manager(request: Request) -> StreamManager:
    manager: StreamManager = request.app.state.manager
    return manager


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_jobs(request: Request) -> JobRunner:
    jobs: JobRunner = request.app.state.jobs
    return jobs


ManagerDep = Annotated[StreamManager, Depends(get_manager)]
DatabaseDep = Annotated[Database, Depends(get_db)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]


def _key_ok(expected: str | None, given: str | None) -> bool:
    return expected is None or (given is not None and secrets.compare_digest(expected, given))


def require_api_key(request: Request, settings: SettingsDep) -> None:
    given = request.headers.get("x-api-key") or request.query_params.get("api_key")
    if not _key_ok(settings.api_key, given):
        raise HTTPException(401, "missing or wrong API key (header X-API-Key or ?api_key=)")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def _exercise_dict(exercise: Any) -> dict[str, Any]:
    data = dataclasses.asdict(exercise)
    data.pop("source", None)
    return data


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.resolved_database_url)
        interrupted = await asyncio.to_thread(db.migrate)
        if interrupted:
            log.warning("%d session(s) of a previous run marked interrupted", interrupted)
        app.state.db = db
        app.state.manager = StreamManager(settings, db, metrics)
        app.state.jobs = JobRunner(
            db, metrics, settings.data_dir / "jobs", settings.models_dir, workers=1
        )
        reaper = asyncio.get_running_loop().create_task(_reap(app.state.manager))
        # Import the detector libraries in the background so the first stream starts fast.
        warm = asyncio.get_running_loop().run_in_executor(None, _warm_imports)
        try:
            yield
        finally:
            reaper.cancel()
            warm.cancel()
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
    registry = create_registry()
    metrics = PoseMetrics(registry)
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.settings = settings

    @app.exception_handler(SourceError)
    async def _source_error(_req: Request, exc: SourceError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(UnknownExerciseError)
    async def _exercise_error(_req: Request, exc: UnknownExerciseError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(StreamLimitError)
    async def _limit_error(_req: Request, exc: StreamLimitError) -> JSONResponse:
        return _error(429, str(exc))

    @app.exception_handler(StreamRequestError)
    async def _request_error(_req: Request, exc: StreamRequestError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(StreamStartError)
    async def _start_error(_req: Request, exc: StreamStartError) -> JSONResponse:
        return _error(422, str(exc))

    router = APIRouter(dependencies=[Depends(require_api_key)])

    @router.get("/health", response_model=Health)
    def health(request: Request) -> dict[str, Any]:
        manager = getattr(request.app.state, "manager", None)
        return {
            "status": "ok",
            "service": "pose_analyzer",
            "version": __version__,
            "streams": len(manager.streams) if manager else 0,
            "database": settings.resolved_database_url.split(":", 1)[0],
        }

    @router.get("/metrics", include_in_schema=False)
    def metrics_endpoint() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @router.get("/exercises")
    def exercises() -> list[dict[str, Any]]:
        return [_exercise_dict(e) for e in load_exercises().values()]

    @router.post("/streams", status_code=201, response_model=StreamInfo)
    async def start_stream(body: StreamCreate, manager: ManagerDep) -> dict[str, Any]:
        runner = await manager.start(
            body.source, body.exercise, body.backend, body.model, body.realtime
        )
        return runner.describe()

    @router.get("/streams", response_model=list[StreamInfo])
    def list_streams(manager: ManagerDep) -> list[dict[str, Any]]:
        return manager.list()

    @router.get("/streams/{stream_id}", response_model=StreamInfo)
    def get_stream(stream_id: str, manager: ManagerDep) -> dict[str, Any]:
        runner = manager.get(stream_id)
        if runner is None:
            raise HTTPException(404, f"no stream {stream_id!r}; GET /streams lists them")
        return runner.describe()

    @router.delete("/streams/{stream_id}", response_model=StreamInfo)
    async def stop_stream(stream_id: str, manager: ManagerDep) -> dict[str, Any]:
        info = await manager.stop(stream_id)
        if info is None:
            raise HTTPException(404, f"no stream {stream_id!r}; GET /streams lists them")
        return info

    @router.post("/analyze", status_code=202, response_model=JobInfo)
    async def analyze(
        jobs: JobsDep,
        file: Annotated[UploadFile, File(description="a video file")],
        exercise: Annotated[str, Form()],
        backend: Annotated[str | None, Form()] = None,
        model: Annotated[str | None, Form()] = None,
    ) -> dict[str, Any]:
        definition = get_exercise(exercise)
        name = Path(file.filename or "upload").name
        suffix = Path(name).suffix.lower()
        keypoints = suffix in KEYPOINT_SUFFIXES
        if suffix not in VIDEO_SUFFIXES and not keypoints:
            raise HTTPException(
                415,
                f"unsupported file {name!r}; upload a video ({', '.join(VIDEO_SUFFIXES)}) "
                f"or a keypoint file ({', '.join(KEYPOINT_SUFFIXES)})",
            )
        backend = backend or ("replay" if keypoints else settings.default_backend)
        if backend not in UPLOAD_BACKENDS:
            raise HTTPException(
                422, f"unknown backend {backend!r}; use one of {', '.join(UPLOAD_BACKENDS)}"
            )
        if (backend == "replay") != keypoints:
            raise HTTPException(
                422, f"the replay backend reads keypoint files and only those; got {name!r}"
            )
        if model is None and backend == "mediapipe":
            model = settings.default_model
        settings.uploads_dir.mkdir(parents=True, exist_ok=True)
        dest = settings.uploads_dir / f"{uuid.uuid4().hex[:12]}{suffix}"
        size = await asyncio.to_thread(_save_upload, file, dest, settings.max_upload_bytes)
        if size is None:
            raise HTTPException(
                413,
                f"upload larger than {settings.max_upload_bytes} bytes (POSE_MAX_UPLOAD_BYTES)",
            )
        if size == 0:
            dest.unlink(missing_ok=True)
            raise HTTPException(400, f"{name} is empty (0 bytes)")
        job = jobs.submit(dest, name, definition, backend, model)
        return job.describe()

    @router.get("/jobs", response_model=list[JobInfo])
    def list_jobs(jobs: JobsDep) -> list[dict[str, Any]]:
        return jobs.list()

    @router.get("/jobs/{job_id}", response_model=JobInfo)
    def get_job(job_id: str, jobs: JobsDep) -> dict[str, Any]:
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job.describe()

    @router.get("/sessions", response_model=list[SessionOut])
    async def list_sessions(
        db: DatabaseDep,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(db.list_sessions, limit, offset)
        return [{**_session_fields(r), "rep_count": len(r.reps)} for r in rows]

    @router.get("/sessions/{session_id}", response_model=SessionDetail)
    async def get_session(session_id: str, db: DatabaseDep) -> dict[str, Any]:
        row = await asyncio.to_thread(db.get_session, session_id)
        if row is None:
            raise HTTPException(404, f"no session {session_id!r}")
        return {
            **_session_fields(row),
            "rep_count": len(row.reps),
            "reps": row.reps,
            "anomalies": row.anomalies,
        }

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.websocket("/ws/streams/{stream_id}")
    async def stream_socket(
        websocket: WebSocket, stream_id: str, frames: bool = False, api_key: str | None = None
    ) -> None:
        given = websocket.headers.get("x-api-key") or api_key
        if not _key_ok(settings.api_key, given):
            await websocket.close(code=4401, reason="missing or wrong API key")
            return
        manager: StreamManager = websocket.app.state.manager
        runner = manager.get(stream_id)
        if runner is None:
            await websocket.close(code=4404, reason=f"no stream {stream_id}")
            return
        await websocket.accept()
        if runner.finished.is_set():  # too late for frames: the closing summary, then close
            if runner.final_message is not None:
                await websocket.send_text(json.dumps(runner.final_message))
            await websocket.close(code=1000, reason="stream ended")
            return
        client = runner.hub.add(websocket, want_frames=frames)
        metrics.ws_clients.inc()
        try:
            receiver = asyncio.ensure_future(_receive(websocket, client))
            closed = asyncio.ensure_future(client.closed.wait())
            await asyncio.wait({receiver, closed}, return_when=asyncio.FIRST_COMPLETED)
            for task in (receiver, closed):
                task.cancel()
        finally:
            runner.hub.remove(client)
            metrics.ws_clients.dec()

    return app


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite keeps no time zone; every timestamp stored here is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def _session_fields(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "source": row.source,
        "exercise": row.exercise,
        "backend": row.backend,
        "status": row.status,
        "started_at": _utc(row.started_at),
        "ended_at": _utc(row.ended_at),
        "frames": row.frames,
        "error": row.error,
    }


async def _receive(websocket: WebSocket, client: Any) -> None:
    """Read client messages: {"frames": true|false} toggles JPEG frames."""
    import json

    try:
        while True:
            text = await websocket.receive_text()
            try:
                message = json.loads(text)
            except ValueError:
                continue
            if isinstance(message, dict) and isinstance(message.get("frames"), bool):
                client.want_frames = message["frames"]
    except (WebSocketDisconnect, RuntimeError):
        return


def _warm_imports() -> None:
    with contextlib.suppress(Exception):
        import mediapipe.tasks.python.vision  # noqa: F401


async def _reap(manager: StreamManager) -> None:
    while True:
        await asyncio.sleep(1.0)
        manager.reap()


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
