"""Storage tables (SQLAlchemy 2.0 typed mappings); the wire schemas live in the API package."""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ProfilingJob(Base):
    """One profiling job: what was asked, where it got to, and what came out."""

    __tablename__ = "profiling_jobs"
    __table_args__ = (Index("ix_profiling_jobs_state_created", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    state: Mapped[JobState] = mapped_column(
        SqlEnum(
            JobState,
            name="job_state",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda states: [s.value for s in states],
        ),
        default=JobState.QUEUED,
    )
    model: Mapped[str] = mapped_column(String(512))
    mode: Mapped[str] = mapped_column(String(16))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)


class MeasuredPeak(Base):
    """One real training step measured on one GPU of the fleet (``measure-fleet``).

    Keyed for lookup by the GPU's name and driver and by the workload, so plans
    can show measured figures next to the estimate and refit the overhead model
    per card. ``estimated_peak_bytes`` is the estimator's tracked peak for the
    same step, stored with it so the error is the one of that estimator version.
    """

    __tablename__ = "measured_peaks"
    __table_args__ = (
        Index("ix_measured_peaks_gpu", "gpu_name", "driver_version"),
        Index("ix_measured_peaks_workload", "model", "mode", "optimizer", "dtype"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    measured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    gpu_name: Mapped[str] = mapped_column(String(128))
    driver_version: Mapped[str] = mapped_column(String(32))
    gpu_total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    node: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(512))
    input_shape: Mapped[list[int]] = mapped_column(JSON)
    batch_size: Mapped[int] = mapped_column(Integer)
    optimizer: Mapped[str] = mapped_column(String(16))
    dtype: Mapped[str] = mapped_column(String(16))
    mode: Mapped[str] = mapped_column(String(16))
    ok: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    peak_bytes: Mapped[int | None] = mapped_column(BigInteger)
    max_allocated_bytes: Mapped[int | None] = mapped_column(BigInteger)
    max_reserved_bytes: Mapped[int | None] = mapped_column(BigInteger)
    estimated_peak_bytes: Mapped[int | None] = mapped_column(BigInteger)
    torch_version: Mapped[str] = mapped_column(String(32))

    def to_dict(self) -> dict[str, Any]:
        """Plain values, to hand the measurements to a planning worker process."""
        return {c.name: getattr(self, c.name) for c in self.__table__.columns if c.name != "id"}
