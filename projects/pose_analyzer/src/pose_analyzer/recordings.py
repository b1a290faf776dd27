"""Recordings (a video or a keypoint file) through the engine into report files.

The driver behind `pose-analyzer analyze` and the upload jobs: it decodes and
detects (or reads a keypoint file), feeds the engine's offline entry, and
writes report.json, angles.csv and angles.png (and, for the CLI, annotated.mp4,
which re-decodes the video). It analyzes nothing itself. Every failure a user
can cause is one of USER_ERRORS with a message that says what was wrong.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pose_analyzer.biomechanics.angles import ANGLE_INDEX
from pose_analyzer.detectors import create_detector
from pose_analyzer.detectors.replay import (
    KEYPOINT_SUFFIXES,
    KeypointFileError,
    KeypointWriter,
    is_keypoint_file,
    read_keypoints,
)
from pose_analyzer.engine import Analysis, AutoNeedsRecordingError, EngineConfig, analyze_recording
from pose_analyzer.exercises import (
    Exercise,
    ExerciseDefinitionError,
    UnknownExerciseError,
    get_exercise,
)
from pose_analyzer.keypoints import FramePoses, ModelNotFoundError
from pose_analyzer.report import Report
from pose_analyzer.video import VideoError

USER_ERRORS: tuple[type[BaseException], ...] = (
    VideoError,
    KeypointFileError,
    ExerciseDefinitionError,
    UnknownExerciseError,
    ModelNotFoundError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    AutoNeedsRecordingError,
)
__all__ = ["KEYPOINT_SUFFIXES", "USER_ERRORS", "analyze_input", "run_analysis", "write_outputs"]
DEFAULT_FPS = 30.0
BATCH = 8
CUE_AFTER_REP_S = 1.0  # a rep's faults stay on screen this long after it ends


def default_backend(input_path: str | Path, video_backend: str = "mediapipe") -> str:
    return "replay" if is_keypoint_file(input_path) else video_backend


Advance = Callable[[int], None]


@contextlib.contextmanager
def _progress(enabled: bool | None, total: int | None, label: str) -> Iterator[Advance]:
    """A rich progress bar on a terminal (stderr), nothing otherwise."""
    from rich.console import Console

    console = Console(stderr=True)
    if enabled is None:
        enabled = console.is_terminal
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def fps_from_times(times: Sequence[float]) -> float:
    """A keypoint file's frame rate from its timestamps (median step), 3 decimals."""
    if len(times) < 2:
        return DEFAULT_FPS
    step = statistics.median(np.diff(np.asarray(times, dtype=np.float64)).tolist())
    return round(1.0 / step, 3) if step > 0 else DEFAULT_FPS


def read_keypoint_file(path: Path) -> list[FramePoses]:
    if not path.exists():
        raise KeypointFileError(f"keypoint file not found: {path}")
    if not path.is_file():
        raise KeypointFileError(f"{path} is not a file; pass a keypoint JSON Lines file")
    frames = list(read_keypoints(path))
    if not frames:
        raise KeypointFileError(f"{path} is empty: it holds no frames")
    return frames


def _detected(
    source: Any,
    detector: Any,
    progress: bool | None,
    on_frame: Callable[[FramePoses], None] | None,
) -> Iterator[FramePoses]:
    """Decode and detect in batches, yielding frames in order (the engine consumes them)."""
    width, height = source.size
    with _progress(progress, source.frame_count, "detecting") as advance:
        batch: list[tuple[int, float, np.ndarray]] = []

        def flush() -> list[FramePoses]:
            people = detector.detect([b[2] for b in batch], [b[1] for b in batch])
            out = [
                FramePoses(index=i, t=t, width=width, height=height, people=found)
                for (i, t, _), found in zip(batch, people, strict=True)
            ]
            advance(len(batch))
            batch.clear()
            return out

        first = True
        for item in source:
            batch.append(item)
            if len(batch) == BATCH or first:  # the first frame alone: start-up is its latency
                first = False
                yield from flush()
        if batch:
            yield from flush()


