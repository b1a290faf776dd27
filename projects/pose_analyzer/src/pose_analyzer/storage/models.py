"""Storage tables (SQLAlchemy 2.0 typed mappings); the wire schemas live in api/schemas.py."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class SessionRow(Base):
    """One analysed stream or uploaded video, from start to stop."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "stream" | "upload" | "rig"
    source: Mapped[str] = mapped_column(Text)
    exercise: Mapped[str] = mapped_column(String(64))
    backend: Mapped[str] = mapped_column(String(32))
    # live -> ended | interrupted (service died) | failed (source failed)
    status: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    frames: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # Last time the running service wrote this session (reps, frame checkpoints): what
    # an interrupted session's ended_at becomes.
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # A rig's views ([{name, source}], the calibrated camera each source is) and its
    # calibration file; null for streams and uploads.
    cameras: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    calibration: Mapped[str | None] = mapped_column(Text)

    reps: Mapped[list[RepRow]] = relationship(
        back_populates="session", cascade="all, delete-orphan", order_by="RepRow.id"
    )
    anomalies: Mapped[list[AnomalyRow]] = relationship(
        back_populates="session", cascade="all, delete-orphan", order_by="AnomalyRow.id"
    )


class RepRow(Base):
    __tablename__ = "reps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    person_id: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    faults: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    session: Mapped[SessionRow] = relationship(back_populates="reps")


class AnomalyRow(Base):
    __tablename__ = "anomalies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    person_id: Mapped[int] = mapped_column(Integer)
    rep_index: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    session: Mapped[SessionRow] = relationship(back_populates="anomalies")


class JobRow(Base):
    """One uploaded video's analysis: queued -> running -> succeeded | failed | cancelled."""

    __tablename__ = "analysis_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    filename: Mapped[str] = mapped_column(Text)
    exercise: Mapped[str] = mapped_column(String(64))
    backend: Mapped[str] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(Text)
    # The stored upload; null once it has been deleted (see Settings.upload_retention_s).
    input_path: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    frames_done: Mapped[int] = mapped_column(Integer, default=0)
    frames_total: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
