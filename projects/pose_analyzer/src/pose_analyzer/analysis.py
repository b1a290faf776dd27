"""From poses to a report: offline over a whole recording, or live frame by frame.

Both paths share the per-person stages (rep counting, form scoring,
anomalies); they differ only in smoothing. Offline, the whole series is
known: short gaps are interpolated and a zero-phase Butterworth removes
jitter without delaying anything. Live, a causal One-Euro filter is used and
nothing is filled in.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pose_analyzer.anomalies import Anomaly, AnomalyDetector
from pose_analyzer.biomechanics import (
    ANGLE_INDEX,
    ANGLE_NAMES,
    NUM_ANGLES,
    OneEuroFilter,
    butterworth_filtfilt,
    compute_angles,
    derivative,
    interpolate_gaps,
)
from pose_analyzer.exercises.schema import Exercise
from pose_analyzer.keypoints import NUM_JOINTS, FramePoses, PersonPose
from pose_analyzer.report import PersonReport, Report, RepReport
from pose_analyzer.reps import RepCounter
from pose_analyzer.scoring import Fault, RunningFaults, active_faults, combine, score_rep


@dataclass(frozen=True)
class AnalysisConfig:
    min_confidence: float = 0.5  # keypoints below this are not measured
    cutoff_hz: float = 6.0  # offline Butterworth low-pass
    filter_order: int = 4
    max_interp_gap_s: float = 0.25  # offline only: longer gaps stay missing
    one_euro_min_cutoff: float = 1.5  # live
    one_euro_beta: float = 0.01


class TrackerLike(Protocol):
    def update(self, people: list[PersonPose], t: float) -> list[PersonPose]: ...


def default_tracker() -> TrackerLike | None:
    try:
        from pose_analyzer.tracking import Tracker
    except ImportError:
        return None
    tracker: TrackerLike = Tracker()
    return tracker


class IdAssigner:
    """Keeps ids a source already has (replay files); otherwise asks the tracker."""

    def __init__(self, tracker: TrackerLike | None = None) -> None:
        self._tracker = tracker
        self._made = tracker is not None

    def __call__(self, frame: FramePoses) -> list[PersonPose]:
        people = frame.people
        if all(p.track_id is not None for p in people):
            return people
        if not self._made:
            self._tracker, self._made = default_tracker(), True
        if self._tracker is not None:
            return self._tracker.update(people, frame.t)
        # No tracker available: ids by position, the best that can be done.
        for i, p in enumerate(people):
            p.track_id = i + 1
        return people


def drive_values(exercise: Exercise, angles: np.ndarray) -> np.ndarray:
    cols = [ANGLE_INDEX[c] for c in exercise.drive.columns()]
    return combine(angles[..., cols], exercise.drive.combine)


class PersonAnalyzer:
    """Reps, scores and anomalies of one tracked person, fed one frame at a time."""

    def __init__(self, exercise: Exercise, track_id: int, live: bool = False) -> None:
        self.exercise = exercise
        self._live = RunningFaults(exercise) if live else None
        self.track_id = track_id
        self.counter = RepCounter(exercise.drive)
        base = AnomalyDetector().features
        rule_metrics = tuple(dict.fromkeys(r.metric for r in exercise.rules))
        self.detector = AnomalyDetector(features=base + rule_metrics)
        self.reps: list[RepReport] = []
        self.anomalies: list[Anomaly] = []
        self.frames_seen = 0

    def step(self, t: float, angles: np.ndarray, drive_velocity: float) -> RepReport | None:
        value = float(drive_values(self.exercise, angles))
        was_in_rep = self.counter.in_rep
        rep = self.counter.update(t, value, drive_velocity, payload=angles)
        if self._live is not None and self.counter.in_rep:
            if was_in_rep and rep is None:
                self._live.add(angles)
            else:  # a rep began (its start lies a little in the past): catch up
                self._live.reset()
                for row in self.counter.current_samples():
                    self._live.add(row)
        return self._complete(rep) if rep is not None else None

    def finish(self) -> RepReport | None:
        rep = self.counter.finish()
        return self._complete(rep) if rep is not None else None

    def in_progress_faults(self) -> list[Fault]:
        """Limits already exceeded in the rep in progress (live: kept incrementally)."""
        if not self.counter.in_rep:
            return []
        if self._live is not None:
            return self._live.faults()
        return active_faults(self.exercise, np.stack(self.counter.current_samples()))

    def _complete(self, rep: Any) -> RepReport:
        scored = score_rep(self.exercise, rep.samples)
        metrics = {**rep.metrics(), **scored.metrics}
        report = RepReport(
            index=rep.index,
            start_s=rep.start_s,
            end_s=rep.end_s,
            extreme_s=rep.extreme_s,
            score=scored.score,
            faults=list(scored.faults),
            metrics=metrics,
        )
        self.reps.append(report)
        anomaly = self.detector.check(rep.index, metrics)
        if anomaly is not None:
            self.anomalies.append(anomaly)
        return report


def _nan_gradient(values: np.ndarray, t: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return derivative(values, t)


def smooth_offline(angles: np.ndarray, fps: float, config: AnalysisConfig) -> np.ndarray:
    """Offline smoothing of an angle series (frames, ...): bridge short gaps, then filtfilt."""
    gap = round(config.max_interp_gap_s * fps)
    filled = interpolate_gaps(angles, gap)
    return butterworth_filtfilt(filled, fps, config.cutoff_hz, config.filter_order)


def angle_kinematics(angles: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Angular velocity (deg/s) and acceleration (deg/s^2) of a series (frames, ...)."""
    velocity = _nan_gradient(angles, t)
    return velocity, _nan_gradient(velocity, t)


