"""The analysis API as it was before the engine (pose_analyzer.engine) took it over.

`analyze_frames` and `StreamAnalyzer` are the engine's offline and live entries
under their old names, kept for callers written against them; new code uses
`pose_analyzer.engine` directly. The per-person entry point, which takes
(t, angles) samples, is `pose_analyzer.engine.person.PersonAnalyzer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pose_analyzer.engine import (
    EngineConfig,
    FrameResult,
    LiveEngine,
    PersonAnalyzer,
    PersonFrame,
    analyze_recording,
    angle_kinematics,
    drive_values,
    smooth_offline,
)
from pose_analyzer.exercises.schema import Exercise
from pose_analyzer.keypoints import FramePoses
from pose_analyzer.report import Report

AnalysisConfig = EngineConfig
StreamAnalyzer = LiveEngine


def analyze_frames(
    frames: Iterable[FramePoses],
    exercise: Exercise | str,
    fps: float,
    *,
    config: EngineConfig | None = None,
    input: str = "",
    backend: str = "",
    on_frame: Callable[[FramePoses], None] | None = None,
) -> Report:
    """A whole recording's report (the engine's offline entry)."""
    return analyze_recording(
        frames, exercise, fps, config=config, input=input, backend=backend, on_frame=on_frame
    ).report


__all__ = [
    "AnalysisConfig",
    "FrameResult",
    "PersonAnalyzer",
    "PersonFrame",
    "StreamAnalyzer",
    "analyze_frames",
    "angle_kinematics",
    "drive_values",
    "smooth_offline",
]
