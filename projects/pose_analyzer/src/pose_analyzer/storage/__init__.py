"""Sessions, reps and anomalies in a database (SQLite by default, PostgreSQL via DATABASE_URL)."""

from pose_analyzer.storage.db import Database
from pose_analyzer.storage.models import AnomalyRow, Base, JobRow, RepRow, SessionRow

__all__ = ["AnomalyRow", "Base", "Database", "JobRow", "RepRow", "SessionRow"]
