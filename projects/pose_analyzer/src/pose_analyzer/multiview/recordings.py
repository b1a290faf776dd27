"""`pose-analyzer analyze-multiview`: calibrated videos (or their keypoint files) in, 3D out.

Everything a user can get wrong is checked before any model loads: the
calibration is read, every video opened, matched to its camera by name and
image size, and the lengths compared. Then each view is detected (or its
keypoint file read), the views are put on one timeline, fused instant by
instant by the same `RigFuser` a live rig uses, and each 3D person's angle
series goes through the per-person engine once (one rep count per person).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pose_analyzer.biomechanics.angles import ANGLE_INDEX
from pose_analyzer.detectors import create_detector
from pose_analyzer.detectors.replay import KeypointFileError, read_keypoints
from pose_analyzer.engine import EngineConfig
from pose_analyzer.exercises import (
    Exercise,
    ExerciseDefinitionError,
    UnknownExerciseError,
    get_exercise,
)
from pose_analyzer.keypoints import JOINTS, NUM_JOINTS, FramePoses, ModelNotFoundError, PersonPose
from pose_analyzer.multiview.calibration import (
    CalibrationError,
    Camera,
    CameraRig,
    load_calibration,
    match_videos,
)
from pose_analyzer.multiview.engine import analyze_person_series
from pose_analyzer.multiview.rig import FusedInstant, RigFuser
from pose_analyzer.multiview.sync import SyncError, align_recordings
from pose_analyzer.multiview.trc import write_trc
from pose_analyzer.report import PersonReport, Report
from pose_analyzer.video import VideoError, VideoWriter, draw_pose, open_video

USER_ERRORS: tuple[type[BaseException], ...] = (
    CalibrationError,
    SyncError,
    VideoError,
    KeypointFileError,
    ExerciseDefinitionError,
    UnknownExerciseError,
    ModelNotFoundError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
)
KEYPOINT_SUFFIXES = (".jsonl", ".ndjson")
BATCH = 8
MIN_TRACK_S = 0.25  # shorter 3D tracks are chance pairings of two views, not people
CUE_AFTER_REP_S = 1.0


@dataclass
class ViewInput:
    name: str  # the file stem, matched against camera names
    path: Path
    fps: float
    size: tuple[int, int]
    frame_count: int
    keypoints: bool  # a keypoint file (replayed) rather than a video


@dataclass
class MultiviewPerson:
    report: PersonReport
    t: np.ndarray  # (F,) instants seen
    points: np.ndarray  # (F, J, 3)
    error_px: np.ndarray  # (F, J)
    views_per_joint: np.ndarray  # (F, J)
    view_error_px: np.ndarray  # (F, V, J)

    @property
    def mean_error_px(self) -> float:
        e = self.error_px[np.isfinite(self.error_px)]
        return float(e.mean()) if e.size else float("nan")


@dataclass
class MultiviewResult:
    report: Report
    rig: CameraRig
    views: list[ViewInput]
    instants: list[FusedInstant]
    people: list[MultiviewPerson] = field(default_factory=list)
    # Per instant, the frame index each view contributed (offsets make them differ).
    frame_index: list[dict[str, int]] = field(default_factory=list)

    def per_view_median_error(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for v, cam in enumerate(self.rig.cameras):
            vals = [p.view_error_px[:, v] for p in self.people]
            e = np.concatenate([x.ravel() for x in vals]) if vals else np.zeros(0)
            e = e[np.isfinite(e)]
            out[cam.name] = round(float(np.median(e)), 3) if e.size else None
        return out

    def per_joint_median_error(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for j, name in enumerate(JOINTS):
            vals = [p.view_error_px[:, :, j].ravel() for p in self.people]
            e = np.concatenate(vals) if vals else np.zeros(0)
            e = e[np.isfinite(e)]
            out[name] = round(float(np.median(e)), 3) if e.size else None
        return out

    def to_dict(self) -> dict[str, Any]:
        data = self.report.to_dict()
        by_id = {p.report.id: p for p in self.people}
        for entry in data["people"]:
            person = by_id[entry["id"]]
            entry["mean_reprojection_error_px"] = round(person.mean_error_px, 3)
            vpj = person.views_per_joint
            entry["mean_views_per_joint"] = (
                round(float(vpj[vpj > 0].mean()), 3) if (vpj > 0).any() else 0.0
            )
        data["views"] = [v.name for v in self.views]
        data["calibration"] = self.rig.source
        data["notes"] = list(self.rig.notes)
        data["reprojection_error_px"] = {
            "median_per_view": self.per_view_median_error(),
            "median_per_joint": self.per_joint_median_error(),
        }
        data["instants_with_missing_views"] = sum(1 for i in self.instants if i.views_missing)
        return data


def _inspect(path: Path) -> ViewInput:
    if path.suffix.lower() in KEYPOINT_SUFFIXES:
        if not path.is_file():
            raise KeypointFileError(f"keypoint file not found: {path}")
        frames = list(read_keypoints(path))
        if not frames:
            raise KeypointFileError(f"{path} holds no frames")
        times = np.array([f.t for f in frames])
        fps = round(1.0 / float(np.median(np.diff(times))), 3) if len(frames) > 1 else 30.0
        return ViewInput(
            path.stem, path, fps, (frames[0].width, frames[0].height), len(frames), True
        )
    with open_video(path) as source:
        count = source.frame_count or 0
        return ViewInput(path.stem, path, round(source.fps, 3), source.size, count, False)


def _detect(view: ViewInput, backend: str, model: str | None) -> list[FramePoses]:
    if view.keypoints:
        return list(read_keypoints(view.path))
    detector = create_detector(backend, model)
    frames: list[FramePoses] = []
    w, h = view.size
    try:
        with open_video(view.path, prefetch=4) as source:
            batch: list[tuple[int, float, np.ndarray]] = []

            def flush() -> None:
                found = detector.detect([b[2] for b in batch], [b[1] for b in batch])
                for (index, t, _), people in zip(batch, found, strict=True):
                    frames.append(FramePoses(index=index, t=t, width=w, height=h, people=people))
                batch.clear()

            for item in source:
                batch.append(item)
                if len(batch) == BATCH:
                    flush()
            if batch:
                flush()
    finally:
        detector.close()
    return frames


def _check_lengths(views: Sequence[ViewInput], offsets: Sequence[float], trim: bool) -> None:
    """Different lengths are caught from the containers' frame counts, before detection."""
    if trim or any(offsets):
        return
    counts = [v.frame_count for v in views if v.frame_count > 0]
    if counts and max(counts) - min(counts) > 1:
        detail = ", ".join(f"{v.name}: {v.frame_count} frames" for v in views)
        raise SyncError(
            f"the videos have different lengths ({detail}); pass per-camera offsets "
            "(--offsets) or --trim to keep only the span they share"
        )


