"""Worker process entry points, importable without torch.

The API process names these as process targets; only the worker process
imports :mod:`gpu_optimizer.jobs.worker` (and torch), so the service starts fast.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import Any


def child_main(conn: Connection, kind: str, request: dict[str, Any]) -> None:
    from gpu_optimizer.jobs.worker import child_main as run

    run(conn, kind, request)


def noop() -> None:
    """Started once at service startup so the forkserver preloads before the first job."""
