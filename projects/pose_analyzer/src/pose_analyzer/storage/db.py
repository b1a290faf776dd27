"""Engine, migrations and the few writes the pipeline makes.

Every completed rep is committed on its own, so a crash (even SIGKILL) loses
at most the rep in progress. On start-up, sessions left `live` by a previous
process are marked `interrupted`, ended at their last stored rep (the restart
time says nothing about when the session stopped). A SQLite file is checked
at every transaction (gpu_optimizer.storage.guard): a file that is gone,
replaced, read-only or on a full disk raises StorageUnavailable instead of
taking writes that would vanish.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, selectinload, sessionmaker

from gpu_optimizer.storage.guard import (
    SqliteFileGuard,
    database_problem,
    sqlite_path,
    sqlite_pragmas,
)
from pose_analyzer.storage.models import AnomalyRow, JobRow, RepRow, SessionRow, utcnow

MIGRATIONS = Path(__file__).with_name("migrations")
ACTIVE_JOB_STATES = ("queued", "running")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        sqlite_pragmas(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        path = sqlite_path(url)
        self.guard = SqliteFileGuard(path) if path is not None else None

    def migrate(self) -> int:
        """Apply migrations; mark sessions a dead process left live. Returns how many."""
        upgrade(self.engine)
        if self.guard is not None:
            self.guard.adopt()
            self.guard.install(self.engine)
        last_rep = (
            select(func.max(RepRow.created_at))
            .where(RepRow.session_id == SessionRow.id)
            .scalar_subquery()
        )
        with self.session() as db:
            result = db.execute(
                update(SessionRow)
                .where(SessionRow.status == "live")
                .values(
                    status="interrupted",
                    ended_at=func.coalesce(SessionRow.updated_at, last_rep, SessionRow.started_at),
                    error="the service stopped (ended_at: its last checkpoint)",
                )
            )
            db.commit()
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def problem(self) -> str | None:
        """Why the database cannot be used now, or None when it answers."""
        return database_problem(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessionmaker() as db:
            yield db

    def dispose(self) -> None:
        self.engine.dispose()

    # -- writes of the pipeline -------------------------------------------------------

    def start_session(
        self,
        session_id: str,
        *,
        kind: str,
        source: str,
        exercise: str,
        backend: str,
        cameras: list[dict[str, Any]] | None = None,
        calibration: str | None = None,
    ) -> None:
        with self.session() as db:
            db.add(
                SessionRow(
                    id=session_id,
                    kind=kind,
                    source=source,
                    exercise=exercise,
                    backend=backend,
                    status="live",
                    started_at=utcnow(),
                    updated_at=utcnow(),
                    frames=0,
                    cameras=cameras,
                    calibration=calibration,
                )
            )
            db.commit()

    def add_rep(self, session_id: str, person_id: int, rep: dict[str, Any], frames: int) -> None:
        with self.session() as db:
            db.add(
                RepRow(
                    session_id=session_id,
                    person_id=person_id,
                    index=int(rep["index"]),
                    start_s=float(rep["start_s"]),
                    end_s=float(rep["end_s"]),
                    score=float(rep["score"]),
                    faults=list(rep.get("faults", [])),
                    metrics=dict(rep.get("metrics", {})),
                )
            )
            db.execute(
                update(SessionRow)
                .where(SessionRow.id == session_id)
                .values(frames=frames, updated_at=utcnow())
            )
            db.commit()

    def add_anomaly(self, session_id: str, person_id: int, rep_index: int, reason: str) -> None:
        with self.session() as db:
            db.add(
                AnomalyRow(
                    session_id=session_id, person_id=person_id, rep_index=rep_index, reason=reason
                )
            )
            db.commit()

    def end_session(
        self, session_id: str, *, status: str, frames: int, error: str | None = None
    ) -> None:
        with self.session() as db:
            db.execute(
                update(SessionRow)
                .where(SessionRow.id == session_id)
                .values(status=status, ended_at=utcnow(), frames=frames, error=error)
            )
            db.commit()

    def checkpoint(self, frames: dict[str, int]) -> None:
        """Frames processed so far per live session, and the time: what a crash keeps."""
        if not frames:
            return
        now = utcnow()
        with self.session() as db:
            for session_id, count in frames.items():
                db.execute(
                    update(SessionRow)
                    .where(SessionRow.id == session_id, SessionRow.status == "live")
                    .values(frames=count, updated_at=now)
                )
            db.commit()

    def delete_session(self, session_id: str) -> None:
        """Remove a session and its reps (an upload job analysed again after a restart)."""
        with self.session() as db:
            row = db.get(SessionRow, session_id)
            if row is not None:
                db.delete(row)
                db.commit()

    # -- analysis jobs ----------------------------------------------------------------

    def add_job(self, row: JobRow) -> None:
        with self.session() as db:
            db.add(row)
            db.commit()

    def update_job(self, job_id: str, **values: Any) -> None:
        with self.session() as db:
            db.execute(update(JobRow).where(JobRow.id == job_id).values(**values))
            db.commit()

    def finish_job(self, job_id: str, state: str, **values: Any) -> bool:
        """Move an active job to `state`; False when it had already ended (no change)."""
        with self.session() as db:
            result = db.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state.in_(ACTIVE_JOB_STATES))
                .values(state=state, finished_at=utcnow(), **values)
            )
            db.commit()
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def get_job(self, job_id: str) -> JobRow | None:
        with self.session() as db:
            return db.get(JobRow, job_id)

    def list_jobs(self, limit: int = 100, state: str | None = None) -> list[JobRow]:
        with self.session() as db:
            query = select(JobRow).order_by(JobRow.created_at.desc()).limit(limit)
            if state is not None:
                query = query.where(JobRow.state == state)
            return list(db.scalars(query))

    def active_jobs(self) -> list[JobRow]:
        with self.session() as db:
            return list(
                db.scalars(
                    select(JobRow)
                    .where(JobRow.state.in_(ACTIVE_JOB_STATES))
                    .order_by(JobRow.created_at)
                )
            )

    def expired_uploads(self, before: dt.datetime) -> list[JobRow]:
        """Ended jobs whose upload is still stored and ended before `before`."""
        with self.session() as db:
            return list(
                db.scalars(
                    select(JobRow).where(
                        JobRow.state.not_in(ACTIVE_JOB_STATES),
                        JobRow.input_path.is_not(None),
                        JobRow.finished_at <= before,
                    )
                )
            )

    # -- reads ------------------------------------------------------------------------

    def list_sessions(self, limit: int = 100, offset: int = 0) -> list[SessionRow]:
        with self.session() as db:
            rows = db.scalars(
                select(SessionRow)
                .options(selectinload(SessionRow.reps))
                .order_by(SessionRow.started_at.desc())
                .limit(limit)
                .offset(offset)
            )
            return list(rows)

    def get_session(self, session_id: str) -> SessionRow | None:
        with self.session() as db:
            return db.scalars(
                select(SessionRow)
                .where(SessionRow.id == session_id)
                .options(selectinload(SessionRow.reps), selectinload(SessionRow.anomalies))
            ).first()


def since(started: dt.datetime | None) -> float | None:
    if started is None:
        return None
    if started.tzinfo is None:
        started = started.replace(tzinfo=dt.timezone.utc)
    return (utcnow() - started).total_seconds()