def analyze_multiview(
    calibration: str | Path,
    inputs: Sequence[str | Path],
    exercise: Exercise | str,
    *,
    backend: str = "mediapipe",
    model: str | None = None,
    offsets_s: Sequence[float] | None = None,
    trim: bool = False,
    by_order: bool = False,
    config: EngineConfig | None = None,
) -> MultiviewResult:
    """Fuse calibrated views into 3D people and analyze each one's reps and form."""
    exercise = get_exercise(exercise) if isinstance(exercise, str) else exercise
    rig = load_calibration(calibration)
    if len(inputs) < 2:
        raise CalibrationError(
            f"{len(inputs)} video given: 3D needs at least two calibrated views of the same scene"
        )
    views = [_inspect(Path(p)) for p in inputs]
    rig = match_videos(rig, [(v.name, v.size) for v in views], by_order=by_order)
    offsets = list(offsets_s or [0.0] * len(views))
    if len(offsets) != len(views):
        raise SyncError(f"{len(offsets)} offsets given for {len(views)} videos")
    _check_lengths(views, offsets, trim)
    per_view = [_detect(v, backend, model) for v in views]
    names = rig.names
    instants = align_recordings(
        per_view, names, [v.fps for v in views], offsets_s=offsets, trim=trim
    )
    fps = views[0].fps
    fuser = RigFuser(rig, fps)
    # Offsets already put every frame on the rig's clock.
    fused = []
    frame_index = [{n: f.index for n, f in frames.items()} for _, frames in instants]
    for t, frames in instants:
        on_clock = {
            n: FramePoses(f.index, t, f.width, f.height, f.people) for n, f in frames.items()
        }
        fused.append(fuser.fuse(t, on_clock))
    report = Report(
        input=", ".join(str(v.path) for v in views),
        exercise=exercise.name,
        backend="replay" if all(v.keypoints for v in views) else backend,
        fps=fps,
        frames=len(fused),
    )
    result = MultiviewResult(
        report=report, rig=rig, views=views, instants=fused, frame_index=frame_index
    )
    series: dict[int, list[tuple[float, Any]]] = {}
    for inst in fused:
        for person in inst.people:
            series.setdefault(person.track_id, []).append((inst.t, person))
    for tid in sorted(series):
        rows = series[tid]
        if len(rows) < MIN_TRACK_S * fps:
            continue
        times = np.array([r[0] for r in rows])
        people = [r[1] for r in rows]
        angles = np.stack([p.angles for p in people])
        person_report = analyze_person_series(exercise, tid, times, angles, fps, config)
        report.people.append(person_report)
        result.people.append(
            MultiviewPerson(
                report=person_report,
                t=times,
                points=np.stack([p.points for p in people]),
                error_px=np.stack([p.error_px for p in people]),
                views_per_joint=np.stack([p.views_per_joint for p in people]),
                view_error_px=np.stack([p.view_error_px for p in people]),
            )
        )
    return result


