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


def _resources(text: str) -> dict[str, float]:
    """``rtx-4070-ti`` (aim at that machine) or ``name=amount``."""
    name, _, amount = text.partition("=")
    try:
        value = float(amount) if amount else 0.01
    except ValueError:
        value = -1.0
    if not name.strip() or value <= 0:
        raise argparse.ArgumentTypeError(f"expected NAME or NAME=AMOUNT (> 0), got {text!r}")
    return {name.strip(): value}


def _batch(args: argparse.Namespace) -> int:
    from gpu_optimizer.cluster import ClusterError
    from pose_analyzer.batch import BatchError, BatchOptions, discover, run_batch
    from pose_analyzer.recordings import USER_ERRORS
    from pose_analyzer.settings import get_settings
    from pose_analyzer.storage import Database
    from pose_analyzer.storage.db import upgrade

    resources: dict[str, float] = {}
    for r in args.on or []:
        resources.update(r)
    options = BatchOptions(
        exercise=args.exercise,
        backend=args.backend,
        model=args.model,
        video=not args.no_video,
        force=args.force,
        cpus_per_task=args.cpus_per_task,
        gpus_per_task=args.gpus_per_task,
        resources=resources,
        timeout_s=args.timeout,
    )
    errors: tuple[type[BaseException], ...] = (BatchError, ClusterError, *USER_ERRORS)
    url = args.database_url or get_settings().resolved_database_url
    db = Database(url)
    try:
        from pose_analyzer.exercises import get_exercise

        if args.exercise != "auto":
            get_exercise(args.exercise)
        paths = discover(args.inputs)
        upgrade(db.engine)  # schema only: live sessions of a running service stay live
        result = run_batch(
            paths, args.out, options, database=db, cluster=args.cluster, num_cpus=args.workers
        )
    except errors as exc:
        return _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
    finally:
        db.dispose()
    print(
        f"{len(result.outcomes)} recordings: {result.count('done')} analysed, "
        f"{result.count('skipped')} already done, {result.failed} failed "
        f"({result.wall_s:.1f} s)"
    )
    for o in result.outcomes:
        if o.status == "failed":
            print(f"failed: {o.video}: {o.error}", file=sys.stderr)
    print(f"wrote {result.summary_csv}")
    return min(result.failed, 100)


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
    batch = sub.add_parser(
        "batch",
        help="analyze every recording of a folder or glob in parallel (Ray)",
        description="One Ray task per recording, each analysed exactly as `analyze` would; "
        "reports in OUT/<name>/, OUT/summary.csv, sessions and reps in the database. "
        "Exit status: the number of failed recordings (at most 100).",
    )
    batch.add_argument("inputs", metavar="DIR_OR_GLOB", help="folder or glob of videos/.jsonl")
    batch.add_argument("--exercise", required=True, help="exercise name, or auto")
    batch.add_argument("--backend", choices=("mediapipe", "yolo", "replay"), default=None)
    batch.add_argument("--model", default=None, help="lite|full|heavy or a model file path")
    batch.add_argument("--out", default="batch", help="output directory (default batch)")
    batch.add_argument("--no-video", action="store_true", help="do not write annotated.mp4")
    batch.add_argument(
        "--cluster",
        default=None,
        help="local (this machine, default) or a Ray address (default $AIML_RAY_ADDRESS)",
    )
    batch.add_argument(
        "--workers", type=int, default=None, help="CPUs of a local Ray (default: all cores)"
    )
    batch.add_argument("--force", action="store_true", help="redo recordings already done")
    batch.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs per recording")
    batch.add_argument(
        "--gpus-per-task", type=float, default=None, help="default: 1 for YOLO on a GPU cluster"
    )
    batch.add_argument(
        "--on",
        type=_resources,
        action="append",
        metavar="MACHINE",
        help="only nodes with this custom resource (a machine profile name), repeatable",
    )
    batch.add_argument("--timeout", type=float, default=None, help="seconds per recording")
    batch.add_argument("--database-url", default=None, help="default: the service's DATABASE_URL")
    batch.set_defaults(func=_batch)
    exercises = sub.add_parser("exercises", help="list the exercise definitions")
    exercises.set_defaults(func=_exercises)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
