#!/usr/bin/env python3
"""Identity on the committed real detections: id counts, cost, signature spreads.

1. Per clip (projects/pose_analyzer/tests/data/real, MediaPipe full detections of the
   Sports2D and Pose2Sim sample clips): person ids from `identify_offline` and from
   `LiveIdentity` against the labelled number of detected people, and the CPU time of
   identity per frame (median of the repeats).
2. How stable the body-proportion signature is (what `identity.skeleton` uses): for
   every tracklet of at least 30 frames, the per-frame spread of each log limb ratio
   (SIGNATURE_WITHIN), the spread between the signatures of the two halves of the same
   tracklet, divided by sqrt(2) (one tracklet's signature about the person's: pose
   changes, foreshortening and detector noise included; SIGNATURE_BETWEEN), and the
   difference between the signatures of two different people in the same view.

Usage: python bench/bench_identity.py [--repeats 3]
Writes bench/results/identity.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pose_analyzer.detectors.replay import read_keypoints
from pose_analyzer.identity import LiveIdentity, identify_offline
from pose_analyzer.identity.config import IdentityConfig
from pose_analyzer.identity.skeleton import SEGMENTS, TORSO, tracklet_signature
from pose_analyzer.identity.tracklets import TrackletTracker

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "projects" / "pose_analyzer" / "tests" / "data" / "real"
RESULTS = Path(__file__).resolve().parent / "results" / "identity.json"
COMPONENTS = [f"{s}/torso" for s in SEGMENTS[:TORSO]]


def cpu() -> float:
    return time.process_time()


def ids_and_cost(frames: list, repeats: int) -> dict:
    off_t, live_t = [], []
    n_off = n_live = 0
    for _ in range(repeats):
        start = cpu()
        out, _ = identify_offline(frames)
        off_t.append((cpu() - start) / len(frames) * 1000)
        n_off = len({p.track_id for f in out for p in f.people})
        start = cpu()
        ident = LiveIdentity()
        seen = {p.track_id for f in frames for p in ident.update(f)}
        live_t.append((cpu() - start) / len(frames) * 1000)
        n_live = len(seen)
    return {
        "ids_offline": n_off,
        "ids_live": n_live,
        "offline_ms_per_frame": round(statistics.median(off_t), 3),
        "live_ms_per_frame": round(statistics.median(live_t), 3),
    }


def spreads(frames: list) -> dict:
    tracker = TrackletTracker(IdentityConfig())
    for pos, f in enumerate(frames):
        tracker.step(f.people, f.t, pos)
    long = [tr for tr in tracker.all_tracklets() if tr.hits >= 30]
    within, halves, sigs = [], [], []
    for tr in long:
        rows = np.stack(tr.signatures)
        within.append(np.nanstd(rows, axis=0))
        mid = len(rows) // 2
        a, _ = tracklet_signature(rows[:mid])
        b, _ = tracklet_signature(rows[mid:])
        halves.append((a - b) / np.sqrt(2))
        sigs.append(tracklet_signature(rows)[0])
    # Different people: the persons identify_offline makes (its tracker is the same,
    # deterministic, so tracklet ids agree), each person's signature over all its frames.
    _, persons = identify_offline(frames)
    by_tid = {tr.tid: tr for tr in tracker.all_tracklets()}
    person_sig = [
        tracklet_signature(np.stack([s for t in tids for s in by_tid[t].signatures]))[0]
        for tids in persons.values()
    ]
    pairs = [
        np.abs(person_sig[i] - person_sig[j])
        for i in range(len(person_sig))
        for j in range(i + 1, len(person_sig))
    ]
    return {
        "tracklets": len(long),
        "within_frame_std": [np.round(w, 3).tolist() for w in within],
        "half_vs_half": [np.round(h, 3).tolist() for h in halves],
        "person_pair_abs_diff": [np.round(p, 3).tolist() for p in pairs],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    labels = tomllib.loads((REAL / "labels_identity.toml").read_text())
    clips = {}
    all_within, all_halves = [], []
    for clip, label in sorted(labels.items()):
        frames = list(read_keypoints(REAL / f"{clip}.jsonl"))
        row = {"frames": len(frames), "labelled_detected_persons": label["detected_persons"]}
        row.update(ids_and_cost(frames, args.repeats))
        sp = spreads(frames)
        all_within += sp["within_frame_std"]
        all_halves += sp["half_vs_half"]
        row["signature"] = sp
        clips[clip] = row
        print(
            f"{clip:24s} ids offline {row['ids_offline']} live {row['ids_live']} "
            f"(labelled {label['detected_persons']})  "
            f"{row['offline_ms_per_frame']:.2f} / {row['live_ms_per_frame']:.2f} ms/frame"
        )
    within = np.nanmedian(np.array(all_within), axis=0)
    halves = np.sqrt(np.nanmean(np.array(all_halves) ** 2, axis=0))
    summary = {
        "components": COMPONENTS,
        "per_frame_std_median": np.round(within, 3).tolist(),
        "tracklet_signature_spread_rms": np.round(halves, 3).tolist(),
    }
    print("signature components:", COMPONENTS)
    print("per-frame spread (median over tracklets):", summary["per_frame_std_median"])
    print(
        "tracklet signature spread (rms, half vs half):", summary["tracklet_signature_spread_rms"]
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": {"python": platform.python_version(), "cpu": platform.processor()},
                "repeats": args.repeats,
                "clips": clips,
                "signature_summary": summary,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
