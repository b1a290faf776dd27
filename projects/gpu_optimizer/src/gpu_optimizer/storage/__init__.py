"""Persistence of profiling jobs: typed SQLAlchemy tables, Alembic migrations, sessions."""

from gpu_optimizer.storage.db import Database, upgrade_database
from gpu_optimizer.storage.tables import (
    TERMINAL_STATES,
    Base,
    JobState,
    MeasuredPeak,
    ProfilingJob,
)

__all__ = [
    "TERMINAL_STATES",
    "Base",
    "Database",
    "JobState",
    "MeasuredPeak",
    "ProfilingJob",
    "upgrade_database",
]
