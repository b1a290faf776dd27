"""Where live and offline analysis differ, and only there.

Offline (a recording, CLI and uploads): the whole series is known, so
identity stitches tracklets into persons after the fact, short gaps are
bridged and a zero-phase Butterworth removes jitter without delaying
anything; velocities are central differences. Live (a stream): each frame is
seen once, in order, so identity is causal (re-acquisition by signature and
position), a One-Euro filter smooths with little lag and gives the velocity,
and nothing is filled in. Everything after smoothing (counting, scoring,
anomalies, roles) is the same code for both: engine/person.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from pose_analyzer.biomechanics.filters import OneEuroFilter, derivative, interpolate_gaps
from pose_analyzer.engine.config import EngineConfig
from pose_analyzer.keypoints import FramePoses, PersonPose


def carries_ids(frames: Sequence[FramePoses]) -> bool:
    """Keep the source's ids (a replay file exported by `analyze`) only if all have one."""
    return all(p.track_id is not None for f in frames for p in f.people)


def identify_recording(
    frames: Sequence[FramePoses],
) -> tuple[list[FramePoses], dict[int, list[int]]]:
    """Offline identity: the source's ids if complete, else tracked and stitched."""
    if carries_ids(frames):
        ids = sorted({int(p.track_id) for f in frames for p in f.people if p.track_id is not None})
        return list(frames), {i: [i] for i in ids}
    from pose_analyzer.identity import identify_offline  # lazy: scipy.optimize is slow to import

    return identify_offline(frames)


class LiveIds:
    """Live identity: the source's ids while every person so far had one, else causal tracking."""

    def __init__(self) -> None:
        # Imported now, when the stream starts, not at its first frame: the import takes
        # long enough (scipy.optimize) for a live source to drop the frames behind it.
        from pose_analyzer.identity import LiveIdentity

        self._make = LiveIdentity
        self._identity: Any = None  # made once a frame arrives without source ids
        self._source_ids: set[int] = set()

    def update(self, frame: FramePoses) -> list[PersonPose]:
        if self._identity is None and all(p.track_id is not None for p in frame.people):
            self._source_ids.update(int(p.track_id) for p in frame.people if p.track_id is not None)
            return frame.people
        if self._identity is None:
            self._identity = self._make()
        people: list[PersonPose] = self._identity.update(frame)
        return people

    def tracklets(self) -> dict[int, list[int]]:
        if self._identity is None:
            return {i: [i] for i in sorted(self._source_ids)}
        tracklets: dict[int, list[int]] = self._identity.tracklets()
        return tracklets


def _nan_gradient(values: np.ndarray, t: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return derivative(values, t)


def smooth_offline(angles: np.ndarray, fps: float, config: EngineConfig) -> np.ndarray:
    """Offline smoothing of an angle series (frames, ...): bridge short gaps, then filtfilt."""
    from pose_analyzer.biomechanics.filters import butterworth_filtfilt

    gap = round(config.max_interp_gap_s * fps)
    filled = interpolate_gaps(angles, gap)
    return butterworth_filtfilt(filled, fps, config.cutoff_hz, config.filter_order)


def angle_kinematics(angles: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Angular velocity (deg/s) and acceleration (deg/s^2) of a series (frames, ...)."""
    velocity = _nan_gradient(angles, t)
    return velocity, _nan_gradient(velocity, t)


def live_smoother(config: EngineConfig) -> OneEuroFilter:
    return OneEuroFilter(config.one_euro_min_cutoff, config.one_euro_beta)
