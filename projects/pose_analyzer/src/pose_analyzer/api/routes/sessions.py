"""Sessions (a stream or an upload, start to end) and their reps, as stored."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from pose_analyzer.api.deps import DatabaseDep
from pose_analyzer.api.errors import responses
from pose_analyzer.api.schemas import SessionDetail, SessionOut

router = APIRouter(prefix="/sessions", tags=["sessions"])


@router.get("", response_model=list[SessionOut])
async def list_sessions(
    db: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> list[dict[str, Any]]:
    rows = await asyncio.to_thread(db.list_sessions, limit, offset)
    return [{**_session_fields(r), "rep_count": len(r.reps)} for r in rows]


@router.get("/{session_id}", response_model=SessionDetail, responses=responses(404))
async def get_session(session_id: str, db: DatabaseDep) -> dict[str, Any]:
    row = await asyncio.to_thread(db.get_session, session_id)
    if row is None:
        raise HTTPException(404, f"no session {session_id[:64]!r}")
    return {
        **_session_fields(row),
        "rep_count": len(row.reps),
        "reps": row.reps,
        "anomalies": row.anomalies,
    }


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
        "cameras": row.cameras,
        "calibration": row.calibration,
    }
