"""Every error the pose API answers, in one place: the library's exceptions to statuses.

The body is always ``{"detail": str}`` (422s add ``errors``), the shape
gpu_optimizer answers too (gpu_optimizer.api.http); ``responses`` gives a
route's OpenAPI declaration of the statuses it can return.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gpu_optimizer.api.http import ErrorOut, install_error_handlers
from pose_analyzer.exercises.registry import UnknownExerciseError
from pose_analyzer.exercises.schema import ExerciseDefinitionError
from pose_analyzer.multiview.calibration import CalibrationError
from pose_analyzer.multiview.service import RigRequestError
from pose_analyzer.streams.manager import StreamLimitError, StreamRequestError, StreamStartError
from pose_analyzer.streams.sources import SourceError

DESCRIPTIONS = {
    400: "the source is not acceptable (file, camera or URL), or the upload is empty",
    404: "no such stream, rig, session or job",
    409: "the job already ended",
    413: "the upload or body is too large",
    415: "the upload is not a video",
    422: "the request does not match the schema, or names an unknown exercise, backend or "
    "model; rigs: a calibration that does not match the sources, fewer than two views",
    429: "the stream limit is reached",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut, "description": DESCRIPTIONS[code]} for code in codes}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def install(app: FastAPI) -> None:
    install_error_handlers(app, storage_message="the session database is unavailable")
    statuses: dict[type[Exception], int] = {
        SourceError: 400,
        UnknownExerciseError: 422,
        ExerciseDefinitionError: 422,
        StreamLimitError: 429,
        StreamRequestError: 422,
        StreamStartError: 422,
        RigRequestError: 422,
        CalibrationError: 422,
    }
    for exc_class, status in statuses.items():

        async def handler(_req: Request, exc: Exception, status: int = status) -> JSONResponse:
            return _error(status, str(exc))

        app.add_exception_handler(exc_class, handler)
