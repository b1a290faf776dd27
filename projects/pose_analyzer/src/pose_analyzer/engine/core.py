"""The engine: poses in; persons, reps, scores, anomalies and roles out.

detect (the driver's detector, or a keypoint file) -> identify -> measure
(angles) -> smooth -> count -> score -> anomalies -> roles. The CLI, the
upload job and the live stream all feed frames in and consume what comes
out; none of them analyzes anything itself. What differs between the offline
entry (`analyze_recording`) and the live one (`LiveEngine`) is in modes.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from pose_analyzer.biomechanics.angles import NUM_ANGLES, compute_angles
from pose_analyzer.biomechanics.filters import OneEuroFilter
from pose_analyzer.engine.auto import Screen, choose_drive, is_auto, period_of, signature
from pose_analyzer.engine.config import EngineConfig
from pose_analyzer.engine.modes import (
    LiveIds,
    _nan_gradient,
    identify_recording,
    live_smoother,
    smooth_offline,
)
from pose_analyzer.engine.person import PersonAnalyzer, Role, body_anchor, drive_values
from pose_analyzer.engine.results import Analysis, FrameResult, PersonFrame
from pose_analyzer.exercises.schema import Exercise
from pose_analyzer.keypoints import NUM_JOINTS, FramePoses
from pose_analyzer.report import PersonReport, Report, RepReport


class AutoNeedsRecordingError(ValueError):
    """`auto` picks the movement from the whole recording; a live stream cannot."""


def resolve_exercise(exercise: Exercise | str) -> Exercise:
    if isinstance(exercise, str):
        from pose_analyzer.exercises import get_exercise

        return get_exercise(exercise)
    return exercise


def _keep(person: PersonReport, fps: float, config: EngineConfig) -> bool:
    return person.rep_count > 0 or person.frames_seen >= config.min_person_s * fps


def analyze_recording(
    frames: Iterable[FramePoses],
    exercise: Exercise | str,
    fps: float,
    *,
    config: EngineConfig | None = None,
    input: str = "",
    backend: str = "",
    on_frame: Callable[[FramePoses], None] | None = None,
) -> Analysis:
    """A whole recording: every person's reps, scores, anomalies and role."""
    exercise = resolve_exercise(exercise)
    config = config or EngineConfig()
    raw: list[FramePoses] = []
    for frame in frames:
        raw.append(frame)
        if on_frame is not None:
            on_frame(frame)
    identified, tracklets = identify_recording(raw)
    report = Report(input=input, exercise=exercise.name, backend=backend, fps=fps, frames=len(raw))
    order: dict[int, int] = {}
    for frame in identified:
        for person in frame.people:
            order.setdefault(int(person.track_id or 0), len(order))
    if not order:
        return Analysis(report, identified)
    n_frames = len(identified)
    t = np.asarray([f.t for f in identified], dtype=np.float64)
    kp = np.zeros((n_frames, len(order), NUM_JOINTS, 3), dtype=np.float32)
    kp[..., :2] = np.nan
    present = np.zeros((n_frames, len(order)), dtype=bool)
    for f, frame in enumerate(identified):
        for person in frame.people:
            p = order[int(person.track_id or 0)]
            kp[f, p] = person.keypoints
            present[f, p] = True
    angles = compute_angles(kp, config.min_confidence)  # (F, P, A)
    anchors = body_anchor(kp, config.min_confidence)  # (F, P, 3)
    auto = is_auto(exercise)
    for pid, p in order.items():
        idx = np.flatnonzero(present[:, p])
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        smooth = smooth_offline(angles[lo:hi, p].astype(np.float64), fps, config)
        tt = t[lo:hi]
        anchor = anchors[lo:hi, p]
        person_ex, drive_info = exercise, None
        screen = None
        if auto:
            choice = choose_drive(tt, smooth, anchor)
            drive_info = choice.to_dict()
            person_ex = choice.exercise or exercise
            if choice.exercise is not None:
                first = _count(PersonAnalyzer(person_ex, pid, calibrate=False), tt, smooth, anchor)
                screen = Screen([signature(r.samples) for r in first.counted])
        analyzer = PersonAnalyzer(person_ex, pid, calibrate=config.calibrate, screen=screen)
        if not auto or person_ex is not exercise:
            _count(analyzer, tt, smooth, anchor)
        if drive_info is not None and drive_info.get("angle") is not None:
            period = period_of([r.start_s for r in analyzer.reps])
            drive_info["period_s"] = None if period is None else round(period, 3)
            if not analyzer.reps:
                drive_info["reason"] = "the repeated movement was never done in place"
        mask = present[lo:hi, p]
        entry = PersonReport(
            id=pid,
            frames_seen=int(mask.sum()),
            reps=analyzer.reps,
            anomalies=analyzer.anomalies,
            role=analyzer.role.value,
            track_ids=tracklets.get(pid, [pid]),
            drive=drive_info,
            t=tt[mask],
            angles=smooth[mask],
        )
        if _keep(entry, fps, config):
            report.people.append(entry)
    report.people.sort(key=lambda pr: pr.id)
    return Analysis(report, identified)


