"""Storage of the service: the Alembic migrations build exactly the ORM tables; URL settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from gpu_optimizer.settings import Settings
from gpu_optimizer.storage import Base, Database, JobState, ProfilingJob
from gpu_optimizer.storage.db import VERSION_TABLE, alembic_config
from gpu_optimizer.storage.tables import utcnow


def test_migrations_create_exactly_the_mapped_tables(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'nested' / 'jobs.db'}")
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, Base.metadata) == []
        tables = set(inspect(connection).get_table_names())
    assert tables == {"profiling_jobs", "measured_peaks", VERSION_TABLE}
    db.dispose()


def test_downgrade_then_upgrade_keeps_working(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'jobs.db'}")
    config = alembic_config()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert "profiling_jobs" not in inspect(db.engine).get_table_names()
    db.dispose()
    again = Database(db.url)
    with again.session() as session:
        session.add(
            ProfilingJob(
                id="j1",
                created_at=utcnow(),
                state=JobState.QUEUED,
                model="resnet18",
                mode="estimate",
                request={"model": "resnet18"},
                progress=0.0,
            )
        )
        session.commit()
        assert session.get(ProfilingJob, "j1").state is JobState.QUEUED  # type: ignore[union-attr]
    again.dispose()


def test_database_url_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("GPU_OPT_DATABASE_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GPU_OPT_DATA_DIR", str(tmp_path))
    assert Settings().sqlalchemy_url() == f"sqlite:///{tmp_path / 'gpu_optimizer.db'}"
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db:5432/app")
    assert Settings().sqlalchemy_url() == "postgresql+psycopg://u:p@db:5432/app"
    monkeypatch.setenv("GPU_OPT_DATABASE_URL", "postgres://u:p@other/app")
    assert Settings().sqlalchemy_url() == "postgresql+psycopg://u:p@other/app"
    assert Settings(database_url="sqlite:///x.db").sqlalchemy_url() == "sqlite:///x.db"
