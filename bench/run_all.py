#!/usr/bin/env python3
"""Run every benchmark script (bench/bench_*.py) in turn (`make bench`).

Each script measures side by side in one run, prints its figures and writes
bench/results/<name>.json. Pass names to run a subset: `make bench ARGS=...`
is not needed; `python bench/run_all.py biomechanics` works.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(BENCH.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if any(name in s.stem for name in argv)]
    if not scripts:
        print("no benchmark matched", file=sys.stderr)
        return 1
    failed = []
    for script in scripts:
        print(f"=== {script.stem}", flush=True)
        start = time.monotonic()
        rc = subprocess.run([sys.executable, str(script)], cwd=BENCH.parent).returncode
        print(f"=== {script.stem}: exit {rc} in {time.monotonic() - start:.1f} s", flush=True)
        if rc != 0:
            failed.append(script.stem)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
