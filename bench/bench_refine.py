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

Live section (`--only live`): the live mode of the search (`detectors.LIVE_REFINE`, what
live MediaPipe streams use) against the bare detector, side by side frame by frame in one
run (both detectors open, each frame through one then the other), on every frame of
the clip at its own frame rate (as a stream with realtime off sees it): process CPU ms
and wall ms per frame, medians and means, the extra over the bare detector, most
landmarker calls in one frame, frames the search ran on. Sets: `small_live` (all 230
Sports2D frames, downscaled and letterboxed as above: the search triggers) and
`normal_live` (Pose2Sim single cam01 at 540x960, all 100 frames at 60 fps: it does
not), plus the same live mode with a 5 s scan and with 2 calls per frame, for the
choice of the defaults. Written under the `live` key of bench/results/refine.json;
the other keys are kept as they are (and `--only offline` leaves `live` alone).

Usage: python bench/bench_refine.py [--only offline|live]
Writes bench/results/refine.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from pose_analyzer.detectors import LIVE_REFINE, create_detector
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


def small_set(every: int = 5, limit: int = 46) -> tuple[list[np.ndarray], float]:
    scale, canvas = 0.163, (480, 270)
    frames = []
    for f in read(SAMPLES / "sports2d" / "demo.mp4", every, limit):
        h, w = f.shape[:2]
        sw, sh = round(w * scale), round(h * scale)
        small = cv2.resize(f, (sw, sh), interpolation=cv2.INTER_AREA)
        c = np.full((canvas[1], canvas[0], 3), 114, dtype=np.uint8)
        x0, y0 = (canvas[0] - sw) // 2, (canvas[1] - sh) // 2
        c[y0 : y0 + sh, x0 : x0 + sw] = small
        frames.append(c)
    return frames, every / 30


def normal_set(every: int = 2, limit: int = 50) -> tuple[list[np.ndarray], float]:
    frames = [
        cv2.resize(f, (f.shape[1] // 2, f.shape[0] // 2), interpolation=cv2.INTER_AREA)
        for f in read(SAMPLES / "pose2sim" / "single" / "cam01.mp4", every, limit)
    ]
    return frames, every / 60


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


LIVE_VARIANTS: dict[str, dict] = {
    "live_default": {},
    "live_scan_5s": {"scan_every_s": 5.0},
    "live_2_per_frame": {"max_searches": 2},
}


def run_live(frames: list[np.ndarray], dt: float, repeats: int) -> list[dict]:
    """The bare detector and each live variant, frame by frame side by side."""
    plain = create_detector("mediapipe", "full")
    lives = {
        name: create_detector(
            "mediapipe", "full", refine=True, refine_options={**LIVE_REFINE, **extra}
        )
        for name, extra in LIVE_VARIANTS.items()
    }
    dets: dict[str, object] = {"plain": plain, **lives}
    for det in lives.values():
        assert isinstance(det, RefiningDetector)
        det.crop  # noqa: B018 - wait for the background load before timing
    for det in dets.values():
        det.detect([frames[0]], [0.0])  # type: ignore[attr-defined]
    cpu: dict[str, list[float]] = {n: [] for n in dets}
    wall: dict[str, list[float]] = {n: [] for n in dets}
    found: dict[str, list[int]] = {n: [] for n in dets}
    for r in range(repeats):
        # A fresh search state per repeat; the video-mode detectors need rising times.
        for det in lives.values():
            assert isinstance(det, RefiningDetector)
            det.__dict__.update(_seen=[], _last_tiling=-np.inf, _next_tile=0, stats=RefineStats())
        base = (r + 1) * (len(frames) + 10) * dt
        for k, f in enumerate(frames, start=1):
            t = base + k * dt
            for name, det in dets.items():
                c0, w0 = time.process_time(), time.perf_counter()
                (people,) = det.detect([f], [t])  # type: ignore[attr-defined]
                cpu[name].append((time.process_time() - c0) * 1000)
                wall[name].append((time.perf_counter() - w0) * 1000)
                if r == 0:
                    found[name].append(len(people))
    rows = []
    for name, det in dets.items():
        row = {
            "detector": name,
            "cpu_median_ms": round(statistics.median(cpu[name]), 2),
            "cpu_mean_ms": round(statistics.fmean(cpu[name]), 2),
            "wall_median_ms": round(statistics.median(wall[name]), 2),
            "wall_mean_ms": round(statistics.fmean(wall[name]), 2),
            "extra_cpu_median_ms": round(
                statistics.median(cpu[name]) - statistics.median(cpu["plain"]), 2
            ),
            "extra_cpu_mean_ms": round(
                statistics.fmean(cpu[name]) - statistics.fmean(cpu["plain"]), 2
            ),
            "extra_wall_mean_ms": round(
                statistics.fmean(wall[name]) - statistics.fmean(wall["plain"]), 2
            ),
            "wall_p95_ms": round(float(np.percentile(wall[name], 95)), 1),
            "people_per_frame": round(statistics.fmean(found[name]), 2),
            "frames_with_nobody": sum(1 for n in found[name] if n == 0),
        }
        if isinstance(det, RefiningDetector):
            st = det.stats  # the last repeat's
            row.update(
                searched_frames=st.triggered,
                crops=st.crops,
                tiles=st.tiles,
                found_by_search=st.found,
                max_calls_per_frame=st.max_calls,
                capped_frames=st.capped,
                over_budget=st.over_budget,
            )
        rows.append(row)
    for det in dets.values():
        det.close()  # type: ignore[attr-defined]
    return rows


def live_main(repeats: int) -> dict:
    sets = {"small_live": small_set(1, 10_000), "normal_live": normal_set(1, 10_000)}
    out: dict = {"options": dict(LIVE_REFINE), "repeats": repeats}
    for set_name, (frames, dt) in sets.items():
        rows = run_live(frames, dt, repeats)
        out[set_name] = {"frames": len(frames), "size": list(frames[0].shape[1::-1]), "rows": rows}
        for row in rows:
            print(
                f"{set_name:11s} {row['detector']:17s} cpu {row['cpu_median_ms']:6.1f} median"
                f" / {row['cpu_mean_ms']:6.1f} mean ms (extra {row['extra_cpu_median_ms']:+6.1f}"
                f" / {row['extra_cpu_mean_ms']:+6.1f}), wall p95 {row['wall_p95_ms']:6.1f}"
                f"  people/frame {row['people_per_frame']:.2f}"
                f"  searched {row.get('searched_frames', '-')}"
                f"  max calls {row.get('max_calls_per_frame', '-')}"
            )
    out["when"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=("offline", "live"), default=None)
    parser.add_argument("--repeats", type=int, default=3, help="live: passes over each set")
    args = parser.parse_args()
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if args.only == "live":
        previous["live"] = live_main(args.repeats)
        RESULTS.write_text(json.dumps(previous, indent=2) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)} (key live)")
        return
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
    body = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpu": platform.processor()},
        "sets": results,
    }
    if args.only is None:
        body["live"] = live_main(args.repeats)
    elif "live" in previous:
        body["live"] = previous["live"]  # --only offline keeps the live figures
    RESULTS.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