def _count(
    analyzer: PersonAnalyzer, t: np.ndarray, smooth: np.ndarray, anchor: np.ndarray
) -> PersonAnalyzer:
    """Feed one person's whole smoothed series through their analyzer."""
    drive = np.asarray(drive_values(analyzer.exercise, smooth), dtype=np.float64)
    velocity = _nan_gradient(drive, t)
    for i in range(len(t)):
        analyzer.step(float(t[i]), smooth[i], float(velocity[i]), anchor[i])
    analyzer.finish()
    return analyzer


@dataclass
class _LivePerson:
    analyzer: PersonAnalyzer
    smoother: OneEuroFilter
    velocity: np.ndarray
    t: float
    angle_rows: list[np.ndarray] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


class LiveEngine:
    """The engine for a live stream: `update` once per frame, `finish` at its end.

    Same counting, scoring, anomalies and roles as `analyze_recording`; only
    identity and smoothing are causal (modes.py). `keep_series` keeps every
    angle row so that `report()` can also fill angles.csv.
    """

    def __init__(
        self,
        exercise: Exercise | str,
        *,
        config: EngineConfig | None = None,
        keep_series: bool = False,
    ) -> None:
        self.exercise = resolve_exercise(exercise)
        if is_auto(self.exercise):
            raise AutoNeedsRecordingError(
                "exercise 'auto' picks the movement from the whole recording; analyze the "
                "file (pose-analyzer analyze, POST /analyze) or name an exercise for a stream"
            )
        self.config = config or EngineConfig()
        self._ids = LiveIds()
        self._people: dict[int, _LivePerson] = {}
        self.keep_series = keep_series
        self.frames = 0

    @property
    def person_ids(self) -> list[int]:
        return sorted(self._people)

    track_ids = person_ids

    def rep_count(self, person_id: int) -> int:
        person = self._people.get(person_id)
        return 0 if person is None else person.analyzer.counter.count

    def athletes(self) -> dict[int, int]:
        return {
            pid: lp.analyzer.counter.count
            for pid, lp in sorted(self._people.items())
            if lp.analyzer.role is Role.ATHLETE
        }

    def update(self, frame: FramePoses) -> FrameResult:
        self.frames += 1
        if self.frames % 256 == 0:
            self._forget(frame.t)
        people = self._ids.update(frame)
        result = FrameResult(index=frame.index, t=frame.t)
        if people:
            stack = np.array([p.keypoints for p in people])
            all_angles = compute_angles(stack, self.config.min_confidence).astype(np.float64)
            all_anchors = body_anchor(stack, self.config.min_confidence)
            for person, raw, anchor in zip(people, all_angles, all_anchors, strict=True):
                pid = int(person.track_id) if person.track_id is not None else 0
                result.people.append(self._step(pid, person.keypoints, raw, anchor, frame.t))
        result.athletes = self.athletes()
        return result

    def _step(
        self, pid: int, keypoints: np.ndarray, raw: np.ndarray, anchor: np.ndarray, t: float
    ) -> PersonFrame:
        lp = self._people.get(pid)
        if lp is None:
            lp = _LivePerson(
                analyzer=PersonAnalyzer(
                    self.exercise, pid, live=True, calibrate=self.config.calibrate
                ),
                smoother=live_smoother(self.config),
                velocity=np.full(NUM_ANGLES, np.nan),
                t=t,
            )
            self._people[pid] = lp
        smooth, velocity = lp.smoother(raw, t)
        dt = t - lp.t
        acceleration = (velocity - lp.velocity) / dt if dt > 0 else np.full(NUM_ANGLES, np.nan)
        lp.velocity, lp.t = velocity, t
        analyzer = lp.analyzer
        analyzer.frames_seen += 1
        anomalies_before = len(analyzer.anomalies)
        new_rep = analyzer.step(t, smooth, analyzer.drive_value(velocity), anchor)
        if self.keep_series:
            lp.angle_rows.append(smooth)
            lp.times.append(t)
        return PersonFrame(
            track_id=pid,
            keypoints=keypoints,
            angles=smooth,
            angular_velocity=velocity,
            angular_acceleration=acceleration,
            rep_count=analyzer.counter.count,
            last_rep=analyzer.reps[-1] if analyzer.reps else None,
            active_faults=analyzer.in_progress_faults(),
            role=analyzer.role.value,
            new_rep=new_rep,
            new_anomaly=(
                analyzer.anomalies[-1] if len(analyzer.anomalies) > anomalies_before else None
            ),
        )

    def _forget(self, now: float) -> None:
        """Bystanders unseen for `forget_after_s` are dropped: a days-long stream stays bounded."""
        for pid in [
            pid
            for pid, lp in self._people.items()
            if now - lp.t > self.config.forget_after_s
            and not lp.analyzer.reps
            and not lp.analyzer.counter.in_rep
        ]:
            del self._people[pid]

    def finish(self) -> list[PersonFrame]:
        """End of stream: reps already back at rest complete, with their anomalies, like any."""
        out = []
        for pid, lp in sorted(self._people.items()):
            analyzer = lp.analyzer
            before = len(analyzer.anomalies)
            rep: RepReport | None = analyzer.finish()
            if rep is None:
                continue
            out.append(
                PersonFrame(
                    track_id=pid,
                    keypoints=np.zeros((0, 3)),
                    angles=np.full(NUM_ANGLES, np.nan),
                    angular_velocity=np.full(NUM_ANGLES, np.nan),
                    angular_acceleration=np.full(NUM_ANGLES, np.nan),
                    rep_count=analyzer.counter.count,
                    last_rep=rep,
                    active_faults=[],
                    role=analyzer.role.value,
                    new_rep=rep,
                    new_anomaly=analyzer.anomalies[-1]
                    if len(analyzer.anomalies) > before
                    else None,
                )
            )
        return out

    def report(self, input: str = "", backend: str = "", fps: float = 0.0) -> Report:
        report = Report(
            input=input, exercise=self.exercise.name, backend=backend, fps=fps, frames=self.frames
        )
        tracklets = self._ids.tracklets()
        for pid in sorted(self._people):
            lp = self._people[pid]
            person = PersonReport(
                id=pid,
                frames_seen=lp.analyzer.frames_seen,
                reps=list(lp.analyzer.reps),
                anomalies=list(lp.analyzer.anomalies),
                role=lp.analyzer.role.value,
                track_ids=tracklets.get(pid, [pid]),
                t=np.asarray(lp.times),
                angles=np.stack(lp.angle_rows) if lp.angle_rows else np.zeros((0, NUM_ANGLES)),
            )
            if fps <= 0 or _keep(person, fps, self.config):
                report.people.append(person)
        return report
