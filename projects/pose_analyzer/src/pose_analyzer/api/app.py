"""FastAPI application factory for the pose service."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pose_analyzer import __version__
from pose_analyzer.metrics import create_registry


def create_app() -> FastAPI:
    app = FastAPI(title="pose_analyzer", version=__version__)
    registry = create_registry()
    app.state.registry = registry

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "service": "pose_analyzer", "version": __version__}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
