"""RefiningDetector: where a detector misses small people, search again enlarged.

First with a constructed "detector" that, like BlazePose, only sees a target above a
minimum size in the image it is given (so the mapping of crop coordinates back to the
frame, the dedupe and the budget are checked exactly); then with the real MediaPipe
model on real footage downscaled until the person is ~60 px tall in a 480x270 frame,
where the plain detector misses them and the refining one must find them where the
labels say they are.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from pose_analyzer.detectors import create_detector
from pose_analyzer.detectors.refine import RefiningDetector
from pose_analyzer.keypoints import NUM_JOINTS, PersonPose
from pose_analyzer.settings import get_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MIN_SIDE = 40  # the constructed detector's blind spot: targets smaller than this


def _find_white(image: npt.NDArray[np.uint8]) -> list[PersonPose]:
    """Each white (255) blob at least MIN_SIDE px tall, as a 'person' whose joints are
    spread over the blob; nothing for smaller blobs (a small-person blind spot)."""
    mask = (image.min(axis=2) > 250).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    people = []
    for x, y, w, h, _area in stats[1:n]:
        if h < MIN_SIDE:
            continue
        kp = np.zeros((NUM_JOINTS, 3), dtype=np.float32)
        kp[:, 0] = x + w * np.linspace(0, 1, NUM_JOINTS)
        kp[:, 1] = y + h * np.linspace(0, 1, NUM_JOINTS)
        kp[:, 2] = 0.9
        people.append(PersonPose(kp, 0.9, (float(x), float(y), float(x + w), float(y + h))))
    return people


class WhiteDetector:
    name = "white"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls = 0
        self.delay_s = delay_s

    def detect_one(self, frame: npt.NDArray[np.uint8], t: float = 0.0) -> list[PersonPose]:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)  # stands for inference time, to exercise the budget
        return _find_white(frame)

    def detect(
        self, frames: Sequence[npt.NDArray[np.uint8]], timestamps: Sequence[float]
    ) -> list[list[PersonPose]]:
        return [self.detect_one(f) for f in frames]

    def close(self) -> None:
        pass


def _scene(boxes: list[tuple[int, int, int, int]]) -> npt.NDArray[np.uint8]:
    img = np.full((270, 480, 3), 60, dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        img[y0:y1, x0:x1] = 255
    return img


def test_small_target_found_by_tiles_and_mapped_back_to_frame_pixels() -> None:
    det = RefiningDetector(WhiteDetector(), crop_detector=WhiteDetector(), crop_size=400)
    (people,) = det.detect([_scene([(300, 150, 312, 180)])], [0.0])  # 30 px: inner misses
    (p,) = people
    assert p.box is not None
    np.testing.assert_allclose(p.box, (300, 150, 311, 179), atol=1.0)
    assert p.keypoints[:, 0].min() == pytest.approx(300, abs=1.0)
    assert det.stats.tiles >= 1 and det.stats.found == 1


def test_lost_person_searched_by_a_crop_around_the_last_box() -> None:
    crop = WhiteDetector()
    det = RefiningDetector(WhiteDetector(), crop_detector=crop, crop_size=400)
    big = _scene([(100, 50, 130, 150)])  # 100 px tall: found by the plain detector
    small = _scene([(104, 80, 116, 110)])  # then 30 px (further away): missed by it
    (first,) = det.detect([big], [0.0])
    assert len(first) == 1 and crop.calls == 0  # nothing to search for: not even loaded
    ((p,),) = det.detect([small], [0.1])
    assert p.box is not None
    np.testing.assert_allclose(p.box, (104, 80, 115, 109), atol=1.0)
    assert det.stats.crops == 1 and det.stats.tiles == 0


def test_search_does_not_duplicate_a_person_the_frame_already_has() -> None:
    # One big target (found plainly) and, inside the crop around a lost one, the same
    # big target again: the crop's find overlaps an existing detection and is dropped.
    det = RefiningDetector(WhiteDetector(), crop_detector=WhiteDetector(), crop_size=400)
    det.detect([_scene([(100, 50, 130, 150), (200, 50, 230, 150)])], [0.0])
    (people,) = det.detect([_scene([(100, 50, 130, 150)])], [0.1])  # second one left
    # The square crop finds only the first again (dropped), so the tight crop runs too.
    assert len(people) == 1 and det.stats.crops == 2


def test_budget_stops_the_search_and_empty_scenes_do_not_tile_every_frame() -> None:
    crop = WhiteDetector(delay_s=0.02)
    det = RefiningDetector(
        WhiteDetector(), crop_detector=crop, budget_ms=30, tiles=3, tile_every_s=0.5
    )
    det.detect([_scene([])], [0.0])
    warmup = 1  # the crop detector's first (set-up) inference, outside any budget
    assert 1 <= crop.calls - warmup <= 2  # 3x3 tiles, but the 30 ms budget allows 1 or 2
    assert det.stats.over_budget == 1
    # The cut-short pass resumes where it stopped, frame after frame, until all 9 ran...
    t = 0.0
    while det.stats.tiles < 9:
        t += 0.01
        det.detect([_scene([])], [t])
    assert det.stats.tiles == 9 == crop.calls - warmup
    # ...and then the empty scene is not tiled again within tile_every_s.
    det.detect([_scene([])], [t + 0.1])
    assert det.stats.tiles == 9
    det.detect([_scene([])], [t + 0.6])
    assert det.stats.tiles > 9


class FirstFrameOnly(WhiteDetector):
    """Finds the white blobs on its first call only: a detector that then loses them."""

    def detect_one(self, frame: npt.NDArray[np.uint8], t: float = 0.0) -> list[PersonPose]:
        found = super().detect_one(frame, t)
        return found if self.calls == 1 else []


def test_max_searches_bounds_calls_per_frame_and_two_lost_people_take_turns() -> None:
    crop = WhiteDetector()
    det = RefiningDetector(FirstFrameOnly(), crop_detector=crop, crop_size=400, max_searches=1)
    scene = _scene([(100, 50, 130, 150), (300, 50, 330, 150)])
    assert len(det.detect([scene], [0.0])[0]) == 2  # both found plainly, then lost
    det.crop  # noqa: B018 - load it (its set-up call is not a search)
    firsts = []
    for k in range(1, 7):
        calls = crop.calls
        (people,) = det.detect([scene], [k * 0.1])
        assert crop.calls - calls == 1  # one landmarker call, though two are lost
        (p,) = people
        assert p.box is not None
        firsts.append(round(p.box[0]))
    # Longest unseen first: the one not found on the last frame is searched next.
    assert firsts == [100, 300, 100, 300, 100, 300] or firsts == [300, 100, 300, 100, 300, 100]
    assert det.stats.max_calls == 1 and det.stats.capped == 6


def test_someone_who_stays_lost_is_searched_every_retry_s_until_lost_s() -> None:
    def crops_for(retry_s: float) -> int:
        det = RefiningDetector(
            WhiteDetector(), crop_detector=WhiteDetector(), max_searches=1, retry_s=retry_s
        )
        # A stays in view (found plainly: the frame is never empty, so no tiles); B is
        # seen on the first 3 frames (a confirmed memory: one seen less is searched
        # once) and then gone for good.
        for k in range(3):
            det.detect([_scene([(100, 50, 130, 150), (300, 50, 330, 150)])], [k * 0.125])
        for k in range(3, 27):  # 3 s at 8 fps; lost_s is 2 s after B's last sighting
            det.detect([_scene([(100, 50, 130, 150)])], [k * 0.125])
        assert det.stats.tiles == 0 and det.stats.found == 0
        return det.stats.crops

    assert crops_for(0.0) == 16  # every frame up to lost_s: 0.375 .. 2.25
    assert crops_for(0.5) == 4  # at 0.375, 0.875, 1.375, 1.875


def test_a_tile_pass_spreads_over_frames_and_a_cap_defers_it_not_skips_it() -> None:
    det = RefiningDetector(
        WhiteDetector(), crop_detector=WhiteDetector(), max_searches=1, tile_every_s=1.0
    )
    for k in range(4):  # an empty scene: 2x2 tiles, one per frame
        det.detect([_scene([])], [k * 0.03])
        assert det.stats.tiles == k + 1
    det.detect([_scene([])], [0.15])  # the pass is done: not again within tile_every_s
    assert det.stats.tiles == 4 and det.stats.max_calls == 1

    det = RefiningDetector(
        WhiteDetector(), crop_detector=WhiteDetector(), max_searches=1, retry_s=0.5
    )
    det.detect([_scene([(100, 50, 130, 150)])], [0.0])
    det.detect([_scene([])], [0.1])  # gone: its crop takes the frame's one call
    assert det.stats.crops == 1 and det.stats.tiles == 0
    det.detect([_scene([])], [0.2])  # its retry is not due: the deferred tiles run
    assert det.stats.tiles == 1


@pytest.mark.parametrize(
    ("option", "message"),
    [({"max_searches": 0}, "max_searches"), ({"retry_s": -1.0}, "retry_s")],
)
def test_bad_live_options_are_refused(option: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RefiningDetector(WhiteDetector(), crop_detector=WhiteDetector(), **option)


def test_create_detector_wraps_with_refine() -> None:
    path = Path(__file__).parent / "data" / "real" / "pose2sim_single_cam01.jsonl"
    det = create_detector("replay", str(path), refine=True, refine_options={"budget_ms": 10})
    assert isinstance(det, RefiningDetector) and det.name == "replay+refine"
    assert det.budget_s == pytest.approx(0.01)
    with pytest.raises(TypeError, match="budget_mss"):
        create_detector("replay", str(path), refine=True, refine_options={"budget_mss": 1})


# -- real footage, real model ---------------------------------------------------------

S2D = get_settings().data_dir / "samples" / "sports2d" / "demo.mp4"
MODEL = get_settings().models_dir / "pose_landmarker_full.task"
LABELS = tomllib.loads(
    (Path(__file__).parent / "data" / "real" / "labels_identity.toml").read_text()
)
SCALE = 0.163  # the athlete (~370 px of 994) becomes ~60 px
CANVAS = (480, 270)


def small_frames(indices: list[int]) -> tuple[list[npt.NDArray[np.uint8]], tuple[int, int, int]]:
    """Sports2D frames downscaled by SCALE and letterboxed into 480x270 (grey borders)."""
    if not S2D.is_file() or not MODEL.is_file():
        pytest.skip("needs scripts/fetch_samples.py and make download-models")
    cap = cv2.VideoCapture(str(S2D))
    out, i = [], 0
    size = (0, 0, 0)
    while len(out) < len(indices):
        ok, frame = cap.read()
        if not ok:
            break
        if i in indices:
            h, w = frame.shape[:2]
            sw, sh = round(w * SCALE), round(h * SCALE)
            small = cv2.resize(frame, (sw, sh), interpolation=cv2.INTER_AREA)
            canvas = np.full((CANVAS[1], CANVAS[0], 3), 114, dtype=np.uint8)
            x0, y0 = (CANVAS[0] - sw) // 2, (CANVAS[1] - sh) // 2
            canvas[y0 : y0 + sh, x0 : x0 + sw] = small
            out.append(canvas)
            size = (x0, y0, sw)
        i += 1
    cap.release()
    return out, size


@pytest.mark.slow
def test_real_small_people_missed_plainly_found_by_refining_at_the_labelled_place() -> None:
    people = LABELS["sports2d_demo"]["person"]
    indices = list(range(60, 160, 10))
    frames, (x0, y0, sw) = small_frames(indices)
    sh = round(994 * SCALE)
    times = [i / 30 for i in indices]  # the clip's own timing (30 fps)
    plain = create_detector("mediapipe", "full")
    try:
        plain_found = [len(p) for p in plain.detect(frames, times)]
    finally:
        plain.close()
    assert sum(plain_found) <= 2, plain_found  # MediaPipe alone really misses them
    # An offline budget: the time it costs is measured in bench/bench_refine.py.
    refining = create_detector("mediapipe", "full", refine=True, refine_options={"budget_ms": 2000})
    try:
        found = refining.detect(frames, times)
    finally:
        refining.close()
    assert all(found), [len(f) for f in found]
    checked = 0
    for person in people:
        for fr, ax, ay in person["anchors"]:
            if fr not in indices or (person["name"] == "athlete" and fr != 100):
                continue  # the athlete bends over on the box from ~130: not found there
            want = np.array([x0 + ax * sw, y0 + ay * sh])
            centres = [
                np.array([(p.box[0] + p.box[2]) / 2, (p.box[1] + p.box[3]) / 2])
                for p in found[indices.index(fr)]
                if p.box is not None
            ]
            # Within a third of the ~60 px body height of the labelled torso position.
            dist = min(float(np.linalg.norm(c - want)) for c in centres)
            assert dist < 20, (person["name"], fr, want, centres)
            checked += 1
    assert checked == 3


def _person(x0: float, y0: float, x1: float, y1: float) -> PersonPose:
    kp = np.zeros((NUM_JOINTS, 3), dtype=np.float32)
    kp[:, 0] = x0 + (x1 - x0) * np.linspace(0, 1, NUM_JOINTS)
    kp[:, 1] = y0 + (y1 - y0) * np.linspace(0, 1, NUM_JOINTS)
    kp[:, 2] = 0.9
    return PersonPose(kp, 0.99, (x0, y0, x1, y1))


def test_blended_skeleton_of_two_found_people_is_dropped_and_a_third_person_is_not() -> None:
    from pose_analyzer.detectors.refine import _blends

    left, right = _person(0, 0, 100, 300), _person(100, 0, 200, 300)
    # A detector skeleton spanning the two (its joints between theirs, on neither): the
    # box is half inside each; as Pose2Sim multi cam02's blend.
    blend = _person(40, 20, 160, 280)
    assert _blends([blend, left, right]) == {0}
    # Three people in a row, each with a box of their own: nobody is a blend.
    assert _blends([left, right, _person(200, 0, 300, 300)]) == set()
    # A person partly overlapping one other (half behind them) is not covered by two.
    assert _blends([_person(60, 30, 150, 290), left]) == set()


# -- a find against the frame's skeleton it overlaps: drift, two people, motion --------


class ScriptedDetector:
    """The video-mode landmarker's output, frame by frame, as given."""

    name = "scripted"

    def __init__(self, frames: list[list[PersonPose]]) -> None:
        self.frames = list(frames)

    def detect(
        self, frames: Sequence[npt.NDArray[np.uint8]], timestamps: Sequence[float]
    ) -> list[list[PersonPose]]:
        return [self.frames.pop(0) for _ in frames]

    def close(self) -> None:
        pass


