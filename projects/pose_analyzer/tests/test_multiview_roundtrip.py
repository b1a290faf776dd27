"""Round trip through the real demo calibration: known 3D athletes -> four distorted views -> 3D.

Ground truth: two synthetic athletes squatting (joint angles known analytically),
lifted to metres and projected into the four Pose2Sim cameras with their lens
distortion; one view per person and instant is occluded at random and the
detections come in random order, so identity has to be found, not read.
"""

from __future__ import annotations

import numpy as np
import pytest
from multiview_helpers import Scene, demo_rig, make_scene

from pose_analyzer.biomechanics.angles import ANGLE_INDEX
from pose_analyzer.multiview.angles3d import compute_angles_3d
from pose_analyzer.multiview.association import Associator
from pose_analyzer.multiview.calibration import CameraRig
from pose_analyzer.multiview.rig import FusedInstant, RigFuser
from pose_analyzer.multiview.triangulation import triangulate


def _fuse(rig: CameraRig, scene: Scene) -> list[FusedInstant]:
    fuser = RigFuser(rig, 60.0)
    return [
        fuser.fuse(float(t), {n: scene.frames[n][k] for n in rig.names})
        for k, t in enumerate(scene.t)
    ]


def _person_of(scene: Scene, k: int, detections: dict[str, int]) -> set[int]:
    return {scene.owner[view][k][i] for view, i in detections.items()}


def _check(scene: Scene, fused: list[FusedInstant]) -> tuple[np.ndarray, dict[int, int]]:
    """3D errors (m) of every joint, and the track id -> true person map (exact)."""
    track_to_person: dict[int, int] = {}
    errors = []
    n_people = scene.points.shape[1]
    for k, inst in enumerate(fused):
        assert len(inst.people) == n_people, f"instant {k}: {len(inst.people)} people fused"
        for person in inst.people:
            owners = _person_of(scene, k, person.detections)
            assert len(owners) == 1, f"instant {k}: one 3D person from two real ones {owners}"
            (p,) = owners
            assert track_to_person.setdefault(person.track_id, p) == p, "track id changed person"
            # Every view that saw this person was used (one is occluded per instant).
            assert len(person.detections) == len(scene.frames) - 1
            errors.append(np.linalg.norm(person.points - scene.points[k, p], axis=-1))
    assert sorted(track_to_person.values()) == list(range(n_people))
    return np.concatenate(errors), track_to_person


def _angle_errors(scene: Scene, fused: list[FusedInstant], ids: dict[int, int]) -> np.ndarray:
    diffs = []
    for k, inst in enumerate(fused):
        for person in inst.people:
            truth = scene.truth[ids[person.track_id]]
            for name, series in truth.items():
                if np.isfinite(series[k]):
                    diffs.append(person.angles[ANGLE_INDEX[name]] - series[k])
            for name in ("knee_valgus_left", "knee_valgus_right"):  # knees stay in plane
                diffs.append(person.angles[ANGLE_INDEX[name]])
    return np.asarray(diffs)


def test_noise_free_round_trip_is_exact() -> None:
    rig = demo_rig()
    scene = make_scene(rig, noise_px=0.0, seed=1)
    fused = _fuse(rig, scene)
    err, ids = _check(scene, fused)
    assert np.median(err) < 1e-3  # well under the 10 mm asked
    diffs = _angle_errors(scene, fused, ids)
    assert np.isfinite(diffs).all()
    assert np.max(np.abs(diffs)) < 1.0
    # Reprojection of the exact 3D points is exact too.
    errs = np.concatenate([p.error_px for i in fused for p in i.people])
    assert np.nanmax(errs) < 0.05


def test_noisy_round_trip_meets_targets() -> None:
    rig = demo_rig()
    scene = make_scene(rig, noise_px=2.0, seed=2)
    fused = _fuse(rig, scene)
    err, ids = _check(scene, fused)
    assert np.median(err) < 0.010
    diffs = _angle_errors(scene, fused, ids)
    assert np.sqrt(np.mean(diffs**2)) < 3.0
    # The noise is 2 px per axis: reprojection errors must be of that size, not more.
    errs = np.concatenate([p.error_px for i in fused for p in i.people])
    assert 0.5 < np.nanmedian(errs) < 3.0


def test_three_people_are_told_apart_in_every_instant() -> None:
    rig = demo_rig()
    scene = make_scene(rig, frames=40, noise_px=2.0, seed=4, people_count=3)
    err, _ = _check(scene, _fuse(rig, scene))
    assert np.median(err) < 0.010


