"""`pose-analyzer` command line."""

from __future__ import annotations

import argparse
import sys


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pose_analyzer.settings import get_settings

    settings = get_settings()
    uvicorn.run(
        "pose_analyzer.api:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level=settings.log_level,
    )
    return 0


def _fail(message: str) -> int:
    print(f"pose-analyzer: error: {message}", file=sys.stderr)
    return 2


def _analyze(args: argparse.Namespace) -> int:
    from pose_analyzer.engine.config import EngineConfig
    from pose_analyzer.recordings import USER_ERRORS, run_analysis

    try:
        report, paths = run_analysis(
            args.input,
            args.exercise,
            backend=args.backend,
            model=args.model,
            out_dir=args.out,
            video=not args.no_video,
            export_keypoints=args.export_keypoints,
            config=EngineConfig(calibrate=False) if args.no_calibrate else None,
            refine=not args.no_refine,
        )
    except USER_ERRORS as exc:
        return _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
    reps = ", ".join(
        f"person {p.id} ({p.role}): {p.rep_count} reps"
        + (f" of {p.drive['angle']}" if p.drive and p.drive.get("angle") else "")
        for p in report.people
    )
    print(f"{report.frames} frames, {reps or 'nobody detected'}")
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def _exercises(args: argparse.Namespace) -> int:
    from pose_analyzer.exercises.registry import describe_exercises
    from pose_analyzer.exercises.schema import ExerciseDefinitionError

    try:
        lines = describe_exercises()
    except ExerciseDefinitionError as exc:
        return _fail(str(exc))
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pose-analyzer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP/WebSocket service")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8001)")
    serve.set_defaults(func=_serve)
    analyze = sub.add_parser("analyze", help="analyze a video or keypoint file into a report")
    analyze.add_argument("input", help="video file, or keypoint JSON Lines with --backend replay")
    analyze.add_argument(
        "--exercise",
        required=True,
        help="exercise name (see `exercises`), or auto: each athlete's dominant repeated movement",
    )
    analyze.add_argument(
        "--backend",
        choices=("mediapipe", "yolo", "replay"),
        default=None,
        help="pose detector (default: replay for .jsonl input, else mediapipe)",
    )
    analyze.add_argument("--model", default=None, help="lite|full|heavy or a model file path")
    analyze.add_argument("--out", default="analysis", help="output directory (default analysis)")
    analyze.add_argument("--no-video", action="store_true", help="do not write annotated.mp4")
    analyze.add_argument(
        "--export-keypoints", default=None, metavar="F", help="also write the poses as JSON Lines"
    )
    analyze.add_argument(
        "--no-calibrate",
        action="store_true",
        help="count with the definition's thresholds only (no per-athlete calibration)",
    )
    analyze.add_argument(
        "--no-refine",
        action="store_true",
        help="no second, higher-resolution search where nobody is found or someone is lost",
    )
    analyze.set_defaults(func=_analyze)
    from pose_analyzer.multiview.cli import add_calibrate_parser, add_multiview_parser

    add_multiview_parser(sub)
    add_calibrate_parser(sub)
    exercises = sub.add_parser("exercises", help="list the exercise definitions")
    exercises.set_defaults(func=_exercises)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