def _mix(a: PersonPose, b: PersonPose, w: float) -> PersonPose:
    """A skeleton (1 - w) of the way from a's joints to b's: a blend sliding onto b."""
    kp = (1 - w) * a.keypoints + w * b.keypoints
    kp[:, 2] = 0.9
    return PersonPose(kp.astype(np.float32), 0.99, None)


def _near(p: PersonPose, box: tuple[float, float, float, float], tol: float = 3.0) -> bool:
    assert p.box is not None
    return bool(np.allclose(p.box, box, atol=tol))


def test_a_skeleton_drifting_onto_a_still_person_gives_way_to_the_find_that_continues_her() -> None:
    # Frame 0: two people, the landmarker has both. Frame 1: it has one skeleton, 85% of
    # the way from the man's joints onto the woman's (the man is lost, as on Pose2Sim
    # multi cam03 from ~80), and only she is in the image to be found. The crop around
    # the man finds her, exactly where she stood: her, not the blend, is the output.
    man, woman = _person(120, 40, 200, 240), _person(60, 60, 110, 200)
    drift = _mix(woman, man, 0.15)
    det = RefiningDetector(
        ScriptedDetector([[man, woman], [drift]]), crop_detector=WhiteDetector(), crop_size=400
    )
    det.detect([_scene([(60, 60, 111, 201)])], [0.0])
    (people,) = det.detect([_scene([(60, 60, 111, 201)])], [1 / 60])
    assert len(people) == 1 and _near(people[0], (60, 60, 110, 200))
    assert det.stats.replaced == 1 and det.stats.found == 0


