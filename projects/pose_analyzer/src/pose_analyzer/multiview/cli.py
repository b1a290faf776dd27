"""`pose-analyzer analyze-multiview`: the subcommand, kept here so cli.py only registers it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _run(args: argparse.Namespace) -> int:
    from pose_analyzer.multiview.recordings import USER_ERRORS, parse_offsets, run_multiview

    try:
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


def _images_by_camera(pattern: str) -> dict[str, list[Path]]:
    """Images grouped by camera: the file name up to its first `_` (cam01_03_int.jpg)."""
    base = Path(pattern)
    files = sorted(base.glob("*")) if base.is_dir() else sorted(Path().glob(pattern))
    out: dict[str, list[Path]] = {}
    for f in files:
        if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"):
            out.setdefault(f.stem.split("_")[0], []).append(f)
    return out


def _calibrate(args: argparse.Namespace) -> int:
    import cv2

    from pose_analyzer.multiview.board import Board, calibrate_rig
    from pose_analyzer.multiview.calibration import CalibrationError, write_pose2sim_toml

    try:
        cols, _, rows = args.board.lower().partition("x")
        aruco = None
        if args.charuco:
            aruco = getattr(cv2.aruco, args.charuco.upper(), None)
            if aruco is None:
                raise CalibrationError(f"unknown ArUco dictionary {args.charuco!r}")
        board = Board(int(cols), int(rows), args.square_mm / 1000, aruco, args.marker_mm / 1000)
        intr = _images_by_camera(args.intrinsics)
        extr = _images_by_camera(args.extrinsics)
        if not intr:
            raise CalibrationError(f"no images found in {args.intrinsics}")

        def load(paths: list[Path]) -> list[np.ndarray]:
            images = []
            for path in paths:
                image = cv2.imread(str(path))
                if image is None:
                    raise CalibrationError(f"cannot read image {path}")
                images.append(np.asarray(image))
            return images

        result = calibrate_rig(
            {k: load(v) for k, v in intr.items()},
            {k: load(v[:1])[0] for k, v in extr.items()},
            board,
        )
    except (CalibrationError, ValueError) as exc:
        print(f"pose-analyzer: error: {exc}", file=sys.stderr)
        return 2
    for name in result.rig.names:
        print(
            f"{name}: intrinsic RMS {result.intrinsic_rms_px[name]:.3f} px, "
            f"extrinsic view {result.extrinsic_error_px[name]:.3f} px"
        )
    print(f"wrote {write_pose2sim_toml(result.rig, args.out)}")
    return 0


def add_calibrate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate-rig",
        help="a Pose2Sim Calib.toml from checkerboard or ChArUco images, error per camera",
    )
    p.add_argument("--board", required=True, help="inner corners COLSxROWS, e.g. 4x7")
    p.add_argument("--square-mm", type=float, required=True, help="square size in mm")
    p.add_argument("--charuco", default=None, help="ArUco dictionary, e.g. DICT_4X4_50")
    p.add_argument("--marker-mm", type=float, default=0.0, help="ChArUco marker size in mm")
    p.add_argument(
        "--intrinsics", required=True, help="folder or glob of <camera>_*.jpg board views"
    )
    p.add_argument(
        "--extrinsics",
        required=True,
        help="folder or glob: one <camera>_*.jpg per camera, the board at one shared pose "
        "(it becomes the world frame)",
    )
    p.add_argument("--out", default="Calib.toml", help="output toml (default Calib.toml)")
    p.set_defaults(func=_calibrate)
