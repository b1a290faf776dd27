"""One analysis engine for the CLI, upload jobs and live streams (see core.py)."""

from pose_analyzer.engine.auto import AUTO, AutoChoice, choose_drive, is_auto
from pose_analyzer.engine.config import EngineConfig
from pose_analyzer.engine.core import (
    AutoNeedsRecordingError,
    LiveEngine,
    analyze_recording,
    resolve_exercise,
)
from pose_analyzer.engine.modes import angle_kinematics, smooth_offline
from pose_analyzer.engine.person import PersonAnalyzer, Role, body_anchor, drive_values
from pose_analyzer.engine.results import Analysis, FrameResult, PersonFrame

__all__ = [
    "AUTO",
    "Analysis",
    "AutoChoice",
    "AutoNeedsRecordingError",
    "EngineConfig",
    "FrameResult",
    "LiveEngine",
    "PersonAnalyzer",
    "PersonFrame",
    "Role",
    "analyze_recording",
    "angle_kinematics",
    "body_anchor",
    "choose_drive",
    "drive_values",
    "is_auto",
    "resolve_exercise",
    "smooth_offline",
]