def test_a_person_half_behind_another_is_kept_when_each_continues_their_own() -> None:
    # The woman stands behind the man: her box lies inside his, their joints close but
    # apart. Frame 1: the landmarker keeps him and loses her; the crop around her finds
    # her where she was. Two people, each continuing their own: both are kept.
    man, woman = _person(50, 20, 200, 250), _person(70, 60, 120, 200)
    scene = _scene([(70, 60, 121, 201)])
    det = RefiningDetector(
        ScriptedDetector([[man, woman], [man]]), crop_detector=WhiteDetector(), crop_size=400
    )
    det.detect([scene], [0.0])
    (people,) = det.detect([scene], [1 / 60])
    assert len(people) == 2 and _near(people[1], (70, 60, 120, 200))
    # The same find with nobody remembered there (a scan of a scene where only the man
    # was ever seen) is a partial second skeleton of him: dropped.
    fresh = RefiningDetector(
        ScriptedDetector([[man], [man]]),
        crop_detector=WhiteDetector(),
        crop_size=400,
        tiles=1,
        scan_every_s=1 / 60,
    )
    fresh.detect([_scene([])], [0.0])
    (people,) = fresh.detect([scene], [1 / 60])
    assert len(people) == 1 and people[0] is man
    assert fresh.stats.tiles >= 1 and fresh.stats.found == 0


