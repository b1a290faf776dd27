"""Typed dependencies: routes declare what they need and never reach into app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from pose_analyzer.exercises.registry import ExerciseCatalog
from pose_analyzer.jobs import JobRunner
from pose_analyzer.metrics import PoseMetrics
from pose_analyzer.multiview.service import RigManager
from pose_analyzer.settings import Settings, get_settings
from pose_analyzer.storage import Database
from pose_analyzer.streams.manager import StreamManager


def get_manager(request: Request) -> StreamManager:
    manager: StreamManager = request.app.state.manager
    return manager


def get_rigs(request: Request) -> RigManager:
    rigs: RigManager = request.app.state.rigs
    return rigs


def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_jobs(request: Request) -> JobRunner:
    jobs: JobRunner = request.app.state.jobs
    return jobs


def get_catalog(request: Request) -> ExerciseCatalog:
    catalog: ExerciseCatalog = request.app.state.catalog
    return catalog


def get_metrics(request: Request) -> PoseMetrics:
    metrics: PoseMetrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[StreamManager, Depends(get_manager)]
RigsDep = Annotated[RigManager, Depends(get_rigs)]
DatabaseDep = Annotated[Database, Depends(get_database)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]
CatalogDep = Annotated[ExerciseCatalog, Depends(get_catalog)]
MetricsDep = Annotated[PoseMetrics, Depends(get_metrics)]
