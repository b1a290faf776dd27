"""Service settings: one class, read from POSE_* environment variables."""

from __future__ import annotations

import functools
from pathlib import Path

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


@functools.cache
def get_settings() -> Settings:
    return Settings()
