"""Storage checks both services use: a SQLite database is checked, not assumed.

A connection keeps writing into a file that was deleted or replaced, and the
rows vanish at the next start; a memory-mapped WAL index kills the process
with SIGBUS once its file cannot be written. So each transaction first checks
the file (``SqliteFileGuard``) and SQLite runs without any mapped file
(``sqlite_pragmas``). Trouble raises ``StorageUnavailable``, which the APIs
answer with 503.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

# A SQLite database on a disk with less room than this is reported full before
# SQLite itself runs out mid-transaction.
MIN_FREE_BYTES = 1 << 20


class StorageUnavailable(RuntimeError):
    """The database cannot be trusted with a read or a write; the message says why."""


def database_problem(engine: Engine) -> str | None:
    """Why the database behind `engine` cannot be used now, or None when it answers
    (both services' `Database.problem`)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except StorageUnavailable as exc:
        return str(exc)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for other databases and in-memory SQLite."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database).resolve()


class SqliteFileGuard:
    """Checks, at every transaction, that the SQLite file is still the one opened and writable.

    A connection keeps writing into a file that was deleted or replaced and the
    data vanishes at the next start, so each transaction first compares the
    path's inode with the one recorded at start and checks that the file and
    its file system accept writes and have room.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.identity: tuple[int, int] | None = None

    def adopt(self) -> None:
        """Record the file now in place as the service's database (after migrations)."""
        st = self.path.stat()
        self.identity = (st.st_dev, st.st_ino)

    def problem(self) -> str | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return f"database file {self.path.name} is gone"
        except OSError as exc:
            return f"database file {self.path.name} cannot be read: {exc.strerror}"
        if self.identity is not None and (st.st_dev, st.st_ino) != self.identity:
            return f"database file {self.path.name} was replaced; restart to use the new file"
        if not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(
            self.path, os.W_OK
        ):
            return f"database file {self.path.name} is read-only"
        try:
            fs = os.statvfs(self.path.parent)
        except OSError as exc:
            return f"database directory cannot be read: {exc.strerror}"
        if fs.f_flag & os.ST_RDONLY:
            return f"the file system of {self.path.name} is read-only"
        if fs.f_bavail * fs.f_frsize < MIN_FREE_BYTES:
            return f"the disk of {self.path.name} is full"
        return None

    def check(self) -> None:
        reason = self.problem()
        if reason is not None:
            raise StorageUnavailable(reason)

    def install(self, engine: Engine) -> None:
        event.listen(engine, "begin", lambda _conn: self.check())


def sqlite_pragmas(engine: Engine) -> None:
    """Rollback journal, full sync, a busy timeout: no memory-mapped file at all.

    WAL keeps its index in a ``-shm`` file that SQLite maps into memory; when
    that file can no longer be written (read-only or full disk) touching the
    mapping raises SIGBUS and the process dies without a word. The rollback
    journal writes with plain write() calls, which fail with an error SQLite
    turns into SQLITE_READONLY / SQLITE_FULL: a 503, and the service stays up.
    Both services write a few rows a second, far below what it costs.
    """

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        mode = cursor.execute("PRAGMA journal_mode=DELETE").fetchone()
        if mode and str(mode[0]).lower() != "delete":
            log.warning("SQLite kept journal mode %s", mode[0])
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA mmap_size=0")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
