"""Service settings: one class, read from GPU_OPT_* environment variables."""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _repo_root() -> Path:
    # projects/gpu_optimizer/src/gpu_optimizer/settings.py -> repository root
    return Path(__file__).resolve().parents[4]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPU_OPT_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = 8002
    data_dir: Path = _repo_root() / "data"
    log_level: str = "info"

    # GPU_OPT_DATABASE_URL wins over the conventional DATABASE_URL; unset means
    # the SQLite file data_dir/gpu_optimizer.db.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("GPU_OPT_DATABASE_URL", "DATABASE_URL")
    )
    # Profiling jobs and plans run model code in child processes: at most this many jobs at once.
    worker_count: int = Field(default=1, ge=1, le=4)
    # Start the worker machinery (forkserver, torch preloaded) at startup, not at the first job.
    warm_workers: bool = True
    job_timeout_s: float = Field(default=600.0, gt=0)
    plan_timeout_s: float = Field(default=300.0, gt=0)
    max_batch_size: int = Field(default=4096, ge=1)
    # `file.py:factory` / `package.module:factory` specs run user code; they are
    # accepted only from under this directory, and refused while it is unset.
    user_models_dir: Path | None = None
    # Planner workloads (names from planning.DEFAULT_WORKLOADS) whose recommended
    # batch per machine is computed in the background at startup for the metrics.
    recommend_workloads: list[str] | None = None
    recommend_at_startup: bool = True

    # Required on every route when set (header X-API-Key, Authorization: Bearer, or
    # HTTP Basic with any user name); /health stays open, /metrics too unless
    # metrics_require_key.
    api_key: str | None = Field(default=None, repr=False)
    metrics_require_key: bool = False
    # JSON bodies larger than this are refused with 413 before any route reads them.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)

    def sqlalchemy_url(self) -> str:
        """The database URL in effect, with PostgreSQL URLs pointed at the psycopg 3 driver."""
        url = self.database_url or f"sqlite:///{self.data_dir / 'gpu_optimizer.db'}"
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url


@functools.cache
def get_settings() -> Settings:
    return Settings()
