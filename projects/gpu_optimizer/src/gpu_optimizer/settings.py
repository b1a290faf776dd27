"""Service settings: one class, read from GPU_OPT_* environment variables."""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


def _repo_root() -> Path:
    # projects/gpu_optimizer/src/gpu_optimizer/settings.py -> repository root
    return Path(__file__).resolve().parents[4]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPU_OPT_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8002
    data_dir: Path = _repo_root() / "data"
    log_level: str = "info"


@functools.cache
def get_settings() -> Settings:
    return Settings()
