"""The exercise definitions the service knows (built-in and user)."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter

from pose_analyzer.api.deps import CatalogDep

router = APIRouter(tags=["exercises"])


@router.get("/exercises")
def exercises(catalog: CatalogDep) -> list[dict[str, Any]]:
    """Every usable definition; a broken user file is left out (its error is in `GET
    /exercises/errors`) and the others keep working."""
    out = []
    for exercise in catalog.all().values():
        data = dataclasses.asdict(exercise)
        data.pop("source", None)
        out.append(data)
    return out


@router.get("/exercises/errors")
def exercise_errors(catalog: CatalogDep) -> dict[str, str]:
    """User definition files that did not load: exercise (or directory) -> what is wrong."""
    catalog.refresh()
    return dict(catalog.errors)
