"""Identity on constructed trajectories with known identities (the real clips are in
test_identity_real.py): the tracker scenarios of test_tracking.py, now through
LiveIdentity and identify_offline, plus the geometry the signature rests on."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from pose_analyzer.identity import IdentityConfig, LiveIdentity, identify_offline
from pose_analyzer.identity.motion import JointKalman
from pose_analyzer.identity.skeleton import (
    MIRROR,
    frame_signatures,
    mirrored,
    nanquantile,
    segment_lengths,
    signature_distance,
    tracklet_signature,
)
from pose_analyzer.keypoints import JOINT_INDEX, JOINTS, NUM_JOINTS, FramePoses, PersonPose

FPS = 30.0
# A stick figure 180 px tall, joints relative to the hip midpoint (canonical order).
_TEMPLATE = np.array(
    [
        (0, -160),
        (-5, -165),
        (5, -165),
        (-10, -160),
        (10, -160),
        (-25, -130),
        (25, -130),
        (-30, -95),
        (30, -95),
        (-32, -60),
        (32, -60),
        (-12, 0),
        (12, 0),
        (-13, 50),
        (13, 50),
        (-14, 95),
        (14, 95),
        (-16, 100),
        (16, 100),
        (-8, 105),
        (8, 105),
    ],
    dtype=np.float32,
)


def person(cx: float, cy: float, *, scale: float = 1.0, conf: float = 0.9) -> PersonPose:
    kp = np.empty((NUM_JOINTS, 3), dtype=np.float32)
    kp[:, :2] = _TEMPLATE * scale + (cx, cy)
    kp[:, 2] = conf
    return PersonPose(keypoints=kp, score=conf)


def frame(i: int, people: list[PersonPose]) -> FramePoses:
    return FramePoses(index=i, t=i / FPS, width=1280, height=720, people=people)


def run_live(frames: list[FramePoses]) -> list[list[PersonPose]]:
    ident = LiveIdentity()
    return [ident.update(f) for f in frames]


def test_mirror_swaps_every_left_right_pair_and_only_those() -> None:
    for j, name in enumerate(JOINTS):
        other = JOINTS[MIRROR[j]]
        if name.startswith("left_"):
            assert other == "right_" + name[5:]
        elif name.startswith("right_"):
            assert other == "left_" + name[6:]
        else:
            assert other == name
    kp = person(0, 0).keypoints
    np.testing.assert_array_equal(mirrored(mirrored(kp)), kp)


def test_segment_lengths_take_the_longer_side_and_signature_is_scale_free() -> None:
    kp = person(300, 300).keypoints[None].astype(np.float64)
    seg = segment_lengths(kp, 0.3)[0]
    # upper arm: shoulder (-25,-130) to elbow (-30,-95) = sqrt(25 + 1225)
    assert seg[0] == pytest.approx(np.hypot(5, 35))
    short = kp.copy()
    short[0, JOINT_INDEX["left_elbow"], :2] = short[0, JOINT_INDEX["left_shoulder"], :2] + 1
    assert segment_lengths(short, 0.3)[0, 0] == pytest.approx(np.hypot(5, 35))
    big = person(300, 300, scale=2.5).keypoints[None].astype(np.float64)
    np.testing.assert_allclose(frame_signatures(big, 0.3), frame_signatures(kp, 0.3), atol=1e-6)


def test_signature_distance_small_for_one_body_large_for_another() -> None:
    rng = np.random.default_rng(0)
    a = np.log([0.55, 0.5, 0.8, 0.8]) + rng.normal(0, 0.1, (60, 4))
    b = np.log([0.55, 0.5, 0.8, 0.8]) + rng.normal(0, 0.1, (60, 4))
    c = np.log([0.75, 0.7, 0.6, 0.6]) + rng.normal(0, 0.1, (60, 4))  # other proportions
    same = signature_distance(tracklet_signature(a), tracklet_signature(b))
    other = signature_distance(tracklet_signature(a), tracklet_signature(c))
    assert same < 1.5 < 3.0 < other


def test_nanquantile_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 5, 7))
    x[rng.random(x.shape) < 0.3] = np.nan
    x[0, 0, :] = np.nan
    for axis in (0, 1, 2):
        for q in (0.5, 0.75, 0.9):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the all-NaN slice
                want = np.nanquantile(x, q, axis=axis)
            np.testing.assert_allclose(nanquantile(x, q, axis), want, equal_nan=True)


def test_kalman_uncertainty_grows_while_coasting_and_velocity_is_learned() -> None:
    xy = np.zeros((NUM_JOINTS, 2))
    ok = np.ones(NUM_JOINTS, dtype=bool)
    k = JointKalman(xy, ok, 180.0, accel_noise=12.0, measurement_noise=0.05, max_prediction_s=0.5)
    for i in range(1, 30):
        k.update(1 / FPS, xy + np.array([300 * i / FPS, 0]), ok, np.ones(NUM_JOINTS), 180.0)
    p, var_1 = k.predict(1 / FPS, 180.0)
    assert p[0, 0] == pytest.approx(300 * 30 / FPS, abs=3)  # 300 px/s, one frame on
    _, var_10 = k.predict(10 / FPS, 180.0)
    _, var_30 = k.predict(1.0, 180.0)
    assert var_1[0] < var_10[0] < var_30[0]
    # Beyond max_prediction_s a joint is not predicted at all.
    assert np.isnan(k.predict(1.0, 180.0)[0]).all()


def test_config_rejects_unknown_and_bad_values() -> None:
    with pytest.raises(ValueError, match="max_age_ss"):
        IdentityConfig.from_mapping({"max_age_ss": 1.0})
    with pytest.raises(ValueError, match="min_hits"):
        IdentityConfig(min_hits=0)
    with pytest.raises(ValueError, match="swap_gain"):
        IdentityConfig(swap_gain=1.5)
    assert IdentityConfig.from_mapping({"reacquire_s": 3.0}).reacquire_s == 3.0


def test_time_going_back_is_rejected() -> None:
    ident = LiveIdentity()
    ident.update(frame(30, []))
    with pytest.raises(ValueError, match="backwards"):
        ident.update(frame(10, []))


@pytest.mark.parametrize("order", ["ab", "ba"])
def test_two_people_crossing_keep_their_ids(order: str) -> None:
    # A walks right, B walks left on the same line; at frame 30 they are 5 px apart and
    # at frame 31 each is nearer the *other's* last position: only motion tells them apart.
    frames = []
    for i in range(61):
        a, b = person(100 + 10 * i, 300, conf=0.9), person(705 - 10 * i, 300, conf=0.8)
        frames.append(frame(i, [a, b] if order == "ab" else [b, a]))
    for out in (run_live(frames), [f.people for f in identify_offline(frames)[0]]):
        ids: dict[float, set[int | None]] = {0.9: set(), 0.8: set()}
        for people in out[5:]:
            for p in people:
                ids[round(p.score, 2)].add(p.track_id)
        assert len(ids[0.9]) == 1 and len(ids[0.8]) == 1 and ids[0.9] != ids[0.8], ids


def test_person_hidden_for_3_s_keeps_the_id_live_and_offline() -> None:
    frames = []
    for i in range(200):
        hidden = 40 <= i < 130  # 3 s at 30 fps, standing a little further on afterwards
        frames.append(frame(i, [] if hidden else [person(300 + (40 if i >= 130 else 0), 300)]))
    live = {p.track_id for ps in run_live(frames) for p in ps}
    out, persons = identify_offline(frames)
    assert live == {1}
    assert {p.track_id for f in out for p in f.people} == {1} and len(persons[1]) == 2


def test_new_person_gets_a_new_id_and_a_far_jump_is_not_the_same_person() -> None:
    frames = [frame(i, [person(200, 300)]) for i in range(10)]
    frames += [frame(i, [person(200, 300), person(900, 320)]) for i in range(10, 20)]
    out = run_live(frames)
    assert [p.track_id for p in out[-1]] == [1, 2]


def test_low_confidence_joints_do_not_drive_matching() -> None:
    frames = [frame(i, [person(200, 300)]) for i in range(10)]
    noisy = person(200, 300)
    noisy.keypoints[:5, :2] += 400  # wild head joints...
    noisy.keypoints[:5, 2] = 0.05  # ...that the detector itself does not trust
    frames.append(frame(10, [noisy]))
    assert {p.track_id for ps in run_live(frames) for p in ps} == {1}


def test_input_is_not_mutated() -> None:
    a = person(200, 300)
    frames = [frame(i, [dataclasses.replace(a, keypoints=a.keypoints.copy())]) for i in range(5)]
    before = [f.people[0].keypoints.copy() for f in frames]
    run_live(frames)
    identify_offline(frames)
    for f, b in zip(frames, before, strict=True):
        assert f.people[0].track_id is None
        np.testing.assert_array_equal(f.people[0].keypoints, b)


@pytest.mark.parametrize("seed", range(3))
def test_crossing_with_jitter_dropped_joints_and_missed_detections(seed: int) -> None:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(120):
        phase = i if i < 60 else 120 - i  # out and back
        people = []
        for name, x, conf in (("a", 100 + 10 * phase, 0.9), ("b", 705 - 10 * phase, 0.8)):
            if rng.random() < 0.05:
                continue
            p = person(x, 300 + (0 if name == "a" else 4), conf=conf)
            p.keypoints[:, :2] += rng.normal(0, 3, (NUM_JOINTS, 2)).astype(np.float32)
            p.keypoints[rng.random(NUM_JOINTS) < 0.1, 2] = 0.0
            people.append(p)
        frames.append(frame(i, people))
    out = identify_offline(frames)[0]
    seen: dict[str, set[int | None]] = {"a": set(), "b": set()}
    for f in out:
        for p in f.people:
            seen["a" if p.score > 0.85 else "b"].add(p.track_id)
    assert len(seen["a"]) == 1 and len(seen["b"]) == 1 and seen["a"] != seen["b"], seen


@pytest.mark.parametrize(("away_s", "speed"), [(0.2, 300), (0.7, 300), (0.5, 700)])
def test_person_stepping_out_of_the_frame_and_back_keeps_the_id(
    away_s: float, speed: float
) -> None:
    # Walks right until out of a 640 px wide frame, waits there, then comes back the way
    # they went: the motion model points the wrong way on return.
    out_since, x, vx = 0.0, 400.0, float(speed)
    frames = []
    for i in range(90):
        t = i / FPS
        if x > 640 and vx > 0:
            vx, out_since = 0.0, t
        if vx == 0.0 and t - out_since >= away_s:
            vx = -float(speed)
        x += vx / FPS
        frames.append(frame(i, [] if x > 620 else [person(x, 300)]))
    assert {p.track_id for ps in run_live(frames) for p in ps} == {1}
    assert {p.track_id for f in identify_offline(frames)[0] for p in f.people} == {1}


def test_live_memory_stays_bounded_on_a_long_stream() -> None:
    ident = LiveIdentity()
    for i in range(2000):  # ~67 s of one person walking back and forth
        x = 300 + 200 * np.sin(i / 60)
        out = ident.update(frame(i, [person(float(x), 300)]))
        # Held back until confirmed (min_hits frames), then one id throughout.
        assert [p.track_id for p in out] == ([1] if i >= IdentityConfig().min_hits - 1 else [])
    (tr,) = ident.tracker.all_tracklets()
    assert len(tr.frames) < 600 and len(tr.signatures) < 600
    assert ident.tracklets() == {1: [tr.tid]}