def write_reprojection_csv(result: MultiviewResult, path: Path) -> None:
    """One row per person, instant and joint: views used, mean and per-view error (px)."""
    names = result.rig.names
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["time_s", "person_id", "joint", "views_used", "error_px", *names])
        for person in result.people:
            for k, t in enumerate(person.t):
                for j, joint in enumerate(JOINTS):
                    if person.views_per_joint[k, j] == 0:
                        continue
                    per_view = [
                        "" if not np.isfinite(e) else f"{e:.2f}"
                        for e in person.view_error_px[k, :, j]
                    ]
                    writer.writerow(
                        [
                            f"{t:.4f}",
                            person.report.id,
                            joint,
                            int(person.views_per_joint[k, j]),
                            f"{person.error_px[k, j]:.2f}",
                            *per_view,
                        ]
                    )


def _write_trcs(result: MultiviewResult, out: Path) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    t_all = np.array([i.t for i in result.instants])
    index = {float(t): k for k, t in enumerate(t_all)}
    people = result.people
    F = len(t_all)
    frames = list(range(1, F + 1))
    stacked = np.full((F, max(len(people), 1) * NUM_JOINTS, 3), np.nan)
    for p_i, person in enumerate(people):
        rows = [index[float(t)] for t in person.t]
        stacked[rows, p_i * NUM_JOINTS : (p_i + 1) * NUM_JOINTS] = person.points
    if len(people) <= 1:
        marker_names = list(JOINTS)
    else:
        marker_names = [f"p{p.report.id}_{j}" for p in people for j in JOINTS]
    paths["trc"] = write_trc(
        out / "points3d.trc",
        t_all,
        stacked[:, : len(marker_names)],
        marker_names,
        result.report.fps,
        frames,
    )
    if len(people) > 1:
        for p_i, person in enumerate(people):
            key = f"trc_p{person.report.id}"
            paths[key] = write_trc(
                out / f"points3d_p{person.report.id}.trc",
                t_all,
                stacked[:, p_i * NUM_JOINTS : (p_i + 1) * NUM_JOINTS],
                list(JOINTS),
                result.report.fps,
                frames,
            )
    return paths


