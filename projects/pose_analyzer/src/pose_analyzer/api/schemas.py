"""Wire schemas of the pose service (storage tables live in storage/models.py)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictStr,
)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    return value


# Bounded strings without NUL bytes (a NUL or a 300-character name reaches the OS otherwise).
SourceText = Annotated[StrictStr, Field(max_length=2048), AfterValidator(_no_nul)]
ModelName = Annotated[StrictStr, Field(max_length=512), AfterValidator(_no_nul)]


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a camera index is an integer, not true/false")
    return value


# 2 and 2.0 are the same JSON integer; true is not.
CameraIndex = Annotated[int, Strict(False), BeforeValidator(_not_bool), Field(ge=0, le=63)]
ExerciseName = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class StreamCreate(BaseModel):
    # strict: a camera index is an integer, never true/false or "0.5".
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    source: SourceText | CameraIndex = Field(
        description="camera index, a file under the data directory, or an rtsp/http/udp/tcp URL",
        examples=["samples/pose2sim/single/cam01.mp4", 0, "udp://127.0.0.1:5000"],
    )
    exercise: ExerciseName = Field(examples=["squat"])
    backend: Literal["mediapipe", "yolo", "replay"] | None = Field(
        default=None, description="default: replay for keypoint files, else the service's"
    )
    model: ModelName | None = Field(
        default=None,
        description="mediapipe: lite | full | heavy or a .task path; yolo: a .pt file in the "
        "models directory or an Ultralytics pose yaml name",
    )
    realtime: bool = Field(
        default=True, description="files: play at the native frame rate (live simulation)"
    )
    search: bool | None = Field(
        default=None,
        description="mediapipe: search again at higher resolution (crops around someone "
        "lost, tiles over an empty frame); default POSE_LIVE_SEARCH (on). Not for yolo "
        "or replay streams",
    )
    search_budget_ms: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="the search's time per frame (ms); default POSE_LIVE_SEARCH_BUDGET_MS (30)",
    )
    search_max_crops: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="landmarker calls (crops, tiles) per frame at most; the rest resumes "
        "next frame; default POSE_LIVE_SEARCH_MAX_CROPS (1)",
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
    created_at: dt.datetime
    rep_counts: dict[str, int]
    athletes: dict[str, int] = Field(
        default_factory=dict, description="person id -> reps, for every athlete so far"
    )
    session_status: str | None = None
    search: dict[str, Any] | None = Field(
        default=None,
        description="the live search's budget_ms, max_crops and counters (frames_searched, "
        "crops, tiles, found, over_budget, capped, max_calls_per_frame); null without one",
    )


CameraName = Annotated[StrictStr, Field(min_length=1, max_length=64), AfterValidator(_no_nul)]


class RigCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    sources: list[SourceText | CameraIndex] = Field(
        max_length=16,
        description="one source per view, as for POST /streams (at least two)",
        examples=[["rig/cam01.jsonl", "rig/cam02.jsonl", "rig/cam03.jsonl", "rig/cam04.jsonl"]],
    )
    calibration: SourceText = Field(
        description="calibration file under the data directory: Pose2Sim .toml, Qualisys "
        ".qca.txt or OpenCV .json/.yml",
        examples=["samples/pose2sim/single/Calib.qca.txt"],
    )
    exercise: ExerciseName = Field(examples=["squat"])
    cameras: list[CameraName] | None = Field(
        default=None,
        max_length=16,
        description="the calibrated camera of each source, in order; default: matched by "
        "file name (the file name contains the camera name)",
    )
    backend: Literal["mediapipe", "yolo", "replay"] | None = Field(
        default=None, description="default: replay for keypoint files, else the service's"
    )
    model: ModelName | None = None
    realtime: bool = Field(
        default=True,
        description="files: play at the native rate and fuse by capture time (a live rig); "
        "false: as fast as they go, every frame of every view in step",
    )
    fps: float | None = Field(
        default=None, gt=0, le=1000, description="nominal frame rate; default: the files'"
    )


class RigView(BaseModel):
    name: str
    source: str
    state: str = Field(description="the reader's state, or `lost` once the view left the rig")
    reason: str | None
    lost_at_instant: int | None
    frames_read: int
    frames_fused: int
    frames_late: int
    frames_dropped: int
    size: list[int] | None
    center_m: list[float]


class RigInfo(BaseModel):
    id: str
    calibration: str
    exercise: str
    backend: str
    model: str | None
    realtime: bool
    sync: Literal["lockstep", "capture_time"]
    fps_nominal: float
    tolerance_s: float
    state: str
    error: str | None
    reason: str | None
    views: list[RigView]
    views_active: list[str]
    views_lost: dict[str, str | None]
    instants: int
    fps: float
    last_latency_s: float | None
    people: int
    reps: int
    rep_counts: dict[str, int]
    clients: int
    session_id: str
    session_status: str
    created_at: dt.datetime
    joints: list[str]


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
    cameras: list[dict[str, Any]] | None = Field(
        default=None, description="rigs: the views, each a calibrated camera and its source"
    )
    calibration: str | None = None


class SessionDetail(SessionOut):
    reps: list[RepOut]
    anomalies: list[AnomalyOut]


JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobInfo(BaseModel):
    """An analysis job: the same model as gpu_optimizer's profiling jobs (state, progress,
    ISO-8601 UTC timestamps, ``url``), plus what an upload adds."""

    id: str
    url: str
    state: JobState
    filename: str
    exercise: str
    backend: str
    model: str | None
    progress: float
    frames_done: int
    frames_total: int | None
    node_id: str | None = Field(
        default=None, description="the Ray node running the job (AIML_RAY_ADDRESS set)"
    )
    error: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    session_id: str
    report: dict[str, Any] | None = Field(
        default=None, description="report.json of a succeeded job (docs/report.md)"
    )


class Health(BaseModel):
    status: str
    service: str
