"""Identity on real detections: the cached MediaPipe output of clips nobody here made.

Ground truth is tests/data/real/labels_identity.toml (labelled by looking at frames; the
file says how). The adversarial cases edit those real detections in known ways (a person
deleted for 3 s, a second skeleton, left/right swaps, a crossing, impossible joints) so
the expected answer is known by construction.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pose_analyzer.detectors.replay import read_keypoints
from pose_analyzer.identity import IdentityConfig, LiveIdentity, identify_offline
from pose_analyzer.identity.skeleton import MIRROR, body_scale
from pose_analyzer.keypoints import JOINT_INDEX, FramePoses, PersonPose

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REAL = Path(__file__).parent / "data" / "real"
LABELS: dict[str, Any] = tomllib.loads((REAL / "labels_identity.toml").read_text())
CLIPS = sorted(LABELS)
LIVE_TOL = IdentityConfig().min_hits + 2  # live holds a new tracklet back min_hits frames
OFFLINE_TOL = 2

Identify = Callable[[list[FramePoses]], list[FramePoses]]


@functools.cache
def _frames(clip: str) -> tuple[FramePoses, ...]:
    return tuple(read_keypoints(REAL / f"{clip}.jsonl"))


def frames(clip: str) -> list[FramePoses]:
    """A fresh deep copy, so a test may edit it."""
    return copy.deepcopy(list(_frames(clip)))


def offline(fr: list[FramePoses]) -> list[FramePoses]:
    return identify_offline(fr)[0]


def live(fr: list[FramePoses]) -> list[FramePoses]:
    ident = LiveIdentity()
    return [dataclasses.replace(f, people=ident.update(f)) for f in fr]


MODES: dict[str, Identify] = {"offline": offline, "live": live}


def spans(out: list[FramePoses]) -> dict[int, tuple[int, int]]:
    got: dict[int, tuple[int, int]] = {}
    for f in out:
        for p in f.people:
            assert p.track_id is not None
            lo, hi = got.get(p.track_id, (f.index, f.index))
            got[p.track_id] = (min(lo, f.index), max(hi, f.index))
    return got


def centre(p: PersonPose, f: FramePoses) -> np.ndarray:
    kp = p.keypoints
    ok = kp[:, 2] > 0.3
    xy = kp[ok, :2]
    box = np.concatenate([xy.min(axis=0), xy.max(axis=0)])
    return np.array([(box[0] + box[2]) / 2 / f.width, (box[1] + box[3]) / 2 / f.height])


def id_at(out: list[FramePoses], frame: int, x: float, y: float) -> int | None:
    """The person id whose skeleton is at (x, y) (fractions) in `frame`."""
    f = out[frame]
    assert f.index == frame
    best, best_d = None, 0.12
    for p in f.people:
        d = float(np.linalg.norm(centre(p, f) - (x, y)))
        if d < best_d:
            best, best_d = p.track_id, d
    return best


def anchor_ids(out: list[FramePoses], person: dict[str, Any], after: int = 0) -> set[int | None]:
    """Ids at the person's anchors (those at least `after` frames into their detection:
    live holds a new person back for its first frames)."""
    start = person["detected"][0] + after if person.get("detected") else 0
    return {id_at(out, int(fr), x, y) for fr, x, y in person.get("anchors", []) if fr >= start}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("clip", CLIPS)
def test_real_clip_gives_one_id_per_person(clip: str, mode: str) -> None:
    label = LABELS[clip]
    out = MODES[mode](frames(clip))
    got = spans(out)
    if not label.get("count_asserted", True):
        # One skeleton that migrates between two people: at least no id explosion.
        assert 1 <= len(got) <= label["detected_persons"], got
        return
    assert len(got) == label["detected_persons"], got
    tol = LIVE_TOL if mode == "live" else OFFLINE_TOL
    ids_seen: set[int] = set()
    for person in label["person"]:
        if not person["detected"]:
            continue
        ids = anchor_ids(out, person, tol) if "anchors" in person else set(got)
        # All of a person's anchors carry one id, and no one else's anchors carry it.
        assert len(ids) == 1 and None not in ids, (person["name"], ids)
        (pid,) = ids
        assert pid not in ids_seen, (person["name"], pid)
        ids_seen.add(pid)
        first, last = person["detected"]
        lo, hi = got[pid]
        assert lo <= first + tol and hi >= last - OFFLINE_TOL, (person["name"], (lo, hi))


# -- the offline detector's output (refined/: the re-detection search, detectors/refine.py)

REFINED = REAL / "refined"


@functools.cache
def _refined(clip: str) -> tuple[FramePoses, ...]:
    return tuple(read_keypoints(REFINED / f"{clip}.jsonl"))


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("clip", CLIPS)
def test_refined_clip_gives_one_id_per_person_no_swap(clip: str, mode: str) -> None:
    label = LABELS[clip]
    out = MODES[mode](copy.deepcopy(list(_refined(clip))))
    got = spans(out)
    assert len(got) == label.get("refined_persons", label["detected_persons"]), got
    ids_seen: set[int] = set()
    for person in label["person"]:
        if not person.get("anchors"):
            continue
        # Live holds a new person back for its first frames; the search finds people
        # from the first frame on, so anchors count from there.
        tol = LIVE_TOL if mode == "live" else 0
        ids = {id_at(out, int(f), x, y) for f, x, y in person["anchors"] if f >= tol}
        assert len(ids) == 1 and None not in ids, (person["name"], ids)
        assert not ids & ids_seen, (person["name"], ids)
        ids_seen |= ids


def test_refined_pose2sim_multi_cam03_finds_the_hidden_woman() -> None:
    # The bare detector has one skeleton per frame on this view; the search must add
    # the woman standing behind the man (labelled by eye: in view all 100 frames).
    bare = [len(f.people) for f in _frames("pose2sim_multi_cam03")]
    refined = [len(f.people) for f in _refined("pose2sim_multi_cam03")]
    assert max(bare) == 1
    # Both seen in nearly every frame 0-80 (both are in view in all; the search misses
    # her in 2 of 0-60 and in 1 more up to 80, where the man's skeleton carries her
    # head and overlaps her); from 81, where his skeleton slides onto her, a skeleton
    # is on her (her torso, by eye, at (0.27, 0.41) throughout) on every frame: the
    # drifting blend gives way to her find (detectors/refine.py, _settle).
    assert sum(n >= 2 for n in refined[:61]) >= 58
    assert sum(n >= 2 for n in refined[:81]) >= 77
    clip = list(_refined("pose2sim_multi_cam03"))
    on_her = [
        any(float(np.linalg.norm(centre(p, f) - (0.27, 0.41))) < 0.06 for p in f.people)
        for f in clip[81:]
    ]
    assert all(on_her), on_her


def test_pose2sim_single_views_one_id_over_all_100_frames() -> None:
    for cam in range(1, 5):
        fr = frames(f"pose2sim_single_cam0{cam}")
        assert len(fr) == 100
        out = offline(fr)
        glitches = LABELS[f"pose2sim_single_cam0{cam}"].get("impossible_frames", [])
        expected = [[] if i in glitches else [1] for i in range(100)]
        assert [sorted({p.track_id for p in f.people}) for f in out] == expected


# -- adversarial sequences built from the real detections -----------------------------


@pytest.mark.parametrize("mode", list(MODES))
def test_person_lying_down_keeps_one_id(mode: str) -> None:
    # The real performer turned 90 degrees (as a floor exercise is seen): nothing in
    # identity may assume people are upright (scale, limbs, plausibility).
    fr = frames("pose2sim_single_cam01")
    for f in fr:
        cx, cy = f.width / 2, f.height / 2
        for p in f.people:
            x, y = p.keypoints[:, 0].copy(), p.keypoints[:, 1].copy()
            p.keypoints[:, 0], p.keypoints[:, 1] = cy + (y - cy), cx - (x - cx)
            p.box = None
        f.width, f.height = f.height, f.width
    out = MODES[mode](fr)
    assert set(spans(out)) == {1}
    tol = LIVE_TOL if mode == "live" else 0
    assert sum(1 for f in out if f.people) >= 100 - tol


ATHLETE = LABELS["sports2d_demo"]["person"][0]
WALKER = LABELS["sports2d_demo"]["person"][1]


def _is_athlete(p: PersonPose, f: FramePoses) -> bool:
    # On the box until the flip (upper half of the frame); the walker is on the grass.
    return bool(f.index < 170 and centre(p, f)[1] < 0.45)


def _is_walker(p: PersonPose, f: FramePoses) -> bool:
    # On the grass; after the athlete lands there (right half), the walker is far left.
    x, y = centre(p, f)
    return bool(y > 0.55 and (f.index < 186 or x < 0.3))


def _athlete_id(out: list[FramePoses]) -> set[int | None]:
    return {id_at(out, int(fr), x, y) for fr, x, y in ATHLETE["anchors"]}


def test_reacquired_athlete_is_two_tracklets_of_one_person_live_and_offline() -> None:
    fr = frames("sports2d_demo")
    for f in fr:
        if 60 <= f.index < 150:
            f.people = [p for p in f.people if not _is_athlete(p, f)]
    ident = LiveIdentity()
    out = [dataclasses.replace(f, people=ident.update(f)) for f in fr]
    pid = id_at(out, 30, 0.36, 0.20)
    assert pid is not None and len(ident.tracklets()[pid]) >= 2
    off, persons = identify_offline(fr)
    pid = id_at(off, 30, 0.36, 0.20)
    assert pid is not None and len(persons[pid]) >= 2
    assert sorted(persons) == list(range(1, len(persons) + 1))


@pytest.mark.parametrize("mode", list(MODES))
def test_athlete_lost_for_3_s_is_reacquired_with_the_same_id(mode: str) -> None:
    fr = frames("sports2d_demo")
    for f in fr:
        if 60 <= f.index < 150:  # 90 frames at 30 fps: 3 s without the athlete
            f.people = [p for p in f.people if not _is_athlete(p, f)]
    out = MODES[mode](fr)
    assert all(not any(_is_athlete(p, f) for p in f.people) for f in out[60:150])
    ids = {id_at(out, 30, 0.36, 0.20), id_at(out, 155, 0.45, 0.22)}
    assert len(ids) == 1 and None not in ids, ids
    assert len(spans(out)) == 2
    walker = anchor_ids(out, WALKER)
    assert len(walker) == 1 and walker != ids


@pytest.mark.parametrize("mode", list(MODES))
def test_spurious_second_skeleton_is_suppressed(mode: str) -> None:
    rng = np.random.default_rng(0)
    fr = frames("sports2d_demo")
    injected = 0
    for f in fr[20:80]:
        for p in list(f.people):
            if _is_athlete(p, f):
                kp = p.keypoints.copy()
                h = float(body_scale(kp[None].astype(np.float64), 0.3)[0])
                kp[:, :2] += np.array([0.04 * h, 0.03 * h]) + rng.normal(0, 0.02 * h, (len(kp), 2))
                kp[:, 2] *= 0.9
                f.people.append(PersonPose(keypoints=kp.astype(np.float32), score=0.8))
                injected += 1
    assert injected > 40
    out = MODES[mode](fr)
    assert len(spans(out)) == 2
    for f in out[20:80]:
        athletes = [p for p in f.people if _is_athlete(p, f)]
        assert len(athletes) <= 1, f.index
    assert len(_athlete_id(out)) == 1


def _lr_separation(kp: np.ndarray) -> float:
    ok = (kp[:, 2] > 0.5) & (kp[MIRROR, 2] > 0.5)
    ok[np.arange(len(kp)) == MIRROR] = False
    d = np.linalg.norm(kp[ok, :2] - kp[MIRROR][ok, :2], axis=1)
    return float(np.median(d)) if d.size else 0.0


@pytest.mark.parametrize("mode", list(MODES))
def test_injected_left_right_swaps_are_corrected(mode: str) -> None:
    fr = frames("pose2sim_single_cam01")
    original = [f.people[0].keypoints.copy() for f in fr]
    scale = float(body_scale(original[50][None].astype(np.float64), 0.3)[0])
    # Short runs of swapped labels (MediaPipe's kind: a few frames, then back), only
    # where the person is not side-on (left and right joints apart), else a swap is moot.
    runs = [range(20, 23), range(40, 41), range(61, 65), range(80, 82)]
    swapped = [i for r in runs for i in r if _lr_separation(original[i]) > 0.1 * scale]
    assert len(swapped) >= 6
    for i in swapped:
        fr[i].people[0].keypoints = original[i][MIRROR].copy()
    out = MODES[mode](fr)
    lk = JOINT_INDEX["left_knee"]
    for i in swapped:
        (p,) = out[i].people
        np.testing.assert_allclose(p.keypoints[lk, :2], original[i][lk, :2], atol=1e-3)
    # And a clip without injected swaps keeps the detector's labels where it is steady.
    clean = MODES[mode](frames("pose2sim_single_cam01"))
    same = [
        np.allclose(f.people[0].keypoints[lk, :2], o[lk, :2], atol=1e-3, equal_nan=True)
        for f, o in zip(clean[5:], original[5:], strict=True)
        if f.people
    ]
    assert np.mean(same) > 0.9


@pytest.mark.parametrize("mode", list(MODES))
def test_walker_crossing_the_athlete_keeps_both_ids(mode: str) -> None:
    # Move the real passer-by up onto the athlete's line: walking right to left with
    # swinging arms, they pass right through the athlete (on the box) around frame 130.
    fr = frames("sports2d_demo")
    for f in fr:
        for p in f.people:
            if _is_walker(p, f):
                p.keypoints[:, 1] -= 0.45 * f.height
                p.box = None
    out = MODES[mode](fr)
    assert len(spans(out)) == 2
    athlete = {id_at(out, fr_, x, y) for fr_, x, y in ATHLETE["anchors"]}
    walker = {id_at(out, fr_, x, y - 0.45) for fr_, x, y in WALKER["anchors"]}
    assert len(athlete) == 1 and None not in athlete, athlete
    assert len(walker) == 1 and None not in walker, walker
    assert athlete != walker


@pytest.mark.parametrize("mode", list(MODES))
def test_impossible_joints_and_skeletons_are_rejected(mode: str) -> None:
    fr = frames("pose2sim_single_cam01")
    lw, le = JOINT_INDEX["left_wrist"], JOINT_INDEX["left_elbow"]
    h = float(body_scale(fr[50].people[0].keypoints[None].astype(np.float64), 0.3)[0])
    jump_at, stretch_at, teleport_at = 40, 60, 75
    # One joint a body height and a half away from where it was a frame ago.
    fr[jump_at].people[0].keypoints[JOINT_INDEX["right_ankle"], 0] += 1.5 * h
    # A forearm suddenly 80% longer than it is.
    kp = fr[stretch_at].people[0].keypoints
    kp[lw, :2] = kp[le, :2] + 1.8 * (kp[lw, :2] - kp[le, :2])
    kp[lw, 2] = 0.99
    # The whole skeleton somewhere else for one frame (a detector glitch), 3 heights away.
    fr[teleport_at].people[0].keypoints[:, 0] += 3 * h
    out = MODES[mode](fr)
    assert len(spans(out)) == 1
    assert out[jump_at].people[0].keypoints[JOINT_INDEX["right_ankle"], 2] == 0
    assert out[stretch_at].people[0].keypoints[lw, 2] == 0
    assert out[stretch_at].people[0].keypoints[le, 2] > 0.3  # the rest of the arm stays
    assert out[teleport_at].people == []
    # Untouched frames keep every joint the detector was confident about.
    assert (out[30].people[0].keypoints[:, 2] > 0).sum() >= (
        fr[30].people[0].keypoints[:, 2] > 0.3
    ).sum()
