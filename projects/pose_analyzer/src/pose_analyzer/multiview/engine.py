"""The one place the rig calls the per-person analysis engine (reps, faults, anomalies).

Everything else in `multiview` only produces 3D angle series; this module
hands one person's series to the same engine the 2D path uses, so a rig
counts one set of reps per person whatever the number of cameras. Re-point
these two functions when the engine's interface changes.
"""

from __future__ import annotations

import warnings

import numpy as np

from pose_analyzer.biomechanics import derivative
from pose_analyzer.engine import (
    EngineConfig,
    PersonAnalyzer,
    drive_values,
    smooth_offline,
)
from pose_analyzer.exercises.schema import Exercise
from pose_analyzer.report import PersonReport


def analyze_person_series(
    exercise: Exercise,
    person_id: int,
    t: np.ndarray,
    angles: np.ndarray,
    fps: float,
    config: EngineConfig | None = None,
) -> PersonReport:
    """Reps, scores and anomalies of one person from a whole 3D angle series (offline)."""
    config = config or EngineConfig()
    smooth = smooth_offline(np.asarray(angles, dtype=np.float64), fps, config)
    drive = drive_values(exercise, smooth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        drive_velocity = derivative(drive, np.asarray(t, dtype=np.float64))
    analyzer = PersonAnalyzer(exercise, person_id)
    for i in range(len(t)):
        analyzer.step(float(t[i]), smooth[i], float(drive_velocity[i]))
    analyzer.finish()
    return PersonReport(
        id=person_id,
        frames_seen=len(t),
        reps=analyzer.reps,
        anomalies=analyzer.anomalies,
        t=np.asarray(t, dtype=np.float64),
        angles=smooth,
    )


def live_person_analyzer(exercise: Exercise, person_id: int) -> PersonAnalyzer:
    """The live per-person engine a rig feeds with smoothed 3D angles, one instant at a time."""
    return PersonAnalyzer(exercise, person_id, live=True)
