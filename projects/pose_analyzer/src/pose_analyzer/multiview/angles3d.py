"""The 2D angle names (DESIGN.md section 6) measured on 3D joints, independent of the cameras.

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

_DEG = 180.0 / np.pi


def _j(name: str) -> int:
    return JOINT_INDEX[name]


def _unit(v: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(v / np.linalg.norm(v, axis=-1, keepdims=True))


def _angle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle (deg) between vectors (..., 3), robust near 0 and 180."""
    cross = np.linalg.norm(np.cross(u, v), axis=-1)
    dot = np.einsum("...k,...k->...", u, v)
    return np.asarray(np.arctan2(cross, dot) * _DEG)


def _reject(v: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """v without its component along the unit `axis`."""
    return np.asarray(v - np.einsum("...k,...k->...", v, axis)[..., None] * axis)


def compute_angles_3d(
    points: np.ndarray, up: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 1.0)
) -> np.ndarray:
    """Every angle of ANGLE_NAMES for 3D joints (..., NUM_JOINTS, 3); float64 degrees."""
    X = np.asarray(points, dtype=np.float64)
    lead = X.shape[:-2]
    out = np.full((*lead, NUM_ANGLES), np.nan)
    up_v = _unit(np.asarray(up, dtype=np.float64))

    def p(name: str) -> np.ndarray:
        return X[..., _j(name), :]

    def put(name: str, value: np.ndarray) -> None:
        out[..., ANGLE_INDEX[name]] = value

    with np.errstate(invalid="ignore", divide="ignore"):
        mid_hip = (p("left_hip") + p("right_hip")) / 2
        mid_sh = (p("left_shoulder") + p("right_shoulder")) / 2
        lateral = _unit(p("left_hip") - p("right_hip"))
        trunk = mid_sh - mid_hip
        for side in ("left", "right"):
            hip, knee, ankle = p(f"{side}_hip"), p(f"{side}_knee"), p(f"{side}_ankle")
            sh, elbow, wrist = p(f"{side}_shoulder"), p(f"{side}_elbow"), p(f"{side}_wrist")
            foot = p(f"{side}_foot_index")
            put(f"{side}_knee_flexion", 180.0 - _angle(hip - knee, ankle - knee))
            put(f"{side}_elbow_flexion", 180.0 - _angle(sh - elbow, wrist - elbow))
            put(f"{side}_shoulder_elevation", _angle(-trunk, elbow - sh))
            put(f"{side}_ankle_dorsiflexion", 90.0 - _angle(knee - ankle, foot - ankle))
            a = _reject(sh - hip, lateral)
            b = _reject(knee - hip, lateral)
            put(f"{side}_hip_flexion", 180.0 - _angle(a, b))
            # Leg frontal plane: the hip-ankle line and the lateral axis.
            leg = _unit(ankle - hip)
            normal = _unit(np.cross(leg, lateral))
            hk = _reject(knee - hip, normal)
            ka = _reject(ankle - knee, normal)
            deviation = _angle(hk, ka)
            # Medial: toward the other hip, i.e. -lateral on the left, +lateral on the right.
            medial = -lateral if side == "left" else lateral
            offset = _reject(knee - hip, leg)
            sign = np.sign(np.einsum("...k,...k->...", offset, medial))
            put(f"knee_valgus_{side}", sign * deviation)
        put("trunk_lean", _angle(trunk, np.broadcast_to(up_v, trunk.shape)))
    return out