def test_a_wrong_view_is_dropped_while_two_remain() -> None:
    rig = demo_rig()
    scene = make_scene(rig, frames=1, occlude=False)
    X = scene.points[0, 0]
    px = rig.project(X)  # (V, J, 2)
    px[2] += 60.0  # one camera reports every joint 60 px off
    conf = np.ones(px.shape[:2])
    tri = triangulate(rig, px, conf, max_error_px=15.0)
    assert not tri.used[2].any() and tri.used[[0, 1, 3]].all()
    assert (tri.views_used == 3).all()
    assert np.max(np.linalg.norm(tri.points - X, axis=-1)) < 1e-3
    # With only two views left nothing more is dropped, even if they disagree.
    pair = rig.subset(["cam01", "cam03"])
    two = triangulate(pair, px[[0, 2]], conf[[0, 2]], max_error_px=15.0)
    assert (two.views_used == 2).all()
    assert np.median(two.error_px) > 15.0


def test_angles_do_not_depend_on_where_the_rig_stands() -> None:
    rig = demo_rig()
    scene = make_scene(rig, frames=20, occlude=False)
    X = scene.points[:, 0]
    base = compute_angles_3d(X)
    turn = np.radians(73.0)
    Rz = np.array([[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]])
    moved = compute_angles_3d(X @ Rz.T + np.array([3.0, -2.0, 0.5]))
    np.testing.assert_allclose(moved, base, atol=1e-9)


@pytest.mark.parametrize("valgus", [20.0, -20.0])
def test_knee_valgus_sign_and_size_from_3d(valgus: float) -> None:
    """Knees caving in (valgus) read positive, bowing out (varus) negative, from any heading.

    The synthetic valgus turns the thigh's plane inward; its frontal-plane projection
    grows with flexion (as any frontal-plane projection angle does), so the checks
    are sign, growth with the fault, and independence from the heading.
    """
    from multiview_helpers import body_to_world
    from synthetic import PARAMS, skeleton

    p = dict.fromkeys(PARAMS, 0.0)
    p.update(knee_l=60, knee_r=60, hip_l=50, hip_r=50)
    seen = []
    for size in (0.5 * valgus, valgus):
        p.update(valgus_l=size, valgus_r=size)
        per_heading = [
            compute_angles_3d(body_to_world(skeleton(p), heading, (0.5, -0.3)))
            for heading in (0.0, 135.0, 250.0)
        ]
        for angles in per_heading[1:]:
            np.testing.assert_allclose(angles, per_heading[0], atol=1e-9)
        for side in ("left", "right"):
            v = per_heading[0][ANGLE_INDEX[f"knee_valgus_{side}"]]
            assert np.sign(v) == np.sign(valgus) and abs(v) > 3.0
        seen.append(abs(per_heading[0][ANGLE_INDEX["knee_valgus_left"]]))
    assert seen[1] > seen[0]
    p.update(valgus_l=0.0, valgus_r=0.0)
    neutral = compute_angles_3d(body_to_world(skeleton(p), 40.0, (0.0, 0.0)))
    assert abs(neutral[ANGLE_INDEX["knee_valgus_left"]]) < 1e-6


def test_confidence_and_missing_joints_make_nan_not_numbers() -> None:
    rig = demo_rig()
    scene = make_scene(rig, frames=1, occlude=False)
    px = rig.project(scene.points[0, 0])
    conf = np.ones(px.shape[:2])
    knee = 13  # left_knee
    conf[:, knee] = 0.1
    conf[0, knee] = 0.9  # one view only: not enough
    tri = triangulate(rig, px, conf)
    assert np.isnan(tri.points[knee]).all() and tri.views_used[knee] == 0
    angles = compute_angles_3d(tri.points)
    assert np.isnan(angles[ANGLE_INDEX["left_knee_flexion"]])
    assert np.isfinite(angles[ANGLE_INDEX["right_knee_flexion"]])


@pytest.mark.parametrize("lag_s", [0.0, 0.02])
def test_a_late_view_is_left_out_never_waited_for(lag_s: float) -> None:
    rig = demo_rig()
    scene = make_scene(rig, frames=3, occlude=False)
    fuser = RigFuser(rig, 60.0)
    views = {n: scene.frames[n][1] for n in rig.names}
    late = views["cam03"]
    views["cam03"] = type(late)(late.index, late.t - lag_s, late.width, late.height, late.people)
    inst = fuser.fuse(float(scene.t[1]), views)
    if lag_s > 0.5 / 60:
        assert inst.views_missing == ["cam03"]
        assert all("cam03" not in p.views for p in inst.people)
    else:
        assert inst.views_missing == []
    assert len(inst.people) == 2


def test_live_rig_counts_each_persons_reps_once_for_the_whole_rig() -> None:
    """Two reps for the first athlete (phase 0), one whole rep for the second (phase 0.4:
    it starts near the bottom of a rep and its third one is unfinished at the end)."""
    from pose_analyzer.exercises import get_exercise
    from pose_analyzer.multiview.live import LiveRig

    rig = demo_rig()
    scene = make_scene(rig, frames=180, fps=30.0, noise_px=2.0, seed=3, reps=2)
    live = LiveRig(RigFuser(rig, 30.0), get_exercise("squat"))
    owner: dict[int, int] = {}
    for k, t in enumerate(scene.t):
        step = live.step(float(t), {n: scene.frames[n][k] for n in rig.names})
        for person in step.people:
            (p,) = _person_of(scene, k, person.fused.detections)
            owner.setdefault(person.fused.track_id, p)
        assert step.to_dict()["people"][0]["rep_count"] >= 0
    live.finish()  # end of the session: a rep back at rest completes
    counts = {owner[tid]: live.rep_count(tid) for tid in owner}
    assert counts == {0: 2, 1: 1}


