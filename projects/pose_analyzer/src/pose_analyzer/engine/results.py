"""What the engine hands its drivers per frame (live) and per recording (offline)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pose_analyzer.anomalies import Anomaly
from pose_analyzer.biomechanics.angles import ANGLE_NAMES
from pose_analyzer.keypoints import FramePoses
from pose_analyzer.report import Report, RepReport
from pose_analyzer.scoring import Fault


def _angle_dict(values: np.ndarray) -> dict[str, float | None]:
    return {
        n: (float(v) if np.isfinite(v) else None) for n, v in zip(ANGLE_NAMES, values, strict=False)
    }


@dataclass
class PersonFrame:
    """One person in one live frame: what the service publishes."""

    track_id: int  # the person id (stable across tracklets)
    keypoints: np.ndarray
    angles: np.ndarray  # (NUM_ANGLES,) filtered degrees, NaN when unmeasured
    angular_velocity: np.ndarray  # deg/s
    angular_acceleration: np.ndarray  # deg/s^2
    rep_count: int
    last_rep: RepReport | None
    active_faults: list[Fault]
    role: str = "bystander"
    new_rep: RepReport | None = None  # the rep this frame completed
    new_anomaly: Anomaly | None = None

    @property
    def person_id(self) -> int:
        return self.track_id

    def to_dict(self) -> dict[str, Any]:
        last = self.last_rep
        return {
            "id": self.track_id,
            "person_id": self.track_id,
            "role": self.role,
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
    # Rep totals of every athlete of the stream so far, seen in this frame or not.
    athletes: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame": self.index,
            "t": self.t,
            "people": [p.to_dict() for p in self.people],
            "athletes": [{"id": pid, "rep_count": n} for pid, n in sorted(self.athletes.items())],
        }


@dataclass
class Analysis:
    """A whole recording analyzed: the report, and the frames with person ids set."""

    report: Report
    frames: list[FramePoses]
