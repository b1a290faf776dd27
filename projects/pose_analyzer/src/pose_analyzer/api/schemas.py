"""Wire schemas of the pose service (storage tables live in storage/models.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StreamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str | int = Field(
        description="camera index, a file under the data directory, or an rtsp/http/udp/tcp URL",
        examples=["samples/pose2sim/single/cam01.mp4", 0, "udp://127.0.0.1:5000"],
    )
    exercise: str = Field(examples=["squat"])
    backend: str | None = Field(default=None, description="mediapipe | yolo | replay")
    model: str | None = Field(default=None, description="lite | full | heavy | a model path")
    realtime: bool = Field(
        default=True, description="files: play at the native frame rate (live simulation)"
    )


class StreamInfo(BaseModel):
    id: str
    slot: int
    source: str
    exercise: str
    backend: str
    model: str | None
    state: str
    error: str | None
    realtime: bool
    drop_policy: str
    frames_read: int
    frames_processed: int
    frames_dropped: int
    reconnects: int
    fps: float
    last_latency_s: float | None
    people: int
    reps: int
    clients: int
    session_id: str
    created_at: float
    rep_counts: dict[str, int]
    athletes: dict[str, int] = Field(
        default_factory=dict, description="person id -> reps, for every athlete so far"
    )
    session_status: str | None = None


class Fault(BaseModel):
    code: str
    message: str


class RepOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    person_id: int
    index: int
    start_s: float
    end_s: float
    score: float
    faults: list[dict[str, Any]]
    metrics: dict[str, Any]


class AnomalyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    person_id: int
    rep_index: int
    reason: str


class SessionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    source: str
    exercise: str
    backend: str
    status: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    frames: int
    error: str | None
    rep_count: int


class SessionDetail(SessionOut):
    reps: list[RepOut]
    anomalies: list[AnomalyOut]


class JobInfo(BaseModel):
    id: str
    filename: str
    exercise: str
    backend: str
    model: str | None
    state: str
    progress: float
    frames_done: int
    frames_total: int | None
    error: str | None
    created_at: float
    finished_at: float | None
    session_id: str
    report: dict[str, Any] | None = None


class Health(BaseModel):
    status: str
    service: str
    version: str
    streams: int
    database: str
