"""Joint angles of docs/angles.md, vectorized over any leading axes.

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
_SIGN_DEG = _SIGN[:, None] * _DEG


def gate(keypoints: npt.ArrayLike, min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> np.ndarray:
    """x, y of shape (..., J, 2) with NaN wherever the confidence is below the threshold."""
    kp = np.asarray(keypoints, dtype=np.float32)
    xy = kp[..., :2].copy()
    xy[kp[..., 2] < min_confidence] = np.nan
    return xy


CHUNK = 4096  # frames per block: the temporaries stay in cache


def _block(kp: np.ndarray, min_confidence: float) -> np.ndarray:
    """Angles (NUM_ANGLES, n) of kp (n, J, 3), computed joint-major (each row contiguous)."""
    n = kp.shape[0]
    soa = np.ascontiguousarray(kp.transpose(2, 1, 0))  # (3, J, n)
    x, y = soa[0], soa[1]
    bad = soa[2] < min_confidence
    np.copyto(x, np.float32(np.nan), where=bad)
    np.copyto(y, np.float32(np.nan), where=bad)
    out = np.empty((NUM_ANGLES, n), dtype=np.float32)
    # Three-point angles: offset + sign * interior angle at the vertex.
    xb, yb = x[_B], y[_B]
    ux, uy, vx, vy = x[_A], y[_A], x[_C], y[_C]
    ux -= xb
    uy -= yb
    vx -= xb
    vy -= yb
    cross = ux * vy
    cross -= uy * vx
    np.abs(cross, out=cross)
    ux *= vx
    uy *= vy
    ux += uy  # dot product
    triples = np.arctan2(cross, ux, out=out[:_N_TRIPLES])
    triples *= _SIGN_DEG
    triples += _OFFSET[:, None]
    # Trunk lean: hip midpoint -> shoulder midpoint against image vertical (up is -y).
    tx = (x[_LS] + x[_RS]) - (x[_LH] + x[_RH])
    ty = (y[_LH] + y[_RH]) - (y[_LS] + y[_RS])
    np.abs(tx, out=tx)
    np.arctan2(tx, ty, out=out[_N_TRIPLES])
    out[_N_TRIPLES] *= _DEG
    # Both sides at once (rows left, right).
    out[_N_TRIPLES + 1 : _N_TRIPLES + 3] = _valgus(x, y, _V_HIP, _V_KNEE, _V_ANKLE, _V_OTHER)
    return out


_V_HIP, _V_KNEE = np.array([_LH, _RH]), np.array([_LK, _RK])
_V_ANKLE, _V_OTHER = np.array([_LA, _RA]), np.array([_RH, _LH])


def _valgus(
    x: np.ndarray,
    y: np.ndarray,
    hip: np.ndarray,
    knee: np.ndarray,
    ankle: np.ndarray,
    other: np.ndarray,
) -> np.ndarray:
    """Signed frontal-plane knee deviation: + when the knee is medial of the hip-ankle line
    (joint indices per side: rows of the result)."""
    xh, yh, xk, yk = x[hip], y[hip], x[knee], y[knee]  # each joint's rows gathered once
    xa, ya, xo, yo = x[ankle], y[ankle], x[other], y[other]
    hkx, hky = xk - xh, yk - yh
    kax, kay = xa - xk, ya - yk
    # 180 - interior angle at the knee = the turn between hip->knee and knee->ankle.
    deviation = np.arctan2(np.abs(hkx * kay - hky * kax), hkx * kax + hky * kay) * _DEG
    hax, hay = xa - xh, ya - yh
    mx, my = xo - xh, yo - yh  # toward the midline
    # Same side of the hip-ankle line as the other hip = medial.
    side = np.sign((hax * hky - hay * hkx) * (hax * my - hay * mx))
    leg = np.hypot(hkx, hky) + np.hypot(kax, kay)
    frontal = np.hypot(mx, my) >= FRONTAL_HIP_WIDTH_RATIO * leg
    return np.where(frontal, side * deviation, np.float32(np.nan))


def compute_angles(
    keypoints: npt.ArrayLike, min_confidence: float = DEFAULT_MIN_CONFIDENCE
) -> np.ndarray:
    """Every angle of ANGLE_NAMES for keypoints of shape (..., J, 3), float32 degrees."""
    kp = np.asarray(keypoints, dtype=np.float32)
    lead = kp.shape[:-2]
    flat = kp.reshape(-1, kp.shape[-2], 3)
    out = np.empty((flat.shape[0], NUM_ANGLES), dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        for start in range(0, flat.shape[0], CHUNK):
            out[start : start + CHUNK] = _block(flat[start : start + CHUNK], min_confidence).T
    return out.reshape(*lead, NUM_ANGLES)
