"""`pose-analyzer analyze-multiview`: the subcommand, kept here so cli.py only registers it."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _run(args: argparse.Namespace) -> int:
    from pose_analyzer.multiview.pipeline import USER_ERRORS, parse_offsets, run_multiview

    try:
        from pathlib import Path

        names = [Path(v).stem for v in args.videos]
        offsets = parse_offsets(args.offsets, names, args.fps)
        result, paths = run_multiview(
            args.calibration,
            args.videos,
            args.exercise,
            out_dir=args.out,
            backend=args.backend,
            model=args.model,
            video=not args.no_video,
            offsets_s=offsets,
            trim=args.trim,
            by_order=args.by_order,
        )
    except USER_ERRORS as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        print(f"pose-analyzer: error: {message}", file=sys.stderr)
        return 2
    for note in result.rig.notes:
        print(f"note: {note}")
    people = ", ".join(
        f"person {p.report.id}: {p.report.rep_count} reps, "
        f"{p.mean_error_px:.1f} px mean reprojection error"
        for p in result.people
    )
    summary = people or "nobody fused"
    print(f"{result.report.frames} instants from {len(result.views)} views, {summary}")
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def add_multiview_parser(sub: Any) -> None:
    p = sub.add_parser(
        "analyze-multiview",
        help="fuse calibrated views into 3D people: report, TRC, 3D angles, reprojection",
    )
    p.add_argument("videos", nargs="+", help="one video (or keypoint .jsonl) per camera")
    p.add_argument(
        "--calibration",
        required=True,
        help="Pose2Sim Calib.toml, Qualisys .qca.txt, or OpenCV .json/.yml",
    )
    p.add_argument("--exercise", required=True, help="exercise name (see `exercises`)")
    p.add_argument("--backend", choices=("mediapipe", "yolo"), default="mediapipe")
    p.add_argument("--model", default=None, help="lite|full|heavy or a model file path")
    p.add_argument("--out", default="analysis", help="output directory (default analysis)")
    p.add_argument("--no-video", action="store_true", help="do not write annotated videos")
    p.add_argument(
        "--offsets",
        default=None,
        help="per-camera clock offsets, e.g. cam02=0.05,cam03=3f (seconds, or frames with f)",
    )
    p.add_argument("--fps", type=float, default=None, help="frame rate for frame offsets")
    p.add_argument("--trim", action="store_true", help="keep only the span all views share")
    p.add_argument(
        "--by-order", action="store_true", help="pair videos with cameras in order, not by name"
    )
    p.set_defaults(func=_run)