def _exercise(exercise: Exercise | str) -> Exercise:
    if isinstance(exercise, str):
        from pose_analyzer.exercises import get_exercise

        return get_exercise(exercise)
    return exercise


def analyze_frames(
    frames: Iterable[FramePoses],
    exercise: Exercise | str,
    fps: float,
    *,
    config: AnalysisConfig | None = None,
    input: str = "",
    backend: str = "",
    tracker: TrackerLike | None = None,
    on_frame: Callable[[FramePoses], None] | None = None,
) -> Report:
    """Analyze a whole recording: every person's reps, scores and anomalies.

    `exercise` is an Exercise or the name of one; people without a track id
    get one from the tracker, ids already present (replay files) are kept.
    """
    exercise = _exercise(exercise)
    config = config or AnalysisConfig()
    assign = IdAssigner(tracker)
    times: list[float] = []
    seen: list[dict[int, np.ndarray]] = []
    order: dict[int, int] = {}
    for frame in frames:
        people = assign(frame)
        row: dict[int, np.ndarray] = {}
        for person in people:
            tid = int(person.track_id) if person.track_id is not None else 0
            order.setdefault(tid, len(order))
            row[tid] = person.keypoints
        times.append(frame.t)
        seen.append(row)
        if on_frame is not None:
            on_frame(frame)
    n_frames = len(times)
    report = Report(input=input, exercise=exercise.name, backend=backend, fps=fps, frames=n_frames)
    if not order:
        return report
    t = np.asarray(times, dtype=np.float64)
    kp = np.zeros((n_frames, len(order), NUM_JOINTS, 3), dtype=np.float32)
    kp[..., :2] = np.nan
    present = np.zeros((n_frames, len(order)), dtype=bool)
    for f, row in enumerate(seen):
        for tid, pose in row.items():
            kp[f, order[tid]] = pose
            present[f, order[tid]] = True
    angles = compute_angles(kp, config.min_confidence)  # (F, P, A)
    for tid, p in order.items():
        frames_idx = np.flatnonzero(present[:, p])
        lo, hi = int(frames_idx[0]), int(frames_idx[-1]) + 1
        smooth = smooth_offline(angles[lo:hi, p].astype(np.float64), fps, config)
        tt = t[lo:hi]
        drive = drive_values(exercise, smooth)
        drive_velocity = _nan_gradient(drive, tt)
        analyzer = PersonAnalyzer(exercise, tid)
        for i in range(hi - lo):
            analyzer.step(float(tt[i]), smooth[i], float(drive_velocity[i]))
        analyzer.finish()
        mask = present[lo:hi, p]
        report.people.append(
            PersonReport(
                id=tid,
                frames_seen=int(mask.sum()),
                reps=analyzer.reps,
                anomalies=analyzer.anomalies,
                t=tt[mask],
                angles=smooth[mask],
            )
        )
    report.people.sort(key=lambda pr: pr.id)
    return report


def _angle_dict(values: np.ndarray) -> dict[str, float | None]:
    return {
        n: (float(v) if np.isfinite(v) else None) for n, v in zip(ANGLE_NAMES, values, strict=False)
    }


@dataclass
class PersonFrame:
    """One person in one live frame: what the service publishes."""

    track_id: int
    keypoints: np.ndarray
    angles: np.ndarray  # (NUM_ANGLES,) filtered degrees, NaN when unmeasured
    angular_velocity: np.ndarray  # deg/s
    angular_acceleration: np.ndarray  # deg/s^2
    rep_count: int
    last_rep: RepReport | None
    active_faults: list[Fault]
    new_rep: RepReport | None = None  # the rep this frame completed
    new_anomaly: Anomaly | None = None

    def to_dict(self) -> dict[str, Any]:
        last = self.last_rep
        return {
            "id": self.track_id,
            "keypoints": [
                [float(x), float(y), float(c)] if np.isfinite(x) else None
                for x, y, c in self.keypoints
            ],
            "angles": _angle_dict(self.angles),
            "angular_velocity": _angle_dict(self.angular_velocity),
            "rep_count": self.rep_count,
            "last_rep_score": None if last is None else round(last.score, 2),
            "last_rep": None if last is None else last.to_dict(),
            "active_faults": [f.to_dict() for f in self.active_faults],
            "anomaly": None if self.new_anomaly is None else self.new_anomaly.to_dict(),
        }


