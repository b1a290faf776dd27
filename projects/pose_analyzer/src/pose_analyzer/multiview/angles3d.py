"""The 2D angle names (docs/angles.md) measured on 3D joints, independent of the cameras.

Anatomical frame, per instant: origin the hip midpoint; lateral axis L from
the right hip to the left hip; the trunk axis from the hip midpoint to the
shoulder midpoint; forward F = L x up (up: the world vertical), made
orthogonal to L. Then:
- knee, elbow flexion: 180 - the 3D interior angle (hinge joints: no plane needed);
- shoulder elevation: the 3D angle between the trunk axis pointing down and the
  upper arm (the 2D definition's shoulder -> hip line, taken along the midline so
  the shoulders being wider than the hips does not read as elevation);
- ankle dorsiflexion: 90 - the 3D interior angle knee-ankle-foot_index;
- hip flexion: 180 - the interior angle shoulder-hip-knee measured in the pelvis
  sagittal plane (both vectors projected on the plane normal to L), so hip
  abduction does not read as flexion;
- trunk lean: angle of the trunk axis from the world vertical;
- knee valgus: 180 - the interior angle hip-knee-ankle in the leg's frontal plane
  (spanned by the hip -> ankle line and L), positive when the knee lies medial of
  the hip-ankle line. A front camera sees exactly this plane when the shank
  stands upright, so the value equals the 2D front-view valgus there, but it is
  measured from any camera placement.
A joint missing in 3D makes every angle that uses it NaN.
"""

from __future__ import annotations

import numpy as np

from pose_analyzer.biomechanics.angles import ANGLE_INDEX, NUM_ANGLES
from pose_analyzer.keypoints import JOINT_INDEX
from pose_analyzer.multiview.association import cross as _cross
from pose_analyzer.multiview.association import dot as _dot

_DEG = 180.0 / np.pi


def _j(name: str) -> int:
    return JOINT_INDEX[name]


def _unit(v: np.ndarray) -> np.ndarray:
    """v / |v| (callers hold np.errstate: a zero vector is NaN, silently)."""
    return np.asarray(v / np.sqrt(_dot(v, v))[..., None])


def _angle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle (deg) between vectors (..., 3), robust near 0 and 180."""
    c = _cross(u, v)
    return np.asarray(np.arctan2(np.sqrt(_dot(c, c)), _dot(u, v)) * _DEG)


def _reject(v: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """v without its component along the unit `axis`."""
    return np.asarray(v - _dot(v, axis)[..., None] * axis)


_SIDES = ("left", "right")
# Hinge-like angles measured in 3D directly: (name, first, vertex, third, offset, sign).
_HINGES = [
    (f"{s}_{name}", f"{s}_{a}", f"{s}_{b}", f"{s}_{c}", off, sign)
    for name, a, b, c, off, sign in (
        ("knee_flexion", "hip", "knee", "ankle", 180.0, -1.0),
        ("elbow_flexion", "shoulder", "elbow", "wrist", 180.0, -1.0),
        ("ankle_dorsiflexion", "knee", "ankle", "foot_index", 90.0, -1.0),
    )
    for s in _SIDES
]
_HA = np.array([_j(a) for _, a, _, _, _, _ in _HINGES])
_HB = np.array([_j(b) for _, _, b, _, _, _ in _HINGES])
_HC = np.array([_j(c) for _, _, _, c, _, _ in _HINGES])
_HOUT = np.array([ANGLE_INDEX[n] for n, *_ in _HINGES])
_HOFF = np.array([h[4] for h in _HINGES])
_HSIGN = np.array([h[5] for h in _HINGES])
_LH, _RH = _j("left_hip"), _j("right_hip")
_LS, _RS = _j("left_shoulder"), _j("right_shoulder")
_HIP = np.array([_LH, _RH])
_KNEE = np.array([_j("left_knee"), _j("right_knee")])
_ANKLE = np.array([_j("left_ankle"), _j("right_ankle")])
_SH = np.array([_LS, _RS])
_ELBOW = np.array([_j("left_elbow"), _j("right_elbow")])
_OUT_HIP = np.array([ANGLE_INDEX[f"{s}_hip_flexion"] for s in _SIDES])
_OUT_SHOULDER = np.array([ANGLE_INDEX[f"{s}_shoulder_elevation"] for s in _SIDES])
_OUT_VALGUS = np.array([ANGLE_INDEX[f"knee_valgus_{s}"] for s in _SIDES])
_MEDIAL_SIGN = np.array([-1.0, 1.0])[:, None]  # medial = -lateral on the left, + on the right


def compute_angles_3d(
    points: np.ndarray, up: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 1.0)
) -> np.ndarray:
    """Every angle of ANGLE_NAMES for 3D joints (..., NUM_JOINTS, 3); float64 degrees."""
    X = np.asarray(points, dtype=np.float64)
    lead = X.shape[:-2]
    out = np.full((*lead, NUM_ANGLES), np.nan)
    up_v = _unit(np.asarray(up, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        vertex = X[..., _HB, :]
        hinge = _angle(X[..., _HA, :] - vertex, X[..., _HC, :] - vertex)
        out[..., _HOUT] = _HOFF + _HSIGN * hinge
        mid_hip = (X[..., _LH, :] + X[..., _RH, :]) / 2
        trunk = (X[..., _LS, :] + X[..., _RS, :]) / 2 - mid_hip
        lateral = _unit(X[..., _LH, :] - X[..., _RH, :])[..., None, :]  # (..., 1, 3)
        hip, knee, ankle = X[..., _HIP, :], X[..., _KNEE, :], X[..., _ANKLE, :]
        sh = X[..., _SH, :]
        out[..., _OUT_SHOULDER] = _angle(-trunk[..., None, :], X[..., _ELBOW, :] - sh)
        # Hip flexion in the pelvis sagittal plane (normal: the lateral axis).
        a = _reject(sh - hip, lateral)
        b = _reject(knee - hip, lateral)
        out[..., _OUT_HIP] = 180.0 - _angle(a, b)
        # Knee valgus in the leg's frontal plane (the hip-ankle line and the lateral axis).
        leg = _unit(ankle - hip)
        normal = _unit(_cross(leg, np.broadcast_to(lateral, leg.shape)))
        deviation = _angle(_reject(knee - hip, normal), _reject(ankle - knee, normal))
        offset = _reject(knee - hip, leg)
        side = np.sign((offset * lateral).sum(axis=-1)) * _MEDIAL_SIGN[:, 0]
        out[..., _OUT_VALGUS] = side * deviation
        out[..., ANGLE_INDEX["trunk_lean"]] = _angle(trunk, np.broadcast_to(up_v, trunk.shape))
    return out
