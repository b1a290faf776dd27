"""The analysis report (docs/report.md): report.json and angles.csv."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pose_analyzer.anomalies import Anomaly
from pose_analyzer.biomechanics.angles import ANGLE_NAMES
from pose_analyzer.scoring import Fault


def _num(x: float, digits: int = 4) -> float:
    return round(float(x), digits)


@dataclass
class RepReport:
    index: int
    start_s: float
    end_s: float
    extreme_s: float
    score: float
    faults: list[Fault]
    metrics: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "start_s": _num(self.start_s),
            "end_s": _num(self.end_s),
            "score": _num(self.score, 2),
            "faults": [f.to_dict() for f in self.faults],
            "metrics": {k: _num(v) for k, v in self.metrics.items() if math.isfinite(v)},
        }


@dataclass
class PersonReport:
    id: int
    frames_seen: int
    reps: list[RepReport] = field(default_factory=list)
    role: str = "bystander"  # "athlete": did at least one counted rep
    track_ids: list[int] = field(default_factory=list)  # tracklets merged into this person
    # --exercise auto: the angle that drove the count and its period, or why none did.
    drive: dict[str, Any] | None = None
    anomalies: list[Anomaly] = field(default_factory=list)
    # Per-frame series behind the numbers (not in report.json): times and angles.
    t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    angles: np.ndarray = field(default_factory=lambda: np.zeros((0, len(ANGLE_NAMES))))

    @property
    def rep_count(self) -> int:
        return len(self.reps)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "role": self.role,
            "track_ids": list(self.track_ids or [self.id]),
            "frames_seen": self.frames_seen,
            "rep_count": self.rep_count,
            "reps": [r.to_dict() for r in self.reps],
            "anomalies": [a.to_dict() for a in self.anomalies],
        }
        if self.drive is not None:
            out["drive"] = self.drive
        return out


@dataclass
class Report:
    input: str
    exercise: str
    backend: str
    fps: float
    frames: int
    people: list[PersonReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "exercise": self.exercise,
            "backend": self.backend,
            "fps": _num(self.fps, 3),
            "frames": self.frames,
            "people": [p.to_dict() for p in self.people],
        }

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def write_csv(self, path: str | Path) -> None:
        """angles.csv: time_s, person_id, one column per angle; NaN is an empty cell."""
        rows = []
        for person in self.people:
            for t, row in zip(person.t, person.angles, strict=False):
                cells = ["" if not np.isfinite(v) else f"{v:.3f}" for v in row]
                rows.append((float(t), person.id, cells))
        rows.sort(key=lambda r: (r[0], r[1]))
        with Path(path).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["time_s", "person_id", *ANGLE_NAMES])
            for t, pid, cells in rows:
                writer.writerow([f"{t:.4f}", pid, *cells])
