"""Engine, migrations and the few writes the pipeline makes.

Every completed rep is committed on its own, so a crash (even SIGKILL) loses
at most the rep in progress. On start-up, sessions left `live` by a previous
process are marked `interrupted`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, selectinload, sessionmaker

from pose_analyzer.storage.models import AnomalyRow, RepRow, SessionRow, utcnow

MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers do not block the writer; synchronous=NORMAL is durable in WAL mode
    # against process crashes (only an OS crash can lose the last transactions).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
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

    def migrate(self) -> int:
        """Apply migrations; mark sessions a dead process left live. Returns how many."""
        upgrade(self.engine)
        with self.session() as db:
            result = db.execute(
                update(SessionRow)
                .where(SessionRow.status == "live")
                .values(status="interrupted", ended_at=utcnow(), error="service stopped")
            )
            db.commit()
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessionmaker() as db:
            yield db

    def dispose(self) -> None:
        self.engine.dispose()

    # -- writes of the pipeline -------------------------------------------------------

    def start_session(
        self, session_id: str, *, kind: str, source: str, exercise: str, backend: str
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
                    frames=0,
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
            db.execute(update(SessionRow).where(SessionRow.id == session_id).values(frames=frames))
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
