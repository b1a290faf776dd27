"""The shortcuts identity takes per frame (issue 9) give exactly what they stand for.

Identity measures a frame's detections once and reuses the measures for the mirrored
pose, the cleaned pose and the tracklet's records; the Kalman filter reuses the
prediction made for association; observations are built without dataclasses.replace.
Each is checked here against the plain computation it replaces, on real detections
(the Sports2D clip's cached MediaPipe skeletons), with exact equality.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pose_analyzer.detectors.replay import read_keypoints
from pose_analyzer.identity.config import IdentityConfig
from pose_analyzer.identity.motion import JointKalman
from pose_analyzer.identity.skeleton import (
    LIMB_A,
    LIMB_B,
    LIMB_MIRROR,
    MIRROR,
    body_scale,
    centre,
    confident,
    frame_signatures,
    limb_lengths,
    mirrored,
    norm2,
    segment_lengths,
)
from pose_analyzer.identity.tracklets import with_pose
from pose_analyzer.keypoints import PersonPose

REAL = Path(__file__).parent / "data" / "real"
MC = IdentityConfig().min_keypoint_confidence


@pytest.fixture(scope="module")
def poses() -> np.ndarray:
    frames = read_keypoints(REAL / "sports2d_demo.jsonl")
    kp = np.array([p.keypoints for f in frames for p in f.people], dtype=np.float64)
    assert len(kp) > 300  # the athlete and the passer-by, most frames
    return kp


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def test_norm2_is_numpys_norm(poses: np.ndarray) -> None:
    v = poses[:, LIMB_A, :2] - poses[:, LIMB_B, :2]
    assert same(norm2(v), np.linalg.norm(v, axis=-1))


def test_measures_given_equal_measures_computed(poses: np.ndarray) -> None:
    ok = confident(poses, MC)
    limbs = limb_lengths(poses, MC)
    seg = segment_lengths(poses, MC)
    assert same(limb_lengths(poses, MC, ok), limbs)
    assert same(segment_lengths(poses, MC, limbs), seg)
    assert same(body_scale(poses, MC, limbs, ok, seg), body_scale(poses, MC))
    assert same(centre(poses, MC, ok), centre(poses, MC))
    assert same(frame_signatures(poses, MC, limbs, seg), frame_signatures(poses, MC))
    # One pose at a time (how a tracklet records it) equals the frame's batch.
    for k in range(0, len(poses), 37):
        one = poses[k : k + 1]
        assert same(body_scale(one, MC), body_scale(poses, MC)[k : k + 1])
        assert same(frame_signatures(one, MC), frame_signatures(poses, MC)[k : k + 1])


def test_mirroring_permutes_joints_and_limbs_and_keeps_segments_and_scale(
    poses: np.ndarray,
) -> None:
    m = mirrored(poses)
    assert same(confident(m, MC), confident(poses, MC)[:, MIRROR])
    assert same(limb_lengths(m, MC), limb_lengths(poses, MC)[:, LIMB_MIRROR])
    assert same(segment_lengths(m, MC), segment_lengths(poses, MC))
    assert same(body_scale(m, MC), body_scale(poses, MC))
    assert same(frame_signatures(m, MC), frame_signatures(poses, MC))


def test_cleaned_pose_measures_follow_from_the_removed_joints(poses: np.ndarray) -> None:
    """What _plausible hands on for a pose with joints removed: ok & ~bad, and no length
    for a limb with a removed end."""
    rng = np.random.default_rng(0)
    for k in range(0, len(poses), 11):
        pose = poses[k].copy()
        ok = confident(pose, MC)
        lengths = limb_lengths(pose[None], MC)[0]
        bad = ok & (rng.random(len(ok)) < 0.2)
        pose[bad, :2] = np.nan
        pose[bad, 2] = 0.0
        assert same(confident(pose, MC), ok & ~bad)
        expected = np.where(bad[LIMB_A] | bad[LIMB_B], np.nan, lengths)
        assert same(limb_lengths(pose[None], MC)[0], expected)


def test_kalman_reuses_a_prediction_only_while_the_state_is_unchanged(
    poses: np.ndarray,
) -> None:
    cached = JointKalman(poses[0, :, :2], confident(poses[0], MC), 300.0, 12.0, 0.05, 0.5)
    plain = JointKalman(poses[0, :, :2], confident(poses[0], MC), 300.0, 12.0, 0.05, 0.5)
    for k in range(1, 60):
        dt = 1 / 30
        p1, v1 = cached.predict(dt, 300.0)  # as association does; the update predicts again
        plain.forget_prediction()
        p2, v2 = plain.predict(dt, 300.0)
        assert same(p1, p2) and same(v1, v2)
        ok = confident(poses[k], MC)
        for kal in (cached, plain):
            kal.update(dt, poses[k, :, :2], ok, poses[k, :, 2], 300.0)
            plain.forget_prediction()
        assert same(cached.p, plain.p) and same(cached.ppp, plain.ppp)
        assert same(cached.v, plain.v) and same(cached.pvv, plain.pvv)
    # A state changed from outside (a tracklet adopting the mirrored labelling) must not
    # be answered from the cache.
    before, var_before = cached.predict(1 / 30, 300.0)
    cached.forget_prediction()
    cached.p, cached.v, cached.unseen = cached.p[MIRROR], cached.v[MIRROR], cached.unseen[MIRROR]
    cached.ppp, cached.ppv, cached.pvv = cached.ppp[MIRROR], cached.ppv[MIRROR], cached.pvv[MIRROR]
    after, var_after = cached.predict(1 / 30, 300.0)
    assert not same(after, before)  # the skeleton is not symmetric: mirroring shows
    assert same(after, before[MIRROR]) and same(var_after, var_before[MIRROR])


def test_with_pose_is_dataclasses_replace() -> None:
    src = PersonPose(np.zeros((33, 3), np.float32), score=0.7, box=(1, 2, 3, 4), track_id=5)
    kp = np.ones((33, 3), np.float32)
    got = with_pose(src, kp, 9)
    want = dataclasses.replace(src, keypoints=kp, track_id=9)
    assert type(got) is PersonPose
    assert (got.score, got.box, got.track_id) == (want.score, want.box, want.track_id)
    assert got.keypoints is kp
