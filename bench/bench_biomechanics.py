#!/usr/bin/env python3
"""Biomechanics throughput: angle sets per second on one core.

One angle set = every angle of docs/angles.md (13 values, confidence
gated) for one person in one frame. The input is 1,000,000 synthetic poses
(a standing skeleton with 3 px noise and 2% low-confidence joints), processed
in chunks by `compute_angles`, single-threaded. Also timed: angular velocity
and acceleration over the whole series, and the offline smoothing
(short-gap interpolation + zero-phase Butterworth) of one 1,000,000-frame
person track. Goal: >= 1,000,000 angle sets/s.

Usage: python bench/bench_biomechanics.py [--frames 1000000] [--repeats 5]
Writes bench/results/biomechanics.json.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from pose_analyzer.analysis import AnalysisConfig, angle_kinematics, smooth_offline  # noqa: E402
from pose_analyzer.biomechanics import NUM_ANGLES, compute_angles  # noqa: E402
from pose_analyzer.keypoints import JOINT_INDEX, NUM_JOINTS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "biomechanics.json"
CHUNK = 65536
GOAL = 1_000_000

STANDING = {
    "nose": (960, 200), "left_eye": (975, 190), "right_eye": (945, 190),
    "left_ear": (990, 195), "right_ear": (930, 195), "left_shoulder": (1045, 300),
    "right_shoulder": (875, 300), "left_elbow": (1060, 450), "right_elbow": (860, 450),
    "left_wrist": (1065, 580), "right_wrist": (855, 580), "left_hip": (1005, 560),
    "right_hip": (915, 560), "left_knee": (1010, 760), "right_knee": (910, 760),
    "left_ankle": (1012, 950), "right_ankle": (908, 950), "left_heel": (1000, 975),
    "right_heel": (920, 975), "left_foot_index": (1040, 990), "right_foot_index": (880, 990),
}  # fmt: skip


def synthetic_poses(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.zeros((NUM_JOINTS, 2), np.float32)
    for name, xy in STANDING.items():
        base[JOINT_INDEX[name]] = xy
    kp = np.empty((n, NUM_JOINTS, 3), np.float32)
    kp[..., :2] = base + rng.normal(0, 3.0, (n, NUM_JOINTS, 2)).astype(np.float32)
    kp[..., 2] = np.where(rng.random((n, NUM_JOINTS)) < 0.02, 0.2, 0.95)
    return kp


def angles_throughput(kp: np.ndarray, out: np.ndarray) -> float:
    start = time.perf_counter()
    for i in range(0, len(kp), CHUNK):
        out[i : i + CHUNK] = compute_angles(kp[i : i + CHUNK])
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    kp = synthetic_poses(args.frames)
    out = np.empty((args.frames, NUM_ANGLES), np.float32)
    angles_throughput(kp[:CHUNK], out[:CHUNK])  # warm-up
    runs = [angles_throughput(kp, out) for _ in range(args.repeats)]
    best, median = min(runs), statistics.median(runs)
    t = np.arange(args.frames) / 60.0
    start = time.perf_counter()
    angle_kinematics(out.astype(np.float64), t)
    kinematics_s = time.perf_counter() - start
    start = time.perf_counter()
    smooth_offline(out.astype(np.float64), 60.0, AnalysisConfig())
    smoothing_s = time.perf_counter() - start
    result = {
        "benchmark": "biomechanics",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cores_used": 1,
        },
        "frames": args.frames,
        "angles_per_set": NUM_ANGLES,
        "chunk": CHUNK,
        "repeats": args.repeats,
        "angle_sets_per_s_median": round(args.frames / median),
        "angle_sets_per_s_best": round(args.frames / best),
        "seconds_per_run": [round(r, 4) for r in runs],
        "kinematics_frames_per_s": round(args.frames / kinematics_s),
        "offline_smoothing_frames_per_s": round(args.frames / smoothing_s),
        "nan_fraction": round(float(np.isnan(out).mean()), 4),
        "goal_angle_sets_per_s": GOAL,
        "goal_met": args.frames / median >= GOAL,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
