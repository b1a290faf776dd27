"""Angles against hand-made geometry; filters against signals with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pose_analyzer.biomechanics import (
    ANGLE_INDEX,
    NUM_ANGLES,
    OneEuroFilter,
    butterworth_filtfilt,
    compute_angles,
    derivative,
    interpolate_gaps,
)
from pose_analyzer.keypoints import JOINT_INDEX, NUM_JOINTS, empty_pose


def pose(**joints: tuple[float, float]) -> np.ndarray:
    p = empty_pose()
    for name, (x, y) in joints.items():
        p[JOINT_INDEX[name]] = (x, y, 0.9)
    return p


def angle(p: np.ndarray, name: str) -> float:
    return float(compute_angles(p)[ANGLE_INDEX[name]])


@pytest.mark.parametrize(
    ("ankle", "expected"),
    [((0, 200), 0.0), ((100, 100), 90.0), ((-100, 100), 90.0), ((50, 100 + 50 * math.sqrt(3)), 30)],
)
def test_knee_flexion(ankle: tuple[float, float], expected: float) -> None:
    p = pose(left_hip=(0, 0), left_knee=(0, 100), left_ankle=ankle)
    assert angle(p, "left_knee_flexion") == pytest.approx(expected, abs=1e-3)


def test_hip_elbow_and_trunk() -> None:
    # Upright trunk, thigh horizontal forward: hip flexion 90; elbow bent to a right angle.
    p = pose(
        right_shoulder=(0, -250),
        right_hip=(0, 0),
        right_knee=(200, 0),
        right_elbow=(0, -100),
        right_wrist=(120, -100),
        left_shoulder=(0, -250),
        left_hip=(0, 0),
    )
    assert angle(p, "right_hip_flexion") == pytest.approx(90.0, abs=1e-3)
    assert angle(p, "right_elbow_flexion") == pytest.approx(90.0, abs=1e-3)
    assert angle(p, "trunk_lean") == pytest.approx(0.0, abs=1e-3)
    p[JOINT_INDEX["left_shoulder"], :2] = p[JOINT_INDEX["right_shoulder"], :2] = (250, -250)
    assert angle(p, "trunk_lean") == pytest.approx(45.0, abs=1e-3)


@pytest.mark.parametrize(
    ("elbow", "expected"), [((0, 150), 0.0), ((150, 0), 90.0), ((0, -150), 180.0)]
)
def test_shoulder_elevation(elbow: tuple[float, float], expected: float) -> None:
    p = pose(left_shoulder=(0, 0), left_hip=(0, 260), left_elbow=elbow)
    assert angle(p, "left_shoulder_elevation") == pytest.approx(expected, abs=1e-3)


def test_ankle_dorsiflexion() -> None:
    # Vertical shin, flat foot: neutral. Shin tilted 20 deg forward over the foot: +20.
    p = pose(right_knee=(0, -190), right_ankle=(0, 0), right_foot_index=(100, 0))
    assert angle(p, "right_ankle_dorsiflexion") == pytest.approx(0.0, abs=1e-3)
    tilt = math.radians(20)
    p[JOINT_INDEX["right_knee"], :2] = (190 * math.sin(tilt), -190 * math.cos(tilt))
    assert angle(p, "right_ankle_dorsiflexion") == pytest.approx(20.0, abs=1e-3)


def test_knee_valgus_sign_and_frontal_gate() -> None:
    # Front view: left hip at image right (x=50), right hip at x=-50.
    straight = dict(left_hip=(50, 0), left_ankle=(50, 400), right_hip=(-50, 0))
    inside = pose(**straight, left_knee=(50 - 200 * math.tan(math.radians(10)), 200))
    outside = pose(**straight, left_knee=(50 + 200 * math.tan(math.radians(10)), 200))
    assert angle(inside, "knee_valgus_left") == pytest.approx(20.0, abs=1e-3)
    assert angle(outside, "knee_valgus_left") == pytest.approx(-20.0, abs=1e-3)
    # Side view: both hips in the same place, the frontal plane is not seen: NaN.
    side = pose(left_hip=(0, 0), right_hip=(2, 0), left_knee=(100, 200), left_ankle=(0, 400))
    assert math.isnan(angle(side, "knee_valgus_left"))
    assert angle(side, "left_knee_flexion") > 40


def test_low_confidence_gives_nan_not_a_guess() -> None:
    p = pose(left_hip=(0, 0), left_knee=(0, 100), left_ankle=(100, 100), left_shoulder=(0, -250))
    p[JOINT_INDEX["left_ankle"], 2] = 0.3
    a = compute_angles(p, min_confidence=0.5)
    assert math.isnan(a[ANGLE_INDEX["left_knee_flexion"]])
    assert a[ANGLE_INDEX["left_hip_flexion"]] == pytest.approx(0.0, abs=1e-3)  # ankle unused
    assert compute_angles(p, min_confidence=0.2)[ANGLE_INDEX["left_knee_flexion"]] == (
        pytest.approx(90.0, abs=1e-3)
    )
    absent = empty_pose()
    assert np.isnan(compute_angles(absent)).all()


def test_vectorized_over_frames_and_people() -> None:
    rng = np.random.default_rng(0)
    kp = np.zeros((7, 3, NUM_JOINTS, 3), dtype=np.float32)
    kp[..., :2] = rng.uniform(0, 500, (7, 3, NUM_JOINTS, 2))
    kp[..., 2] = 1.0
    out = compute_angles(kp)
    assert out.shape == (7, 3, NUM_ANGLES) and out.dtype == np.float32
    np.testing.assert_allclose(out[4, 2], compute_angles(kp[4, 2]), atol=1e-4)


def test_interpolate_gaps_short_only_and_never_at_edges() -> None:
    x = np.arange(20, dtype=float)
    y = x.copy()
    y[[0, 5, 6, 10, 11, 12, 13, 19]] = np.nan
    out = interpolate_gaps(y, max_gap=2)
    np.testing.assert_allclose(out[[5, 6]], [5, 6])
    assert np.isnan(out[[0, 10, 11, 12, 13, 19]]).all()


def test_butterworth_zero_phase_and_nan_preserved() -> None:
    fps = 60.0
    t = np.arange(600) / fps
    clean = 40 * np.sin(2 * np.pi * 0.5 * t)
    noisy = clean + 3 * np.sin(2 * np.pi * 20 * t)
    noisy[300:310] = np.nan
    out = butterworth_filtfilt(noisy, fps, cutoff_hz=6.0)
    ok = np.isfinite(out)
    assert not ok[300:310].any()
    inner = ok.copy()
    inner[:30] = inner[-30:] = inner[270:340] = False
    assert np.max(np.abs(out[inner] - clean[inner])) < 0.5  # no lag, no ripple left
    assert np.argmax(out[10:90]) == np.argmax(clean[10:90])


def test_derivative_of_a_ramp() -> None:
    t = np.arange(50) / 30.0
    np.testing.assert_allclose(derivative(30.0 * t + 5.0, t), 30.0)


def test_one_euro_is_causal_smooths_and_keeps_nan() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(300) / 30.0
    signal = 50 + rng.normal(0, 2.0, t.size)
    f1, f2 = OneEuroFilter(), OneEuroFilter()
    out1 = np.array([f1(np.array([v]), tt)[0][0] for v, tt in zip(signal, t, strict=True)])
    changed = signal.copy()
    changed[200:] += 40
    out2 = np.array([f2(np.array([v]), tt)[0][0] for v, tt in zip(changed, t, strict=True)])
    np.testing.assert_array_equal(out1[:200], out2[:200])  # the future changes nothing
    assert np.std(out1[50:]) < 0.5 * np.std(signal[50:])
    f3 = OneEuroFilter()
    f3(np.array([1.0, 2.0]), 0.0)
    value, speed = f3(np.array([np.nan, 2.5]), 1 / 30)
    assert np.isnan(value[0]) and np.isfinite(value[1]) and np.isfinite(speed[1])
