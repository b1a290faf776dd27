#!/usr/bin/env python3
"""`pose-analyzer batch` on a local Ray vs `analyze` one file after another, and Ray's own costs.

Input (``--source videos``, the default): 6 Pose2Sim sample views (100 frames of
1080x1920 each) through MediaPipe full, i.e. real per-file work; or
(``--source keypoints``) the keypoint files exported from them
(projects/pose_analyzer/tests/data/batch), replayed, where the per-file work
is only the analysis and Ray's costs dominate. Measured side by side in one run:

- sequential: `run_analysis` on each file in turn, in this process (what a
  shell loop over `pose-analyzer analyze` does, without its start-up per file);
- `run_batch` on a local Ray with 1..W workers (num_cpus), the batch's wall
  time without Ray's start-up, median of the repeats (each with --force);
- Ray's fixed start-up: `ray.init` to the first task's result, per worker count;
- the round trip of an empty task (submit, run, get) on the local Ray, one at a
  time, and the throughput of many in flight.

``--only jobs`` measures the pose service's upload job instead (jobs.py
``JobRunner``, in this process, without HTTP): the same keypoint upload as a
local job (the service's thread pool) and as a Ray job (ray_jobs.py, a local
Ray with 2 CPUs), alternated, submit to the job row's end, median of the
repeats after one warm-up job each; the Ray job's overhead is the difference.

Usage: python bench/bench_ray.py [--workers 1,2,3] [--repeats 3] [--source videos|keypoints]
       python bench/bench_ray.py --only jobs [--repeats 15]
Writes bench/results/ray.json (batch) or bench/results/ray_jobs.json (jobs).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "projects" / "pose_analyzer" / "tests" / "data" / "batch"
RESULTS = Path(__file__).resolve().parent / "results" / "ray.json"


def _clips(folder: Path) -> list[Path]:
    out = []
    for packed in sorted(DATA.glob("*.jsonl.gz")):
        path = folder / packed.name.removesuffix(".gz")
        path.write_bytes(gzip.decompress(packed.read_bytes()))
        out.append(path)
    return out


def _videos() -> list[Path]:
    samples = REPO / "data" / "samples" / "pose2sim"
    found = [samples / "single" / f"cam0{i}.mp4" for i in range(1, 5)]
    found += [samples / "multi" / f"cam0{i}.mp4" for i in range(1, 3)]
    missing = [p for p in found if not p.is_file()]
    if missing:
        raise SystemExit(f"{missing[0]} is missing: run `make fetch-samples`")
    return found


def _sequential(clips: list[Path], out: Path, repeats: int) -> list[float]:
    from pose_analyzer.pipeline import run_analysis

    run_analysis(clips[0], "squat", out_dir=out / "warm", video=False, progress=False)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i, clip in enumerate(clips):
            run_analysis(clip, "squat", out_dir=out / str(i), video=False, progress=False)
        times.append(time.perf_counter() - start)
    return times


def _ray_runs(clips: list[Path], out: Path, workers: int, repeats: int) -> dict[str, object]:
    import ray

    from gpu_optimizer.cluster import connect
    from pose_analyzer.batch import BatchOptions, run_batch
    from pose_analyzer.storage import Database
    from pose_analyzer.storage.db import upgrade

    start = time.perf_counter()
    conn = connect("local", num_cpus=workers)
    ray.get(ray.remote(lambda: None).remote())
    startup = time.perf_counter() - start
    db = Database(f"sqlite:///{out / f'ray{workers}.db'}")
    upgrade(db.engine)
    times = []
    try:
        # The first batch also starts the workers and imports the pipeline in each.
        first = time.perf_counter()
        options = BatchOptions(exercise="squat", force=True)
        run_batch(clips, out / f"ray{workers}", options, database=db, progress=False)
        cold = time.perf_counter() - first
        for _ in range(repeats):
            begin = time.perf_counter()
            result = run_batch(clips, out / f"ray{workers}", options, database=db, progress=False)
            times.append(time.perf_counter() - begin)
            assert result.failed == 0
        nodes_pids = {a["pid"] for o in result.outcomes for a in o.attempts}
    finally:
        db.dispose()
        conn.close()
    return {
        "workers": workers,
        "startup_s": round(startup, 3),
        "first_batch_s": round(cold, 3),
        "batch_s": [round(t, 3) for t in times],
        "batch_median_s": round(statistics.median(times), 3),
        "worker_processes_used": len(nodes_pids),
    }


def _task_overhead(rounds: int, burst: int) -> dict[str, float]:
    import ray

    from gpu_optimizer.cluster import connect

    conn = connect("local", num_cpus=2)
    try:
        empty = ray.remote(lambda: None)
        ray.get([empty.remote() for _ in range(20)])  # workers started and warm
        round_trips = []
        for _ in range(rounds):
            start = time.perf_counter()
            ray.get(empty.remote())
            round_trips.append(time.perf_counter() - start)
        start = time.perf_counter()
        ray.get([empty.remote() for _ in range(burst)])
        burst_s = time.perf_counter() - start
    finally:
        conn.close()
    return {
        "round_trip_median_ms": round(statistics.median(round_trips) * 1e3, 3),
        "round_trip_p90_ms": round(sorted(round_trips)[int(0.9 * len(round_trips))] * 1e3, 3),
        "burst_tasks": burst,
        "burst_tasks_per_s": round(burst / burst_s, 1),
    }


def _job_overhead(repeats: int, root: Path) -> dict[str, object]:
    """One upload as a local job and as a Ray job, alternated: submit to the row's end."""
    from gpu_optimizer.cluster import connect
    from pose_analyzer.exercises import get_exercise
    from pose_analyzer.jobs import JobRunner
    from pose_analyzer.metrics import PoseMetrics, create_registry
    from pose_analyzer.settings import Settings
    from pose_analyzer.storage import Database

    clip = _clips(root / "clips")[0]  # pose2sim_multi_cam02: real MediaPipe keypoints
    exercise = get_exercise("squat")
    db = Database(f"sqlite:///{root / 'jobs.db'}")
    db.migrate()
    conn = connect("local", num_cpus=2)
    runners = {
        name: JobRunner(
            db,
            PoseMetrics(create_registry()),
            root / name,
            Settings().models_dir,
            ray_address="(this process's local Ray)" if name == "ray" else None,
        )
        for name in ("local", "ray")
    }
    times: dict[str, list[float]] = {"local": [], "ray": []}
    reports: dict[str, dict[str, object]] = {}

    def one(name: str, i: int) -> float:
        upload = root / f"{name}-{i}{clip.suffix}"
        upload.write_bytes(clip.read_bytes())
        start = time.perf_counter()
        job = runners[name].submit(upload, clip.name, exercise, "replay", None)
        while (row := db.get_job(job["id"])) is not None and row.state in ("queued", "running"):
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        assert row is not None and row.state == "succeeded", (name, row and row.error)
        described = runners[name].describe_id(job["id"]) or {}
        reports[name] = described["report"]
        return elapsed

    try:
        warm = {name: one(name, -1) for name in runners}  # Ray: starts and imports a worker
        for i in range(repeats):
            for name in ("local", "ray") if i % 2 == 0 else ("ray", "local"):
                times[name].append(one(name, i))
    finally:
        for runner in runners.values():
            runner.shutdown()
        db.dispose()
        conn.close()
    assert reports["local"] == reports["ray"], "the Ray job's report differs from the local one"
    local, on_ray = statistics.median(times["local"]), statistics.median(times["ray"])
    frames = reports["ray"]["frames"]
    return {
        "upload": clip.name,
        "frames": frames,
        "repeats": repeats,
        "first_job_s": {k: round(v, 3) for k, v in warm.items()},
        "local_job_s": [round(t, 4) for t in times["local"]],
        "ray_job_s": [round(t, 4) for t in times["ray"]],
        "local_job_median_s": round(local, 4),
        "ray_job_median_s": round(on_ray, 4),
        "ray_overhead_median_s": round(on_ray - local, 4),
        "ray_vs_local": round(on_ray / local, 3),
        "reports_equal": True,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,3", help="local Ray worker counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--source",
        choices=("videos", "keypoints"),
        default="videos",
        help="videos: 6 Pose2Sim views through MediaPipe; keypoints: the exported files, replayed",
    )
    parser.add_argument("--only", choices=("batch", "jobs"), default="batch")
    args = parser.parse_args()
    if args.only == "jobs":
        repeats = args.repeats if args.repeats != 3 else 15
        with tempfile.TemporaryDirectory(prefix="bench-ray-jobs-") as tmp:
            (Path(tmp) / "clips").mkdir()
            jobs = _job_overhead(repeats, Path(tmp))
        jobs = {
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "note": "2-core machine shared with other jobs while measured"},
            **jobs,
            "command": f"python bench/bench_ray.py --only jobs --repeats {repeats}",
        }  # fmt: skip
        out = RESULTS.with_name("ray_jobs.json")
        out.write_text(json.dumps(jobs, indent=2) + "\n")
        print(json.dumps(jobs, indent=2))
        return 0
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        root = Path(tmp)
        (root / "clips").mkdir()
        clips = _videos() if args.source == "videos" else _clips(root / "clips")
        from pose_analyzer.batch import frame_count

        frames = sum(frame_count(c) or 0 for c in clips)
        sequential = _sequential(clips, root / "seq", args.repeats)
        runs = [_ray_runs(clips, root, w, args.repeats) for w in workers]
        overhead = _task_overhead(rounds=200, burst=1000)
    seq = statistics.median(sequential)
    for run in runs:
        run["speedup_vs_sequential"] = round(seq / float(run["batch_median_s"]), 3)  # type: ignore[arg-type]
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "note": "2-core CI-class machine shared with five other jobs while measured; "
            "absolute times are noisy, the ratios were measured side by side in one run",
        },
        "input": {
            "clips": len(clips),
            "frames": frames,
            "backend": "mediapipe (full)" if args.source == "videos" else "replay",
        },
        "sequential_s": [round(t, 3) for t in sequential],
        "sequential_median_s": round(seq, 3),
        "local_ray": runs,
        "empty_task": overhead,
        "command": f"python bench/bench_ray.py --workers {args.workers} "
        f"--repeats {args.repeats} --source {args.source}",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