def _draw_person(
    image: np.ndarray, cam: Camera, person: MultiviewPerson, row: int, t: float, shown: list[str]
) -> None:
    uv = cam.project(person.points[row])
    kp = np.zeros((NUM_JOINTS, 3), np.float32)
    kp[:, :2] = uv
    kp[:, 2] = np.isfinite(uv).all(axis=1)
    pr = person.report
    angles = {n: float(pr.angles[row, ANGLE_INDEX[n]]) for n in shown}
    done = sum(1 for r in pr.reps if r.end_s <= t)
    cues = [
        f.message for r in pr.reps if r.start_s <= t <= r.end_s + CUE_AFTER_REP_S for f in r.faults
    ]
    draw_pose(image, PersonPose(kp, track_id=pr.id), angles, done, cues)


def _annotate(result: MultiviewResult, exercise: Exercise, out: Path) -> dict[str, Path]:
    """Per view: the video with every 3D person reprojected into it (what the rig believes)."""
    from pose_analyzer.plotting import traced_angles

    paths: dict[str, Path] = {}
    t_all = [i.t for i in result.instants]
    lookup = [{float(t): k for k, t in enumerate(p.t)} for p in result.people]
    shown = traced_angles(exercise)
    for view, cam in zip(result.views, result.rig.cameras, strict=True):
        if view.keypoints:
            continue
        # The instant each of this view's frames went into (offsets shift them).
        instant_of = {
            idx[view.name]: k for k, idx in enumerate(result.frame_index) if view.name in idx
        }
        path = out / f"annotated_{view.name}.mp4"
        with (
            open_video(view.path) as source,
            VideoWriter(path, result.report.fps, view.size) as writer,
        ):
            for frame_no, _, image in source:
                k = instant_of.get(frame_no)
                if k is not None:
                    t = float(t_all[k])
                    for person, rows in zip(result.people, lookup, strict=True):
                        row = rows.get(t)
                        if row is not None:
                            _draw_person(image, cam, person, row, t, shown)
                writer.write(image)
        paths[f"video_{view.name}"] = path
    return paths


def run_multiview(
    calibration: str | Path,
    inputs: Sequence[str | Path],
    exercise_name: str,
    *,
    out_dir: str | Path = "analysis",
    backend: str = "mediapipe",
    model: str | None = None,
    video: bool = True,
    offsets_s: Sequence[float] | None = None,
    trim: bool = False,
    by_order: bool = False,
) -> tuple[MultiviewResult, dict[str, Path]]:
    """Analyze and write report.json, points3d.trc, angles.csv, reprojection.csv, videos."""
    exercise = get_exercise(exercise_name)
    result = analyze_multiview(
        calibration,
        inputs,
        exercise,
        backend=backend,
        model=model,
        offsets_s=offsets_s,
        trim=trim,
        by_order=by_order,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "report": out / "report.json",
        "angles_csv": out / "angles.csv",
        "reprojection_csv": out / "reprojection.csv",
    }
    paths["report"].write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    result.report.write_csv(paths["angles_csv"])
    write_reprojection_csv(result, paths["reprojection_csv"])
    paths.update(_write_trcs(result, out))
    if video:
        paths.update(_annotate(result, exercise, out))
    return result, paths


def parse_offsets(text: str | None, names: Sequence[str], fps: float | None = None) -> list[float]:
    """`cam02=0.05,cam03=-3f` -> seconds per input, in input order (frames with an `f`)."""
    out = [0.0] * len(names)
    if not text:
        return out
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in names:
            raise SyncError(
                f"offset {item!r}: expected NAME=SECONDS with NAME one of {list(names)}"
            )
        try:
            if value.endswith("f"):
                if fps is None:
                    raise SyncError("frame offsets need the frame rate")
                seconds = float(value[:-1]) / fps
            else:
                seconds = float(value)
        except ValueError as exc:
            raise SyncError(f"offset {item!r}: {value!r} is not a number") from exc
        out[list(names).index(key)] = seconds
    return out