def test_only_a_close_continuation_replaces_the_frames_skeleton() -> None:
    # The video-mode skeleton follows a moving person better than a still image does:
    # a find that moved with the person (8 px of a 140 px body) does not replace a
    # sloppier skeleton of them; one that stands where they stood (2 px) does.
    woman = _person(60, 60, 110, 200)
    det = RefiningDetector(ScriptedDetector([]), crop_detector=WhiteDetector())
    det._remember([woman], 0.0)
    sloppy = woman.keypoints.copy()
    sloppy[:, 0] += 8
    sloppy[11:, 1] += 12  # hips and legs off as well
    known = [(sloppy, np.array([68.0, 60.0, 118.0, 212.0]))]
    for shift, expected in ((6.0, None), (2.0, 0)):
        find = woman.keypoints.copy()
        find[:, 0] += shift
        box = np.array([60 + shift, 60, 110 + shift, 200])
        assert det._settle(find, box, known) == expected, shift


@pytest.mark.slow
def test_real_pose2sim_multi_cam03_each_keeps_their_id_to_the_last_frame() -> None:
    # The offline detector on the real clip (not the cache in tests/data/real/refined):
    # the man's video-mode skeleton carries the woman's head from ~60 and slides onto
    # her from ~78; every labelled anchor of each person must carry one id, theirs only.
    from pose_analyzer.identity import identify_offline
    from pose_analyzer.keypoints import FramePoses

    video = get_settings().data_dir / "samples" / "pose2sim" / "multi" / "cam03.mp4"
    if not video.is_file() or not MODEL.is_file():
        pytest.skip("needs scripts/fetch_samples.py and make download-models")
    det = create_detector(
        "mediapipe", "full", refine=True, refine_options={"budget_ms": 2000}, num_poses=4
    )
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames: list[FramePoses] = []
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                break
            t = len(frames) / fps
            (people,) = det.detect([image], [t])
            h, w = image.shape[:2]
            frames.append(FramePoses(len(frames), t, w, h, people))
    finally:
        cap.release()
        det.close()
    assert len(frames) == 100
    out, _ = identify_offline(frames)
    ids: dict[str, set[int | None]] = {}
    for person in LABELS["pose2sim_multi_cam03"]["person"]:
        got: set[int | None] = set()
        for fr, ax, ay in person["anchors"]:
            # The id of the skeleton whose centre (of its confident joints, as fractions
            # of the frame) is nearest the anchor, within 0.12.
            f = out[int(fr)]
            best, best_d = None, 0.12
            for p in f.people:
                xy = p.keypoints[p.keypoints[:, 2] > 0.3, :2]
                c = (xy.min(axis=0) + xy.max(axis=0)) / 2 / (f.width, f.height)
                if (d := float(np.linalg.norm(c - (ax, ay)))) < best_d:
                    best, best_d = p.track_id, d
            got.add(best)
        ids[person["name"]] = got
    assert ids["man"] != ids["woman"], ids
    assert all(len(v) == 1 and None not in v for v in ids.values()), ids


