"""Engine, sessions and migrations: Alembic runs programmatically from the package's scripts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from gpu_optimizer.storage.guard import (
    SqliteFileGuard,
    database_problem,
    sqlite_path,
    sqlite_pragmas,
)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Its own version table, so the pose service's migrations can share a PostgreSQL database.
VERSION_TABLE = "gpu_optimizer_alembic_version"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; a SQLite file gets its directory and the pragmas of storage.guard."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    sqlite_pragmas(engine)
    return engine


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade_database(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` over the engine's own connection."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


class Database:
    """The service's engine and session factory, migrated on construction."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        if migrate:
            upgrade_database(self.engine)
        path = sqlite_path(url)
        self.guard = SqliteFileGuard(path) if path is not None else None
        if self.guard is not None and path is not None and path.exists():
            self.guard.adopt()
            self.guard.install(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def problem(self) -> str | None:
        """Why the database cannot be used now, or None when it answers."""
        return database_problem(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
