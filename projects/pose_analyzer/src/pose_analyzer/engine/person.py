"""One person's analysis: (t, angles) samples in; reps, scores, anomalies and a role out.

This is the engine's per-person entry point, shared by offline and live
analysis and by anything else that has a person's angle vector over time
(multi-view 3-D angles, for one): `PersonAnalyzer.step(t, angles, ...)`.
It owns everything that belongs to the athlete rather than to a track: the
rep counter and its calibration, the anomaly baseline, the role.

A rep the counter finds counts only if (a) every extra condition of the
definition held (a jumping jack moves the legs too), and (b) the person stayed
in place: the hip centre ends the rep within `drive.max_travel` body heights
of where it started (median positions over the rep's first and last thirds,
so a jump or a noisy detection at either end does not decide it). A walker's
arm swing fails (b); the reason is kept.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any

import numpy as np

from pose_analyzer.anomalies import Anomaly, AnomalyDetector
from pose_analyzer.biomechanics.angles import ANGLE_INDEX
from pose_analyzer.exercises.schema import ConditionSpec, Exercise
from pose_analyzer.keypoints import JOINT_INDEX
from pose_analyzer.report import RepReport
from pose_analyzer.reps import Accept, Rep, RepCounter
from pose_analyzer.scoring import Fault, RunningFaults, active_faults, combine, score_rep

# Shoulder-to-hip distance is about 0.3 of standing height (anthropometric tables put
# it at 0.29-0.31); unlike the box it does not change when arms or legs move.
TRUNK_TO_HEIGHT = 0.30
EDGE_FRACTION = 1 / 3  # start/end positions: medians over the first and last third of a rep


class Role(str, enum.Enum):
    ATHLETE = "athlete"
    BYSTANDER = "bystander"


_LS, _RS = JOINT_INDEX["left_shoulder"], JOINT_INDEX["right_shoulder"]
_LH, _RH = JOINT_INDEX["left_hip"], JOINT_INDEX["right_hip"]


def body_anchor(keypoints: np.ndarray, min_confidence: float = 0.5) -> np.ndarray:
    """(..., 3): hip centre x, y and body height in pixels, NaN where not measurable."""
    kp = np.asarray(keypoints, dtype=np.float64)
    xy = kp[..., :2].copy()
    xy[kp[..., 2] < min_confidence] = np.nan
    hip = (xy[..., _LH, :] + xy[..., _RH, :]) / 2.0
    shoulder = (xy[..., _LS, :] + xy[..., _RS, :]) / 2.0
    d = shoulder - hip
    height = np.sqrt(np.add.reduce(d * d, axis=-1)) / TRUNK_TO_HEIGHT  # np.linalg.norm's value
    return np.concatenate([hip, height[..., None]], axis=-1)


def drive_values(exercise: Exercise, angles: np.ndarray) -> Any:
    cols = [ANGLE_INDEX[c] for c in exercise.drive.columns()]
    return combine(angles[..., cols], exercise.drive.combine)


def _condition_failure(cond: ConditionSpec, samples: np.ndarray) -> str | None:
    cols = [ANGLE_INDEX[c] for c in cond.columns()]
    series = np.asarray(combine(samples[:, cols], cond.combine), dtype=np.float64)
    finite = series[np.isfinite(series)]
    name = cond.angle
    if finite.size == 0:
        return f"{name} was not measured during the rep"
    sign = 1.0 if cond.direction == "increase" else -1.0
    signed = sign * finite
    moved = float(signed.max() - signed.min())
    if moved < cond.min_rom_deg:
        return f"{name} moved {moved:.0f} deg, the exercise needs {cond.min_rom_deg:g} deg"
    if cond.reach_deg is not None and signed.max() < sign * cond.reach_deg:
        return f"{name} reached {sign * signed.max():.0f} deg, short of {cond.reach_deg:g} deg"
    if cond.max_deg is not None and signed.max() > sign * cond.max_deg:
        return f"{name} went to {sign * signed.max():.0f} deg, past its limit {cond.max_deg:g} deg"
    return None


class PersonAnalyzer:
    """Reps, scores, anomalies and role of one person, fed one sample at a time."""

    def __init__(
        self,
        exercise: Exercise,
        person_id: int,
        live: bool = False,
        calibrate: bool | None = None,
        screen: Accept | None = None,
    ) -> None:
        self.exercise = exercise
        self._screen = screen
        self.person_id = person_id
        self._live = RunningFaults(exercise) if live else None
        self.counter = RepCounter(exercise.drive, accept=self._accept, calibrate=calibrate)
        base = AnomalyDetector().features
        rule_metrics = tuple(dict.fromkeys(r.metric for r in exercise.rules))
        self.detector = AnomalyDetector(features=base + rule_metrics)
        self.reps: list[RepReport] = []
        self.counted: list[Rep] = []  # offline only: the reps with their samples
        self.anomalies: list[Anomaly] = []
        self.frames_seen = 0
        horizon = exercise.drive.max_rep_s + 2.0
        self._anchors: deque[tuple[float, np.ndarray]] = deque()
        self._horizon = horizon
        self._drive_cols = [ANGLE_INDEX[c] for c in exercise.drive.columns()]

    def drive_value(self, angles: np.ndarray) -> float:
        """drive_values(exercise, angles) of one (NUM_ANGLES,) sample, columns looked up once."""
        return float(combine(angles[self._drive_cols], self.exercise.drive.combine))

    @property
    def track_id(self) -> int:
        return self.person_id

    @property
    def role(self) -> Role:
        """An athlete is someone who did at least one counted rep; everyone else looks on."""
        return Role.ATHLETE if self.reps else Role.BYSTANDER

    def step(
        self,
        t: float,
        angles: np.ndarray,
        drive_velocity: float,
        anchor: np.ndarray | None = None,
    ) -> RepReport | None:
        """One sample: angles (NUM_ANGLES,) in degrees, the drive angle's velocity (deg/s),
        and optionally the hip centre and body height (x, y, h) for the in-place check
        (without it, no rep is refused for travelling)."""
        if anchor is not None and np.isfinite(anchor).all():
            self._anchors.append((t, anchor))
            while self._anchors and self._anchors[0][0] < t - self._horizon:
                self._anchors.popleft()
        value = self.drive_value(angles)
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

    def _travel(self, start_s: float, end_s: float) -> float | None:
        """Hip-centre displacement from rep start to end, in body heights (None: unknown)."""
        inside = [(t, a) for t, a in self._anchors if start_s <= t <= end_s]
        if len(inside) < 2:
            return None
        n = max(1, round(len(inside) * EDGE_FRACTION))
        first = np.median(np.stack([a for _, a in inside[:n]]), axis=0)
        last = np.median(np.stack([a for _, a in inside[-n:]]), axis=0)
        height = float(np.median([a[2] for _, a in inside]))
        if height <= 0:
            return None
        return float(np.hypot(*(last[:2] - first[:2]))) / height

    def _accept(self, rep: Rep) -> str | None:
        for cond in self.exercise.drive.also:
            failure = _condition_failure(cond, rep.samples)
            if failure is not None:
                return failure
        travel = self._travel(rep.start_s, rep.end_s)
        limit = self.exercise.drive.max_travel
        if travel is not None and travel > limit:
            return (
                f"moved {travel:.2f} body heights during the rep (at most {limit:g}): "
                "not exercising in place"
            )
        return self._screen(rep) if self._screen is not None else None

    def _complete(self, rep: Rep) -> RepReport:
        if self._live is None:
            self.counted.append(rep)
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