def test_live_sync_takes_views_within_half_a_frame_and_never_waits() -> None:
    from pose_analyzer.keypoints import FramePoses
    from pose_analyzer.multiview.sync import LiveSync, align_recordings

    sync = LiveSync(fps=30.0, offsets_s={"cam02": 0.010})
    sync.push("cam01", FramePoses(7, 1.000, 10, 10))
    sync.push("cam02", FramePoses(7, 1.012, 10, 10))  # its clock runs 10 ms ahead: 1.002
    sync.push("cam03", FramePoses(6, 0.966, 10, 10))  # one frame late: left out
    got = sync.take(1.0)
    assert sorted(got) == ["cam01", "cam02"]
    assert sync.take(1.0) == {}  # consumed: an instant never reuses a frame
    # Files: an offset in seconds shifts a view onto the rig's clock.
    a = [FramePoses(k, k / 30, 10, 10) for k in range(30)]
    b = [FramePoses(k, k / 30, 10, 10) for k in range(33)]
    inst = align_recordings([a, b], ["cam01", "cam02"], [30.0, 30.0], offsets_s=[0.0, 0.1])
    assert len(inst) == 30 and all(f["cam02"].index == f["cam01"].index + 3 for _, f in inst)


def test_a_view_that_dies_mid_session_leaves_three_and_the_rig_says_so() -> None:
    rig = demo_rig()
    scene = make_scene(rig, frames=30, occlude=False)
    fuser = RigFuser(rig, 60.0)
    ids = set()
    for k, t in enumerate(scene.t):
        views = {n: scene.frames[n][k] for n in rig.names if not (k >= 15 and n == "cam02")}
        inst = fuser.fuse(float(t), views)
        assert inst.views_missing == (["cam02"] if k >= 15 else [])
        assert len(inst.people) == 2
        assert all(("cam02" in p.views) == (k < 15) for p in inst.people)
        ids |= {p.track_id for p in inst.people}
    assert len(ids) == 2  # same two tracks before and after


def _groups_key(groups: list) -> list:
    return sorted((g.track_id, tuple(sorted(g.detections.items()))) for g in groups)


def test_tracks_settle_most_instants_and_agree_with_the_clustering(monkeypatch) -> None:
    """The shortcut (every detection near exactly one track) must give exactly the groups
    the full clustering gives, and must answer most instants once everybody is tracked."""
    rig = demo_rig()
    scene = make_scene(rig, frames=60, noise_px=2.0, seed=7, people_count=3)
    fuser = RigFuser(rig, 60.0)
    quick_by = Associator.by_tracks
    answered: list[int] = []

    def compare(self: Associator, *args: object) -> None:
        quick = quick_by(self, *args)
        if quick is not None:
            answered.append(len(answered))
            self.__dict__["_quick"] = quick
        return None  # the clustering runs as well, to compare with

    monkeypatch.setattr(Associator, "by_tracks", compare)
    full_associate = Associator.associate
    agreed = 0

    def check(self: Associator, *args: object, **kwargs: object) -> list:
        nonlocal agreed
        self.__dict__.pop("_quick", None)
        full = full_associate(self, *args, **kwargs)
        quick = self.__dict__.pop("_quick", None)
        if quick is not None:
            assert _groups_key(quick) == _groups_key(full)
            agreed += 1
        return full

    monkeypatch.setattr(Associator, "associate", check)
    fused = [
        fuser.fuse(float(t), {n: scene.frames[n][k] for n in rig.names})
        for k, t in enumerate(scene.t)
    ]
    _check(scene, fused)  # still exact association and stable ids
    assert agreed == len(answered)
    # Three people within a metre of each other: some instants are in doubt and go to the
    # clustering (that share is a cost, measured in bench_multiview), most must not.
    assert agreed > (len(scene.t) - 1) / 2


def test_a_person_nobody_tracks_yet_goes_through_the_clustering() -> None:
    rig = demo_rig()
    two = make_scene(rig, frames=20, seed=1, people_count=2, occlude=False)
    three = make_scene(rig, frames=20, seed=1, people_count=3, occlude=False)
    fuser = RigFuser(rig, 60.0)
    for k in range(10):
        inst = fuser.fuse(float(two.t[k]), {n: two.frames[n][k] for n in rig.names})
    assert sorted(p.track_id for p in inst.people) == [1, 2]
    ids = []
    for k in range(10, 20):
        inst = fuser.fuse(float(three.t[k]), {n: three.frames[n][k] for n in rig.names})
        ids.append(sorted(p.track_id for p in inst.people))
    # The newcomer is found at once (no track could own it) and keeps one new id.
    assert ids == [[1, 2, 3]] * 10
