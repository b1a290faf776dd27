"""Typed dependencies: routes declare what they need and never open sessions themselves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from gpu_optimizer.jobs.runner import JobRunner
from gpu_optimizer.settings import Settings, get_settings
from gpu_optimizer.storage import Database


def get_database(request: Request) -> Database:
    return request.app.state.database


def get_db(database: Annotated[Database, Depends(get_database)]) -> Iterator[Session]:
    with database.session() as session:
        yield session


def get_runner(request: Request) -> JobRunner:
    return request.app.state.runner


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_db)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]