@dataclass
class FrameResult:
    index: int
    t: float
    people: list[PersonFrame] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"frame": self.index, "t": self.t, "people": [p.to_dict() for p in self.people]}


@dataclass
class _LiveTrack:
    analyzer: PersonAnalyzer
    smoother: OneEuroFilter
    velocity: np.ndarray
    t: float
    angle_rows: list[np.ndarray] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


class StreamAnalyzer:
    """Incremental analysis of one live stream; `update` once per frame.

    Shares rep counting, scoring and anomaly detection with `analyze_frames`;
    smoothing is causal (One-Euro). People are told apart by the tracker
    (or the ids a replay source carries). `keep_series` keeps every angle
    row so that `report()` can also fill angles.csv.
    """

    def __init__(
        self,
        exercise: Exercise | str,
        *,
        config: AnalysisConfig | None = None,
        tracker: TrackerLike | None = None,
        keep_series: bool = False,
        forget_after_s: float = 60.0,
    ) -> None:
        self.exercise = _exercise(exercise)
        self.config = config or AnalysisConfig()
        self._assign = IdAssigner(tracker)
        self._tracks: dict[int, _LiveTrack] = {}
        self.keep_series = keep_series
        # Passers-by who never did a rep are forgotten after this long unseen, so a
        # stream that runs for days keeps bounded state.
        self.forget_after_s = forget_after_s
        self.frames = 0

    @property
    def track_ids(self) -> list[int]:
        return sorted(self._tracks)

    def rep_count(self, track_id: int) -> int:
        track = self._tracks.get(track_id)
        return 0 if track is None else track.analyzer.counter.count

    def update(self, frame: FramePoses) -> FrameResult:
        self.frames += 1
        if self.frames % 256 == 0:
            self._forget(frame.t)
        people = self._assign(frame)
        result = FrameResult(index=frame.index, t=frame.t)
        if not people:
            return result
        stack = np.stack([p.keypoints for p in people])
        all_angles = compute_angles(stack, self.config.min_confidence).astype(np.float64)
        for person, raw in zip(people, all_angles, strict=False):
            tid = int(person.track_id) if person.track_id is not None else 0
            track = self._tracks.get(tid)
            if track is None:
                track = _LiveTrack(
                    analyzer=PersonAnalyzer(self.exercise, tid, live=True),
                    smoother=OneEuroFilter(
                        self.config.one_euro_min_cutoff, self.config.one_euro_beta
                    ),
                    velocity=np.full(NUM_ANGLES, np.nan),
                    t=frame.t,
                )
                self._tracks[tid] = track
            smooth, velocity = track.smoother(raw, frame.t)
            dt = frame.t - track.t
            acceleration = (
                (velocity - track.velocity) / dt if dt > 0 else np.full(NUM_ANGLES, np.nan)
            )
            track.velocity, track.t = velocity, frame.t
            analyzer = track.analyzer
            analyzer.frames_seen += 1
            drive_velocity = float(drive_values(self.exercise, velocity))
            anomalies_before = len(analyzer.anomalies)
            new_rep = analyzer.step(frame.t, smooth, drive_velocity)
            if self.keep_series:
                track.angle_rows.append(smooth)
                track.times.append(frame.t)
            result.people.append(
                PersonFrame(
                    track_id=tid,
                    keypoints=person.keypoints,
                    angles=smooth,
                    angular_velocity=velocity,
                    angular_acceleration=acceleration,
                    rep_count=analyzer.counter.count,
                    last_rep=analyzer.reps[-1] if analyzer.reps else None,
                    active_faults=analyzer.in_progress_faults(),
                    new_rep=new_rep,
                    new_anomaly=(
                        analyzer.anomalies[-1]
                        if len(analyzer.anomalies) > anomalies_before
                        else None
                    ),
                )
            )
        return result

    def _forget(self, now: float) -> None:
        for tid in [
            tid
            for tid, tr in self._tracks.items()
            if now - tr.t > self.forget_after_s
            and not tr.analyzer.reps
            and not tr.analyzer.counter.in_rep
        ]:
            del self._tracks[tid]

    def finish(self) -> list[RepReport]:
        """End of stream: complete reps that had already returned to rest."""
        return [rep for t in self._tracks.values() if (rep := t.analyzer.finish()) is not None]

    def report(self, input: str = "", backend: str = "", fps: float = 0.0) -> Report:
        report = Report(
            input=input, exercise=self.exercise.name, backend=backend, fps=fps, frames=self.frames
        )
        for tid in sorted(self._tracks):
            track = self._tracks[tid]
            report.people.append(
                PersonReport(
                    id=tid,
                    frames_seen=track.analyzer.frames_seen,
                    reps=list(track.analyzer.reps),
                    anomalies=list(track.analyzer.anomalies),
                    t=np.asarray(track.times),
                    angles=(
                        np.stack(track.angle_rows)
                        if track.angle_rows
                        else np.zeros((0, NUM_ANGLES))
                    ),
                )
            )
        return report
