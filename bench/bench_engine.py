#!/usr/bin/env python3
"""The analysis engine: its per-frame cost against the detector, start-up, real-footage accuracy.

1. CPU time per frame of the bare MediaPipe detector (full model) on the decoded
   frames of the Sports2D demo clip, against the detector plus the whole engine
   (live: identity, angles, One-Euro, counting, scoring, anomalies, roles per
   frame; offline: the same frames, then the recording analyzed at the end) on
   the same frames in the same run. Passes alternate (detector, live, offline,
   detector, ...) so that load from other processes hits all alike; ratios are
   of medians. The engine's share is the CPU time of the thread that runs it,
   during its calls; the process's CPU time over the same calls is recorded
   beside it (`engine_process_cpu_ms_per_frame`): were MediaPipe's worker
   threads still running during the engine's calls, it would be larger (it is
   not: the detector returns when its graph is done). Also the engine alone
   per frame on the cached detections, no detector in between: the same code
   costs about half as much there, because after each inference of the
   detector it runs with cold caches (measured, docs/engine.md).
2. Start-up, wall time from process start: `pose-analyzer exercises` to exit, and
   `pose-analyzer analyze` until its first frame reaches the engine (keypoint file;
   video with MediaPipe, model load included). Medians of --startup-runs.
3. Real-footage accuracy on the committed regression set (cached MediaPipe full
   detections, tests/data/real): per clip, person ids in the report against the
   people labelled, and the athlete's rep count against the labelled count.

Usage: python bench/bench_engine.py [--repeats 2] [--startup-runs 5]
Writes bench/results/engine.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "engine.json"
REAL = ROOT / "projects" / "pose_analyzer" / "tests" / "data" / "real"
DEMO = ROOT / "data" / "samples" / "sports2d" / "demo.mp4"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _frames() -> tuple[list[Any], float]:
    from pose_analyzer.video import open_video

    with open_video(DEMO) as src:
        return [image for _, _, image in src], src.fps


def _pass(kind: str, images: list[Any], fps: float) -> dict[str, float]:
    """One pass over the frames: 'detector', 'live' or 'offline'; CPU ms per frame."""
    from pose_analyzer.detectors.mediapipe_backend import MediaPipeDetector
    from pose_analyzer.engine import LiveEngine, analyze_recording
    from pose_analyzer.keypoints import FramePoses

    detector = MediaPipeDetector("full")
    engine = LiveEngine("jumping_jack") if kind == "live" else None
    frames = []
    engine_cpu = 0.0
    engine_proc = 0.0
    h, w = images[0].shape[:2]
    try:
        cpu0 = cpu_seconds()
        for i, image in enumerate(images):
            people = detector.detect_one(image, i / fps)
            if kind == "detector":
                continue
            frame = FramePoses(i, i / fps, w, h, people)
            if engine is not None:
                p0, e0 = cpu_seconds(), time.thread_time()
                engine.update(frame)
                engine_cpu += time.thread_time() - e0
                engine_proc += cpu_seconds() - p0
            else:
                frames.append(frame)
        if kind == "offline":
            p0, e0 = cpu_seconds(), time.thread_time()
            analyze_recording(frames, "jumping_jack", fps)
            engine_cpu += time.thread_time() - e0
            engine_proc += cpu_seconds() - p0
        elif engine is not None:
            p0, e0 = cpu_seconds(), time.thread_time()
            engine.finish()
            engine_cpu += time.thread_time() - e0
            engine_proc += cpu_seconds() - p0
        total = cpu_seconds() - cpu0
    finally:
        detector.close()
    n = len(images)
    return {
        "cpu_ms_per_frame": 1000 * total / n,
        "engine_cpu_ms_per_frame": 1000 * engine_cpu / n,
        "engine_process_cpu_ms_per_frame": 1000 * engine_proc / n,
    }


def engine_cost(repeats: int) -> dict[str, Any]:
    images, fps = _frames()
    runs: dict[str, list[dict[str, float]]] = {"detector": [], "live": [], "offline": []}
    for _ in range(repeats):
        for kind in runs:
            runs[kind].append(_pass(kind, images, fps))
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    det = med["detector"]["cpu_ms_per_frame"]
    return {
        "clip": "sports2d demo.mp4 (1768x994, 230 frames), MediaPipe full",
        "repeats": repeats,
        "detector_cpu_ms_per_frame": round(det, 2),
        "live_engine_cpu_ms_per_frame": round(med["live"]["engine_cpu_ms_per_frame"], 3),
        "offline_engine_cpu_ms_per_frame": round(med["offline"]["engine_cpu_ms_per_frame"], 3),
        # The whole process's CPU time over the engine's calls (all threads).
        "live_engine_process_cpu_ms_per_frame": round(
            med["live"]["engine_process_cpu_ms_per_frame"], 3
        ),
        # Whole pass over bare detector pass; the engine's own share measured inside the pass.
        "live_ratio_whole_pass": round(med["live"]["cpu_ms_per_frame"] / det, 4),
        "offline_ratio_whole_pass": round(med["offline"]["cpu_ms_per_frame"] / det, 4),
        "live_ratio_engine_share": round(1 + med["live"]["engine_cpu_ms_per_frame"] / det, 4),
        "offline_ratio_engine_share": round(1 + med["offline"]["engine_cpu_ms_per_frame"] / det, 4),
        "goal_ratio": 1.05,
        "runs": runs,
    }


def engine_alone() -> dict[str, float]:
    """Engine per frame on the cached detections: no detector, no decode.

    Also the live engine with the caches evicted before every frame (64 MiB written
    between frames, outside the timing): how much of the engine's cost inside the
    detector's pass is the same code running cold after each inference."""
    import numpy as np

    from pose_analyzer.detectors.replay import read_keypoints
    from pose_analyzer.engine import LiveEngine, analyze_recording
    from pose_analyzer.engine.modes import identify_recording

    frames = list(read_keypoints(REAL / "sports2d_demo.jsonl"))
    known, _ = identify_recording(frames)  # person ids given: the engine without identity
    live_ms, off_ms, bare_ms, cold_ms = [], [], [], []
    evict = np.ones(64 * 1024 * 1024 // 8)
    for _ in range(3):
        engine = LiveEngine("jumping_jack")
        spent = 0.0
        for f in frames:
            evict *= 1.0
            t0 = time.thread_time()
            engine.update(f)
            spent += time.thread_time() - t0
        cold_ms.append(1000 * spent / len(frames))
    for _ in range(5):
        engine = LiveEngine("jumping_jack")
        t0 = time.thread_time()
        for f in known:
            engine.update(f)
        engine.finish()
        bare_ms.append(1000 * (time.thread_time() - t0) / len(known))
        engine = LiveEngine("jumping_jack")
        t0 = time.thread_time()
        for f in frames:
            engine.update(f)
        engine.finish()
        live_ms.append(1000 * (time.thread_time() - t0) / len(frames))
        t0 = time.thread_time()
        analyze_recording(frames, "jumping_jack", 30.0)
        off_ms.append(1000 * (time.thread_time() - t0) / len(frames))
    return {
        "live_cpu_ms_per_frame": round(statistics.median(live_ms), 3),
        "offline_cpu_ms_per_frame": round(statistics.median(off_ms), 3),
        "live_without_identity_cpu_ms_per_frame": round(statistics.median(bare_ms), 3),
        "live_caches_evicted_cpu_ms_per_frame": round(statistics.median(cold_ms), 3),
    }


_FIRST_FRAME = """
import os, sys
from pose_analyzer import recordings
def first(frames, *a, **k):
    next(iter(frames))
    print("FIRST", flush=True)
    os._exit(0)
recordings.analyze_recording = first
from pose_analyzer.cli import main
main(sys.argv[1:])
"""


def _wall(cmd: list[str], until: str | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if until is not None:
        for line in proc.stdout:
            if line.startswith(until):
                break
        elapsed = time.perf_counter() - t0
        proc.wait()
        return elapsed
    proc.communicate()
    return time.perf_counter() - t0


def startup(runs: int) -> dict[str, Any]:
    exe = sys.executable
    out = tempfile.mkdtemp(prefix="bench-engine-")
    keypoints = str(REAL / "sports2d_demo.jsonl")
    analyze = ["analyze", "--exercise", "jumping_jack", "--no-video", "--out", out]
    cases: dict[str, tuple[list[str], str | None]] = {
        "exercises_s": ([exe, "-m", "pose_analyzer.cli", "exercises"], None),
        "analyze_keypoints_first_frame_s": (
            [exe, "-c", _FIRST_FRAME, *analyze, keypoints],
            "FIRST",
        ),
        "analyze_video_first_frame_s": ([exe, "-c", _FIRST_FRAME, *analyze, str(DEMO)], "FIRST"),
        "python_only_s": ([exe, "-c", "pass"], None),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(runs):
        for name, (cmd, until) in cases.items():
            times[name].append(_wall(cmd, until))
    result: dict[str, Any] = {k: round(statistics.median(v), 3) for k, v in times.items()}
    result["goal_s"] = 1.5
    result["runs"] = runs
    return result


def accuracy() -> dict[str, Any]:
    from pose_analyzer.detectors.replay import read_keypoints
    from pose_analyzer.engine import analyze_recording

    identity = tomllib.loads((REAL / "labels_identity.toml").read_text())
    reps = tomllib.loads((REAL / "labels_reps.toml").read_text())
    clips = {}
    for path in sorted(REAL.glob("*.jsonl")):
        name = path.stem
        label = reps.get(name)
        exercise = label["exercise"] if label else "squat"
        frames = list(read_keypoints(path))
        report = analyze_recording(frames, exercise, 30.0 if "sports2d" in name else 60.0).report
        entry: dict[str, Any] = {
            "people_labelled": identity.get(name, {}).get("people"),
            "people_detected_labelled": identity.get(name, {}).get("detected_persons"),
            "person_ids": len(report.people),
        }
        refined = REAL / "refined" / path.name
        if refined.is_file():
            # What offline analysis sees: the detector with the re-detection search.
            r_frames = list(read_keypoints(refined))
            fps = 30.0 if "sports2d" in name else 60.0
            r_report = analyze_recording(r_frames, exercise, fps).report
            entry["person_ids_refined"] = len(r_report.people)
            entry["people_labelled_refined"] = identity.get(name, {}).get(
                "refined_persons", identity.get(name, {}).get("detected_persons")
            )
        if label:
            true = sum(p["reps"] for p in label["person"] if p["role"] == "athlete")
            got = sum(p.rep_count for p in report.people if p.role == "athlete")
            entry.update(
                exercise=exercise,
                reps_labelled=true,
                reps_counted=got,
                count_error=abs(got - true),
                bystander_reps=sum(p.rep_count for p in report.people if p.role == "bystander"),
            )
            auto = analyze_recording(frames, "auto", 30.0).report
            entry["auto_reps_counted"] = sum(
                p.rep_count for p in auto.people if p.role == "athlete"
            )
        clips[name] = entry
    return clips


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--startup-runs", type=int, default=5)
    args = parser.parse_args()
    results = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        },
        "startup": startup(args.startup_runs),
        "engine_alone": engine_alone(),
        "accuracy": accuracy(),
        "cost_vs_detector": engine_cost(args.repeats),
    }
    results["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    summary = {k: v for k, v in results["cost_vs_detector"].items() if k != "runs"}
    print(json.dumps({**results, "cost_vs_detector": summary}, indent=2))


if __name__ == "__main__":
    main()