def analyze_input(
    input_path: str | Path,
    exercise: Exercise,
    *,
    backend: str | None = None,
    model: str | None = None,
    config: EngineConfig | None = None,
    detector_options: dict[str, Any] | None = None,
    progress: bool | None = None,
    on_frame: Callable[[FramePoses], None] | None = None,
    on_total: Callable[[int | None], None] | None = None,
) -> tuple[Analysis, tuple[int, int], Path | None]:
    """Analyze a video or keypoint file; returns the analysis, frame size, and the video
    to re-decode for annotation (None for keypoint files)."""
    input_path = Path(input_path)
    backend = backend or default_backend(input_path)
    label = str(input_path)
    if backend == "replay":
        frames = read_keypoint_file(input_path)
        if on_total is not None:
            on_total(len(frames))
        fps = fps_from_times([f.t for f in frames])
        analysis = analyze_recording(
            frames, exercise, fps, config=config, input=label, backend=backend, on_frame=on_frame
        )
        return analysis, (frames[0].width, frames[0].height), None
    from pose_analyzer.video import open_video

    source = open_video(input_path, prefetch=4)  # checks the file before any model loads
    if on_total is not None:
        on_total(source.frame_count)
    fps = round(source.fps, 3)
    detector = create_detector(backend, model, **(detector_options or {}))
    try:
        with source:
            analysis = analyze_recording(
                _detected(source, detector, progress, on_frame),
                exercise,
                fps,
                config=config,
                input=label,
                backend=backend,
                on_frame=on_frame,
            )
    finally:
        detector.close()
    return analysis, source.size, input_path


def write_outputs(report: Report, exercise: Exercise, out_dir: str | Path) -> dict[str, Path]:
    """report.json, angles.csv and angles.png into out_dir (made if missing)."""
    from pose_analyzer.plotting import plot_angles  # lazy: matplotlib costs start-up time

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "report": out / "report.json",
        "angles_csv": out / "angles.csv",
        "angles_png": out / "angles.png",
    }
    report.write_json(paths["report"])
    report.write_csv(paths["angles_csv"])
    plot_angles(report, exercise, paths["angles_png"])
    return paths


def _annotate(
    path: Path,
    frames: list[FramePoses],
    report: Report,
    exercise: Exercise,
    video_input: Path | None,
    size: tuple[int, int],
    progress: bool | None,
) -> None:
    from pose_analyzer.plotting import traced_angles
    from pose_analyzer.video import VideoWriter, draw_pose, open_video

    names = traced_angles(exercise)
    people = {p.id: p for p in report.people}
    rows = {pid: {float(t): i for i, t in enumerate(p.t)} for pid, p in people.items()}
    source = open_video(video_input) if video_input is not None else None
    images: Iterator[np.ndarray] = (
        (img for _, _, img in source)
        if source is not None
        else (np.zeros((size[1], size[0], 3), np.uint8) for _ in frames)
    )
    with (
        VideoWriter(path, report.fps or DEFAULT_FPS, size) as writer,
        _progress(progress, len(frames), "annotating") as advance,
    ):
        for frame, image in zip(frames, images, strict=False):
            for person in frame.people:
                pid = int(person.track_id) if person.track_id is not None else 0
                summary = people.get(pid)
                if summary is None:
                    continue
                i = rows[pid].get(float(frame.t))
                angles = (
                    {n: float(summary.angles[i, ANGLE_INDEX[n]]) for n in names}
                    if i is not None
                    else {}
                )
                done = [r for r in summary.reps if r.end_s <= frame.t]
                cues = [
                    f.message
                    for r in summary.reps
                    if r.start_s <= frame.t <= r.end_s + CUE_AFTER_REP_S
                    for f in r.faults
                ]
                draw_pose(image, person, angles, len(done), cues)
            writer.write(image)
            advance(1)
    if source is not None:
        source.close()


def run_analysis(
    input_path: str | Path,
    exercise_name: str,
    *,
    backend: str | None = None,
    model: str | None = None,
    out_dir: str | Path = "analysis",
    video: bool = True,
    export_keypoints: str | Path | None = None,
    progress: bool | None = None,
    config: EngineConfig | None = None,
    refine: bool = True,
    on_frame: Callable[[FramePoses], None] | None = None,
) -> tuple[Report, dict[str, Path]]:
    """Analyze a recording and write report.json, angles.csv, angles.png (and annotated.mp4).

    refine: search again at higher resolution where the detector finds nobody or loses
    someone (detectors/refine.py). On by default offline: bench/bench_refine.py finds
    5x more of a ~60 px athlete, and on footage where nobody is lost it never triggers
    (0.03 ms per frame); the Sports2D counts are the same with it."""
    exercise = get_exercise(exercise_name)
    input_path = Path(input_path)
    backend = backend or default_backend(input_path)
    analysis, size, video_input = analyze_input(
        input_path,
        exercise,
        backend=backend,
        model=model,
        config=config,
        progress=progress,
        detector_options={"refine": True} if refine and backend != "replay" else None,
        on_frame=on_frame,
    )
    report = analysis.report
    if export_keypoints is not None:
        with KeypointWriter(export_keypoints) as writer:
            for frame in analysis.frames:
                writer.write(frame)
    paths = write_outputs(report, exercise, out_dir)
    if video:
        paths["video"] = Path(out_dir) / "annotated.mp4"
        _annotate(paths["video"], analysis.frames, report, exercise, video_input, size, progress)
    if export_keypoints is not None:
        paths["keypoints"] = Path(export_keypoints)
    return report, paths
