"""Service settings: one class, read from POSE_* environment variables (DATABASE_URL too)."""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _repo_root() -> Path:
    # projects/pose_analyzer/src/pose_analyzer/settings.py -> repository root
    return Path(__file__).resolve().parents[4]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POSE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8001
    data_dir: Path = _repo_root() / "data"
    models_dir: Path = _repo_root() / "models"
    log_level: str = "info"
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("POSE_DATABASE_URL", "DATABASE_URL")
    )
    # Required on every route, WebSocket, /docs, /openapi.json and static file when set:
    # header X-API-Key, Authorization: Bearer, or HTTP Basic with any user name (what a
    # browser prompts for); ?api_key= only on WebSocket URLs. /health stays open, and
    # /metrics too unless metrics_require_key.
    api_key: str | None = Field(default=None, repr=False)
    metrics_require_key: bool = False
    # JSON bodies larger than this are refused with 413 (uploads: max_upload_bytes).
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Seconds an ended job's upload is kept; 0 deletes it as soon as the job ends.
    upload_retention_s: float = Field(default=0.0, ge=0)
    # An upload job analysing for longer than this fails ("timed out"); 0 = no limit.
    job_timeout_s: float = Field(default=0.0, ge=0)
    # URL sources: hosts and networks (CIDR) a stream may read from, comma separated.
    # Link-local and cloud metadata addresses are refused whatever this says.
    source_allow: str = (
        "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7,239.0.0.0/8"
    )
    # glibc malloc arenas for the stream threads (streams/memory.py); 0 keeps glibc's.
    malloc_arenas: int = Field(default=2, ge=0, le=64)
    # A live source that never delivers a first frame fails after this many seconds.
    connect_timeout_s: float = Field(default=30.0, gt=0)

    max_streams: int = 8
    max_upload_bytes: int = 512 * 1024 * 1024
    default_backend: str = "mediapipe"
    default_model: str = "full"
    # Live MediaPipe streams: search again at higher resolution where the detector lost
    # someone or finds nobody (detectors.LIVE_REFINE; docs/identity.md "Live search"),
    # at most live_search_max_crops landmarker calls and live_search_budget_ms per frame.
    # Per stream: POST /streams {"search": ..., "search_budget_ms": ..., ...}.
    live_search: bool = True
    live_search_budget_ms: float = Field(default=30.0, gt=0, le=1000)
    live_search_max_crops: int = Field(default=1, ge=1, le=16)
    # Frames per YOLO inference across streams; unset = the planner's for the detected GPU.
    yolo_batch: int | None = None
    # Frames a reader keeps for a live source before dropping the oldest.
    reader_buffer: int = 1
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 8.0
    # WebSocket clients: queued messages per client, and how long a client may stay
    # full before it is disconnected.
    ws_queue: int = 32
    ws_overflow_disconnect_s: float = 5.0

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'pose_analyzer.db'}"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"


@functools.cache
def get_settings() -> Settings:
    return Settings()
