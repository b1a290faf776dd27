"""Joint angles, their derivatives, confidence gating and smoothing."""

from pose_analyzer.biomechanics.angles import (
    ANGLE_FAMILIES,
    ANGLE_INDEX,
    ANGLE_NAMES,
    DEFAULT_MIN_CONFIDENCE,
    NUM_ANGLES,
    SIDES,
    angle_name,
    compute_angles,
    gate,
)
from pose_analyzer.biomechanics.filters import (
    OneEuroFilter,
    butterworth_filtfilt,
    derivative,
    interpolate_gaps,
)

__all__ = [
    "ANGLE_FAMILIES",
    "ANGLE_INDEX",
    "ANGLE_NAMES",
    "DEFAULT_MIN_CONFIDENCE",
    "NUM_ANGLES",
    "SIDES",
    "OneEuroFilter",
    "angle_name",
    "butterworth_filtfilt",
    "compute_angles",
    "derivative",
    "gate",
    "interpolate_gaps",
]
