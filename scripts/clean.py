#!/usr/bin/env python3
"""Remove caches, logs and test artifacts (`make clean`). Models, samples and databases stay."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIRS = (".pytest_cache", ".mypy_cache", ".ruff_cache", "htmlcov", "test-artifacts")
FILES = (".coverage", "coverage.xml")


def main() -> int:
    removed = 0
    for name in DIRS:
        path = REPO / name
        if path.is_dir():
            shutil.rmtree(path)
            removed += 1
    for name in FILES:
        path = REPO / name
        if path.exists():
            path.unlink()
            removed += 1
    for cache in REPO.glob("projects/*/**/__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
        removed += 1
    logs = REPO / "logs"
    running = [p.name for p in logs.glob("*.pid")]
    for log in logs.glob("*.log"):
        if log.with_suffix(".pid").name not in running:  # keep logs of running services
            log.unlink()
            removed += 1
    print(f"removed {removed} cache/log/artifact entries")
    if running:
        print(f"kept logs of running services ({', '.join(running)}); `make stop-all` first")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
