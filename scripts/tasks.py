#!/usr/bin/env python3
"""Run a pixi task without pixi: the same command, under the uv environment.

pixi.toml's [tasks] table is the one place where the commands behind the
Makefile targets are written. With pixi installed, `make X` is `pixi run X`;
without it, `make X` is `uv run python scripts/tasks.py X`, which runs the
task's `depends-on` first and then its `cmd` in bash, from the repository
root, with extra arguments appended (as pixi does).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def load_tasks(manifest: Path = REPO / "pixi.toml") -> dict[str, dict]:
    with manifest.open("rb") as fh:
        raw = tomllib.load(fh).get("tasks", {})
    return {name: ({"cmd": t} if isinstance(t, str) else t) for name, t in raw.items()}


def order(tasks: dict[str, dict], name: str, seen: list[str] | None = None) -> list[str]:
    """Dependencies first, each task once."""
    seen = [] if seen is None else seen
    if name not in tasks:
        known = ", ".join(sorted(tasks))
        raise SystemExit(f"error: no task {name!r} in pixi.toml; known tasks: {known}")
    for dep in tasks[name].get("depends-on", []):
        order(tasks, dep, seen)
    if name not in seen:
        seen.append(name)
    return seen


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit("usage: tasks.py TASK [ARGS...]")
    tasks = load_tasks()
    name, extra = argv[0], argv[1:]
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for task in order(tasks, name):
        cmd = tasks[task]["cmd"]
        if task == name and extra:
            cmd = " ".join([cmd, *(_quote(a) for a in extra)])
        print(f"✨ {task}: {cmd}", file=sys.stderr, flush=True)
        rc = subprocess.run(["bash", "-c", cmd], cwd=REPO, env=env).returncode
        if rc != 0:
            return rc
    return 0


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
