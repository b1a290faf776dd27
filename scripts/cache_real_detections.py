"""Run MediaPipe once over the real sample clips and cache the raw detections.

The cached files (tests/data/real/*.jsonl in projects/pose_analyzer) let the identity
tests run on real detections without MediaPipe. People carry no "id": identity is
what the tests check, so the cache holds only what the detector said. Each person
also keeps the detector's box (over all 33 BlazePose landmarks) and score.

With --refine the detector is the one offline analysis uses (`create_detector(...,
refine=True)`: the re-detection search of detectors/refine.py, with its scan for people
the video-mode landmarker never picked up) and the files go to tests/data/real/refined/.

Usage: uv run python scripts/cache_real_detections.py [--model full] [--refine] [CLIP ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from pose_analyzer.detectors import create_detector
from pose_analyzer.keypoints import JOINTS

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data" / "samples"
OUT = ROOT / "projects" / "pose_analyzer" / "tests" / "data" / "real"
CLIPS = {
    "sports2d_demo": SAMPLES / "sports2d" / "demo.mp4",
    **{
        f"pose2sim_{kind}_cam0{i}": SAMPLES / "pose2sim" / kind / f"cam0{i}.mp4"
        for kind in ("single", "multi")
        for i in range(1, 5)
    },
}


def cache(name: str, video: Path, model: str, refine: bool = False) -> Path:
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise SystemExit(f"cannot open {video}; run scripts/fetch_samples.py first")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    out = (OUT / "refined" if refine else OUT) / f"{name}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    # A generous budget, so that what the search finds does not depend on the load.
    opts = {"budget_ms": 2000.0}
    det = create_detector(
        "mediapipe", model, refine=refine, refine_options=opts, mode="video", num_poses=4
    )
    with out.open("w") as fh:
        index = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            t = index / fps
            people = []
            for p in det.detect([frame], [t])[0]:
                kp = p.keypoints
                ok_j = np.isfinite(kp[:, :2]).all(axis=1)
                people.append(
                    {
                        "score": round(float(p.score), 4),
                        "box": [round(float(v), 2) for v in (p.box or ())],
                        "keypoints": {
                            JOINTS[j]: [
                                round(float(kp[j, 0]), 2),
                                round(float(kp[j, 1]), 2),
                                round(float(kp[j, 2]), 4),
                            ]
                            for j in np.flatnonzero(ok_j)
                        },
                    }
                )
            h, w = frame.shape[:2]
            rec = {"t": round(t, 6), "frame": index, "width": w, "height": h, "people": people}
            fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
            index += 1
    cap.release()
    det.close()
    stats = getattr(det, "stats", None)
    if stats is not None:  # what the search did on this clip (RefineStats)
        print(f"{name}: {stats}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clips", nargs="*", default=list(CLIPS), help=", ".join(CLIPS))
    ap.add_argument("--model", default="full")
    ap.add_argument("--refine", action="store_true", help="the offline detector (refine.py)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for name in args.clips:
        print(cache(name, CLIPS[name], args.model, args.refine), flush=True)


if __name__ == "__main__":
    main()
