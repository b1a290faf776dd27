"""Joint angles of DESIGN.md section 6, vectorized over any leading axes.

Input keypoints have shape (..., NUM_JOINTS, 3) (x px, y px, confidence);
output angles have shape (..., len(ANGLE_NAMES)) in degrees. A keypoint whose
confidence is below the threshold (or that is absent) makes every angle that
uses it NaN: an angle is measured or it is missing, it is never guessed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pose_analyzer.keypoints import JOINT_INDEX

SIDES: tuple[str, str] = ("left", "right")

ANGLE_NAMES: tuple[str, ...] = (
    "left_knee_flexion",
    "right_knee_flexion",
    "left_hip_flexion",
    "right_hip_flexion",
    "left_elbow_flexion",
    "right_elbow_flexion",
    "left_shoulder_elevation",
    "right_shoulder_elevation",
    "left_ankle_dorsiflexion",
    "right_ankle_dorsiflexion",
    "trunk_lean",
    "knee_valgus_left",
    "knee_valgus_right",
)
ANGLE_INDEX: dict[str, int] = {name: i for i, name in enumerate(ANGLE_NAMES)}
NUM_ANGLES = len(ANGLE_NAMES)

# Families of angles as exercise definitions name them, and whether they have sides.
ANGLE_FAMILIES: dict[str, bool] = {
    "knee_flexion": True,
    "hip_flexion": True,
    "elbow_flexion": True,
    "shoulder_elevation": True,
    "ankle_dorsiflexion": True,
    "trunk_lean": False,
    "knee_valgus": True,
}

DEFAULT_MIN_CONFIDENCE = 0.5
# Knee valgus is a frontal-plane measure: it is only defined when the hips are
# seen apart, i.e. hip width is at least this fraction of the leg's image length.
FRONTAL_HIP_WIDTH_RATIO = 0.1


def angle_name(family: str, side: str | None) -> str:
    """Column name of an angle family on a side (`knee_valgus` puts the side last)."""
    if not ANGLE_FAMILIES[family]:
        return family
    if family == "knee_valgus":
        return f"knee_valgus_{side}"
    return f"{side}_{family}"


def _j(name: str) -> int:
    return JOINT_INDEX[name]


# (first, vertex, third, offset, sign): angle = offset + sign * interior angle at vertex.
_TRIPLES: list[tuple[str, str, str, float, float]] = []
for _side in SIDES:
    _TRIPLES.append((f"{_side}_hip", f"{_side}_knee", f"{_side}_ankle", 180.0, -1.0))
for _side in SIDES:
    _TRIPLES.append((f"{_side}_shoulder", f"{_side}_hip", f"{_side}_knee", 180.0, -1.0))
for _side in SIDES:
    _TRIPLES.append((f"{_side}_shoulder", f"{_side}_elbow", f"{_side}_wrist", 180.0, -1.0))
for _side in SIDES:
    _TRIPLES.append((f"{_side}_hip", f"{_side}_shoulder", f"{_side}_elbow", 0.0, 1.0))
for _side in SIDES:
    _TRIPLES.append((f"{_side}_knee", f"{_side}_ankle", f"{_side}_foot_index", 90.0, -1.0))

_A = np.array([_j(a) for a, _, _, _, _ in _TRIPLES])
_B = np.array([_j(b) for _, b, _, _, _ in _TRIPLES])
_C = np.array([_j(c) for _, _, c, _, _ in _TRIPLES])
_OFFSET = np.array([o for *_, o, _ in _TRIPLES], dtype=np.float32)
_SIGN = np.array([s for *_, s in _TRIPLES], dtype=np.float32)
_N_TRIPLES = len(_TRIPLES)
assert ANGLE_NAMES[:_N_TRIPLES] == tuple(
    angle_name(f, s)
    for f in (
        "knee_flexion",
        "hip_flexion",
        "elbow_flexion",
        "shoulder_elevation",
        "ankle_dorsiflexion",
    )
    for s in SIDES
)

_LS, _RS, _LH, _RH = (_j(n) for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip"))
_LK, _RK, _LA, _RA = (_j(n) for n in ("left_knee", "right_knee", "left_ankle", "right_ankle"))

_DEG = np.float32(180.0 / np.pi)


def gate(keypoints: npt.ArrayLike, min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> np.ndarray:
    """x, y of shape (..., J, 2) with NaN wherever the confidence is below the threshold."""
    kp = np.asarray(keypoints, dtype=np.float32)
    xy = kp[..., :2].copy()
    xy[kp[..., 2] < min_confidence] = np.nan
    return xy


def _interior(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Unsigned angle between vectors u and v (last axis = x, y), degrees."""
    cross = u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]
    dot = u[..., 0] * v[..., 0] + u[..., 1] * v[..., 1]
    return np.arctan2(np.abs(cross), dot) * _DEG


def _valgus(xy: np.ndarray, hip: int, knee: int, ankle: int, other_hip: int) -> np.ndarray:
    h, k, a, o = xy[..., hip, :], xy[..., knee, :], xy[..., ankle, :], xy[..., other_hip, :]
    hk = k - h
    ka = a - k
    deviation = _interior(h - k, ka)
    deviation = 180.0 - deviation
    ha = a - h
    # Knee offset from the hip-ankle line, and its side relative to the other hip (medial).
    along = (hk[..., 0] * ha[..., 0] + hk[..., 1] * ha[..., 1]) / (
        ha[..., 0] ** 2 + ha[..., 1] ** 2
    )
    off = hk - ha * along[..., None]
    medial = o - h
    side = np.sign(off[..., 0] * medial[..., 0] + off[..., 1] * medial[..., 1])
    hip_width = np.hypot(medial[..., 0], medial[..., 1])
    leg = np.hypot(hk[..., 0], hk[..., 1]) + np.hypot(ka[..., 0], ka[..., 1])
    frontal = hip_width >= FRONTAL_HIP_WIDTH_RATIO * leg
    return np.where(frontal, side * deviation, np.float32(np.nan))


def compute_angles(
    keypoints: npt.ArrayLike, min_confidence: float = DEFAULT_MIN_CONFIDENCE
) -> np.ndarray:
    """Every angle of ANGLE_NAMES for keypoints of shape (..., J, 3), float32 degrees."""
    xy = gate(keypoints, min_confidence)
    out = np.empty((*xy.shape[:-2], NUM_ANGLES), dtype=np.float32)
    b = xy[..., _B, :]
    interior = _interior(xy[..., _A, :] - b, xy[..., _C, :] - b)
    out[..., :_N_TRIPLES] = _OFFSET + _SIGN * interior
    trunk = 0.5 * (xy[..., _LS, :] + xy[..., _RS, :]) - 0.5 * (xy[..., _LH, :] + xy[..., _RH, :])
    # Angle from image vertical (up is -y), unsigned.
    out[..., _N_TRIPLES] = np.arctan2(np.abs(trunk[..., 0]), -trunk[..., 1]) * _DEG
    with np.errstate(invalid="ignore", divide="ignore"):
        out[..., _N_TRIPLES + 1] = _valgus(xy, _LH, _LK, _LA, _RH)
        out[..., _N_TRIPLES + 2] = _valgus(xy, _RH, _RK, _RA, _LH)
    return out