@pytest.mark.parametrize("overlapped", [False, True])
def test_a_still_lone_person_only_the_search_finds_is_looked_at_every_rest_s(
    overlapped: bool,
) -> None:
    # The landmarker has the performer on every frame and never the observer standing
    # at the back (Pose2Sim single cam01): the first frame's scan finds the observer,
    # then crops follow them. Once found at the same place 3 times running they are
    # searched every rest_s (0.25 s: every 15th frame at 60 fps), not on every frame;
    # unless someone the frame has overlaps them, then on every frame.
    performer = _person(30, 80, 120, 260) if overlapped else _person(300, 20, 360, 250)
    scene = _scene([(40, 100, 71, 161)])  # the observer, 60 px tall
    frames = 61
    det = RefiningDetector(
        ScriptedDetector([[performer] for _ in range(frames)]),
        crop_detector=WhiteDetector(),
        crop_size=400,
        tiles=1,
        scan_every_s=100.0,
        rest_s=0.25,
    )
    seen = 0
    for i in range(frames):
        (people,) = det.detect([scene], [i / 60])
        seen += any(_near(p, (40, 100, 70, 160)) for p in people)
    if overlapped:
        assert det.stats.rested == 0 and det.stats.crops == frames - 1 and seen == frames
    else:
        # Frame 0: the scan; 1-3: crops (still after the third, at t = 3/60); then a
        # crop each time 0.25 s have passed since the last find: ~18, ~33, ~48.
        assert det.stats.crops == 3 + 3 and seen == 1 + 3 + 3
        assert det.stats.rested == frames - 1 - det.stats.crops


def test_rest_s_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="rest_s"):
        RefiningDetector(WhiteDetector(), crop_detector=WhiteDetector(), rest_s=-1)


def test_someone_seen_on_one_frame_only_is_searched_once_then_forgotten() -> None:
    # A partial or passing skeleton the landmarker gives on one frame is a tentative
    # memory: one search, and if that finds nothing, no more (a confirmed person, seen
    # on 3 frames, is searched for lost_s: the test above).
    det = RefiningDetector(WhiteDetector(), crop_detector=WhiteDetector())
    det.detect([_scene([(100, 50, 130, 150), (300, 50, 330, 150)])], [0.0])
    for k in range(1, 17):  # 2 s at 8 fps
        det.detect([_scene([(100, 50, 130, 150)])], [k * 0.125])
    # The square crop and the tight one, on the frame after: nothing; then nothing.
    assert det.stats.crops == 2 and det.stats.triggered == 1
