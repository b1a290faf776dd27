#!/usr/bin/env python3
"""Cost of the re-detection search (RefiningDetector) where it triggers and where not.

Two sets of real frames, each run through the plain MediaPipe full detector (video
mode) and through the refining one (same inner detector; image-mode crop landmarker)
with a live budget (40 ms, no scan), the offline default (120 ms, scan for unseen people
every 0.5 s) and an offline budget of 2 s (with the scan), one after the other in one
run, frame by frame:

- small: the Sports2D demo (every 5th frame) downscaled so the athlete is ~60 px tall
  and letterboxed into 480x270: the plain detector misses the people, the search runs;
- normal: the Pose2Sim single-person view cam01 at half size (540x960, the person
  ~370 px tall): the plain detector finds the person, the search should not run.

Per set and detector: median and mean wall ms per frame, the extra ms per frame over
the plain detector (medians, and means: a difference of two runs, noisy on a shared
machine), the refine step alone timed inside the same run (the exact extra: the
search where it ran, bookkeeping where not), how many frames the search ran on, and
people found per frame.

Usage: python bench/bench_refine.py
Writes bench/results/refine.json.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from pose_analyzer.detectors import create_detector
from pose_analyzer.detectors.refine import RefineStats, RefiningDetector
from pose_analyzer.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "refine.json"
SAMPLES = get_settings().data_dir / "samples"


def read(path: Path, every: int, limit: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SystemExit(f"cannot open {path}; run scripts/fetch_samples.py first")
    out, i = [], 0
    while len(out) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        if i % every == 0:
            out.append(frame)
        i += 1
    cap.release()
    return out


def small_set() -> tuple[list[np.ndarray], float]:
    scale, canvas = 0.163, (480, 270)
    frames = []
    for f in read(SAMPLES / "sports2d" / "demo.mp4", 5, 46):
        h, w = f.shape[:2]
        sw, sh = round(w * scale), round(h * scale)
        small = cv2.resize(f, (sw, sh), interpolation=cv2.INTER_AREA)
        c = np.full((canvas[1], canvas[0], 3), 114, dtype=np.uint8)
        x0, y0 = (canvas[0] - sw) // 2, (canvas[1] - sh) // 2
        c[y0 : y0 + sh, x0 : x0 + sw] = small
        frames.append(c)
    return frames, 5 / 30


def normal_set() -> tuple[list[np.ndarray], float]:
    frames = [
        cv2.resize(f, (f.shape[1] // 2, f.shape[0] // 2), interpolation=cv2.INTER_AREA)
        for f in read(SAMPLES / "pose2sim" / "single" / "cam01.mp4", 2, 50)
    ]
    return frames, 2 / 60


def run(name: str, frames: list[np.ndarray], dt: float, refine: dict | None) -> dict:
    det = create_detector("mediapipe", "full", refine=refine is not None, refine_options=refine)
    if isinstance(det, RefiningDetector):
        det.crop  # noqa: B018 - load (and warm up) the crop model before timing
    det.detect([frames[0]], [0.0])  # warm up the inner detector too
    if isinstance(det, RefiningDetector):
        det.stats = RefineStats()
    per_frame, search, found = [], [], []
    for k, f in enumerate(frames, start=1):
        start = time.perf_counter()
        if isinstance(det, RefiningDetector):
            # The same work as det.detect, timed in its two parts: the extra per frame
            # is the refine step itself, measured, not a difference of two noisy runs.
            (people,) = det.inner.detect([f], [k * dt])
            mid = time.perf_counter()
            people = det.refine(f, k * dt, people)
            search.append((time.perf_counter() - mid) * 1000)
        else:
            (people,) = det.detect([f], [k * dt])
        per_frame.append((time.perf_counter() - start) * 1000)
        found.append(len(people))
    stats = det.stats if isinstance(det, RefiningDetector) else None
    det.close()
    row = {
        "detector": name,
        "median_ms": round(statistics.median(per_frame), 2),
        "mean_ms": round(statistics.fmean(per_frame), 2),
        "people_per_frame": round(statistics.fmean(found), 2),
        "frames_with_nobody": sum(1 for n in found if n == 0),
        "_per_frame": per_frame,
    }
    if stats is not None:
        row.update(
            refine_median_ms=round(statistics.median(search), 3),
            refine_mean_ms=round(statistics.fmean(search), 3),
            refine_max_ms=round(max(search), 1),
        )
        row.update(
            searched_frames=stats.triggered,
            crops=stats.crops,
            tiles=stats.tiles,
            found_by_search=stats.found,
            over_budget=stats.over_budget,
        )
    return row


def main() -> None:
    sets = {"small": small_set(), "normal": normal_set()}
    results = {}
    for set_name, (frames, dt) in sets.items():
        rows = [
            run("plain", frames, dt, None),
            # Live would search only for the lost (no scan); offline (create_detector's
            # refine=True) also scans for people never picked up, every 0.5 s.
            run("refine_live_40ms", frames, dt, {"budget_ms": 40, "scan_every_s": None}),
            run("refine_offline_default", frames, dt, {}),
            run("refine_offline_2s", frames, dt, {"budget_ms": 2000}),
        ]
        plain = rows[0]["_per_frame"]
        for row in rows:
            pf = row.pop("_per_frame")
            row["extra_median_ms"] = round(statistics.median(pf) - statistics.median(plain), 2)
            row["extra_mean_ms"] = round(statistics.fmean(pf) - statistics.fmean(plain), 2)
        results[set_name] = {
            "frames": len(frames),
            "size": list(frames[0].shape[1::-1]),
            "rows": rows,
        }
        for row in rows:
            print(
                f"{set_name:6s} {row['detector']:18s} {row['median_ms']:7.1f} ms/frame "
                f"(extra {row['extra_median_ms']:+6.1f} median, {row['extra_mean_ms']:+6.1f} mean)"
                f"  people/frame {row['people_per_frame']:.2f}"
                f"  searched {row.get('searched_frames', '-')}"
                f"  refine step {row.get('refine_median_ms', 0):.2f} median"
                f" / {row.get('refine_mean_ms', 0):.2f} mean ms"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": {"python": platform.python_version(), "cpu": platform.processor()},
                "sets": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
