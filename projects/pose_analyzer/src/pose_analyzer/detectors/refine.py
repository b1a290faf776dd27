"""Search again, at higher resolution, where a detector found nobody or lost someone.

BlazePose's person detector works on a 224 px square of the whole frame, so a person
~60 px tall in a 480x270 frame is ~30 px to it and is usually missed. Given the same
pixels enlarged it finds them. `RefiningDetector` wraps any backend and, per frame:

1. if a person seen in the last `lost_s` seconds has no detection now, crops a square
   around their last box (`crop_margin` times its size), enlarges it to `crop_size` px
   and runs the crop detector on it; if that finds no one new, the box itself
   (`tight_margin` times it): someone half behind another person is the main subject
   only of a tight crop;
2. if after that nobody at all is found, runs it on `tiles` x `tiles` overlapping tiles,
   each enlarged to `crop_size` (no more often than every `tile_every_s` while the frame
   stays empty, so an empty scene does not pay the tiling cost on every frame);

3. if `scan_every_s` is set, runs the same tiles every that many seconds *even when
   people are found*: a video-mode landmarker that tracks the people it has stops
   looking for others, so someone it never picked up (a second performer standing
   behind the first, Pose2Sim multi cam03) stays unseen for the whole clip. Once a
   scan finds them they are "seen", and step 1 follows them with crops from then on.

stopping as soon as the frame's `budget_ms` is spent (measured, per frame; a pass over
the tiles that the budget cut short resumes at the next tile on the next frame), or,
with `max_searches`, after that many landmarker calls in the frame (crops and tiles
together: work per frame bounded by a count, not only by a clock that is checked
between calls). With `retry_s`, someone whose search found nothing is searched for
again no sooner than that (a person who stays lost costs one search per `retry_s`, not
one per frame, until `lost_s` ends the search); under `max_searches`, the lost are
served longest-unseen first, so two lost people take turns instead of the most
recently seen one taking every frame's search. Live streams use this (the LIVE preset
in `detectors/__init__.py`). What a
search finds is mapped back to frame pixels and dropped if it is a skeleton the frame
already has. "Already has" is judged on the joints, not on boxes: two people one behind
the other have overlapping boxes (one's centre inside the other's box) but their joints
lie apart; a second find of one person puts its joints where the first has them. The
crop detector is a separate image-mode landmarker: MediaPipe's video mode keeps tracking
state tied to one image size and strictly increasing timestamps, which crops of varying
size and position would break.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from pose_analyzer.keypoints import PersonPose, PoseDetector


class ImageDetector(Protocol):
    """Detects in one still image (no state between calls)."""

    def detect_one(self, frame: npt.NDArray[np.uint8], t: float = 0.0) -> list[PersonPose]: ...

    def close(self) -> None: ...


@dataclass
class RefineStats:
    """What the searches did, for benchmarks and metrics."""

    frames: int = 0
    triggered: int = 0  # frames on which a search ran
    crops: int = 0
    tiles: int = 0
    found: int = 0  # people added by a search
    search_s: float = 0.0  # time spent searching, all frames
    over_budget: int = 0  # frames on which the budget stopped a search
    capped: int = 0  # frames on which max_searches stopped a search
    max_calls: int = 0  # most landmarker calls (crops + tiles) in one frame
    blends_dropped: int = 0  # detector skeletons blended from two people the search found
    replaced: int = 0  # detector skeletons replaced by a find that continues a person better
    rested: int = 0  # searches skipped for a still, lone person only the search finds


@dataclass
class _Seen:
    box: np.ndarray  # x1, y1, x2, y2
    t: float
    keypoints: np.ndarray | None = None  # (J, 3) as last seen
    tight: bool = False  # last found by the tight crop: try that one first next time
    searched: bool = False  # last seen in a search's find, not in the detector's output
    still: int = 0  # consecutive such finds, each within _STEADY of the one before
    hits: int = 1  # frames seen in
    tried: float = -np.inf  # when a search for them last found nothing (retry_s)


# Two skeletons are one person when their median shared joint lies closer than this
# fraction of the larger box's height (either left/right labelling).
_SAME_PERSON = 0.12
# A find continues a remembered person "closely" (and may replace a frame skeleton that
# continues them less closely) within this fraction of the larger box's height: a person
# standing still is found again within ~0.01-0.03 of it from frame to frame (Pose2Sim
# multi cam03, the woman: 0.003-0.03 over 40 frames of tight crops).
_STEADY = 0.04
# A person only the search finds, found this many times running within _STEADY of the
# last find, is "still" (see RefiningDetector._resting).
_STILL_FINDS = 3
# A remembered person seen on at least this many frames is searched for up to lost_s
# after they were last seen; one seen less, until one search for them finds nothing.
_CONFIRMED = 3
# The joints compared: one per body part (nose for the head, no eyes/ears/heels/toes).
# Five face points sit within a few pixels of each other, so a skeleton whose head is on
# one person and whose body is on another (a blend MediaPipe produces when two people
# overlap) would otherwise count as that person's head-only double.
_BODY = np.array([0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])


def _distance(
    a_kp: np.ndarray | None, a_box: np.ndarray, b_kp: np.ndarray | None, b_box: np.ndarray
) -> float:
    """How far apart two skeletons are: the median shared body joint's distance in
    heights of the larger box (either left/right labelling). Without 3 shared confident
    joints, boxes decide: 0 when their IoU is over 0.5, else inf."""
    if a_kp is not None and b_kp is not None:
        from pose_analyzer.identity.skeleton import MIRROR

        a_kp = a_kp[_BODY]
        a_ok = (a_kp[:, 2] > 0.3) & np.isfinite(a_kp[:, :2]).all(axis=1)
        height = max(a_box[3] - a_box[1], b_box[3] - b_box[1], 1.0)
        best = np.inf
        for b in (b_kp[_BODY], b_kp[MIRROR][_BODY]):
            both = a_ok & (b[:, 2] > 0.3) & np.isfinite(b[:, :2]).all(axis=1)
            if both.sum() >= 3:
                d = np.linalg.norm(a_kp[both, :2] - b[both, :2], axis=1)
                best = min(best, float(np.median(d)) / height)
        if np.isfinite(best):
            return best
    return 0.0 if _iou(a_box, b_box) > 0.5 else np.inf


def _same_person(
    a_kp: np.ndarray | None, a_box: np.ndarray, b_kp: np.ndarray | None, b_box: np.ndarray
) -> bool:
    """Whether two skeletons are one person: their joints coincide."""
    return _distance(a_kp, a_box, b_kp, b_box) < _SAME_PERSON


def _near_joints(a_kp: np.ndarray, b_kp: np.ndarray, limit: float) -> np.ndarray:
    """(len(_BODY),) bool: a's body joints within `limit` px of b's same joint (the
    better of b's two left/right labellings)."""
    from pose_analyzer.identity.skeleton import MIRROR

    a = a_kp[_BODY]
    a_ok = (a[:, 2] > 0.3) & np.isfinite(a[:, :2]).all(axis=1)
    best = np.zeros(len(_BODY), dtype=bool)
    for b in (b_kp[_BODY], b_kp[MIRROR][_BODY]):
        b_ok = (b[:, 2] > 0.3) & np.isfinite(b[:, :2]).all(axis=1)
        near = a_ok & b_ok & (np.linalg.norm(a[:, :2] - b[:, :2], axis=1) < limit)
        if near.sum() > best.sum():
            best = near
    return best


def _inside(a: np.ndarray, b: np.ndarray | None) -> float:
    """Fraction of box a's area inside box b."""
    if b is None:
        return 0.0
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    area = (a[2] - a[0]) * (a[3] - a[1])
    return float(iw * ih / area) if area > 0 else 0.0


def _meet(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """The intersection of two boxes, None if empty."""
    m = np.array([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    return m if m[2] > m[0] and m[3] > m[1] else None


def _blends(people: Sequence[PersonPose]) -> set[int]:
    """Indices of skeletons blended from two others of the frame: part of its joints on
    one person, most of the rest on another (MediaPipe joins two overlapping people
    into one skeleton, e.g. one's head and shoulders with the other's legs). Only
    visible once a search has found both people separately."""
    boxes = [_box_of(p) for p in people]
    out: set[int] = set()
    for i, x in enumerate(people):
        bx = boxes[i]
        if bx is None:
            continue
        ok = int(((x.keypoints[_BODY, 2] > 0.3) & np.isfinite(x.keypoints[_BODY, :2]).all(1)).sum())
        if ok < 6:
            continue
        limit = _SAME_PERSON * max(bx[3] - bx[1], bx[2] - bx[0])
        near = [
            _near_joints(x.keypoints, y.keypoints, limit)
            if j != i and boxes[j] is not None
            else None
            for j, y in enumerate(people)
        ]
        for j, a in enumerate(near):
            for k, b in enumerate(near):
                if a is None or b is None or k <= j:
                    continue
                na, nb = int(a.sum()), int(b.sum())
                if min(na, nb) >= 0.25 * ok and int((a | b).sum()) >= 0.7 * ok:
                    out.add(i)
                # Or its box is two others' side by side: at least 90% of it inside their
                # union, at least 20% inside each (a blend whose limbs lie between the
                # two, on neither: Pose2Sim multi cam02).
                bj, bk = boxes[j], boxes[k]
                assert bj is not None and bk is not None
                cj, ck, both = _inside(bx, bj), _inside(bx, bk), _inside(bx, _meet(bj, bk))
                if min(cj, ck) >= 0.2 and cj + ck - both >= 0.9:
                    out.add(i)
    return out


def _match(seen: Sequence[_Seen], known: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[int, int]:
    """Memory index -> skeleton index, one to one, nearest pairs first, only pairs that
    are the same person. One to one, because a skeleton blended from two overlapping
    people (head on one, body on the other) is near both of them: it may account for
    one, and the other is then searched for, not taken as found."""
    pairs = sorted(
        (d, i, j)
        for i, s in enumerate(seen)
        for j, (kp, box) in enumerate(known)
        if (d := _distance(s.keypoints, s.box, kp, box)) < _SAME_PERSON
    )
    out: dict[int, int] = {}
    used: set[int] = set()
    for _, i, j in pairs:
        if i not in out and j not in used:
            out[i] = j
            used.add(j)
    return out


def _box_of(p: PersonPose) -> np.ndarray | None:
    if p.box is not None:
        return np.asarray(p.box, dtype=np.float64)
    kp = p.keypoints
    ok = (kp[:, 2] > 0) & np.isfinite(kp[:, :2]).all(axis=1)
    if not ok.any():
        return None
    xy = kp[ok, :2].astype(np.float64)
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _overlaps(box: np.ndarray, others: Sequence[np.ndarray], iou: float) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return any(_iou(box, o) > iou or (o[0] <= cx <= o[2] and o[1] <= cy <= o[3]) for o in others)


def _mediapipe_crop_detector(model: str, models_dir: Path | None) -> ImageDetector:
    from pose_analyzer.detectors.mediapipe_backend import MediaPipeDetector

    return MediaPipeDetector(model, mode="image", num_poses=2, models_dir=models_dir)


class RefiningDetector:
    """A PoseDetector that re-searches missed people at higher resolution."""

    def __init__(
        self,
        inner: PoseDetector,
        *,
        crop_detector: ImageDetector | Callable[[], ImageDetector] | None = None,
        crop_model: str = "full",
        budget_ms: float = 120.0,
        lost_s: float = 2.0,
        crop_margin: float = 1.6,
        tight_margin: float = 1.2,
        crop_size: int = 512,
        tiles: int = 2,
        tile_overlap: float = 0.25,
        tile_every_s: float = 0.5,
        scan_every_s: float | None = None,
        rest_s: float = 0.25,
        min_upscale: float = 1.5,
        min_find: float = 0.1,
        min_find_score: float = 0.9,
        models_dir: Path | None = None,
        max_searches: int | None = None,
        retry_s: float = 0.0,
        prefetch: bool | None = None,
    ) -> None:
        if budget_ms <= 0:
            raise ValueError(f"budget_ms must be > 0, got {budget_ms}")
        if tiles < 1:
            raise ValueError(f"tiles must be >= 1, got {tiles}")
        self.inner = inner
        self.name = f"{inner.name}+refine"
        self._crop_factory: Callable[[], ImageDetector]
        if crop_detector is None:
            self._crop_factory = lambda: _mediapipe_crop_detector(crop_model, models_dir)
        elif callable(crop_detector) and not hasattr(crop_detector, "detect_one"):
            self._crop_factory = crop_detector
        else:
            ready: ImageDetector = crop_detector  # type: ignore[assignment]
            self._crop_factory = lambda: ready
        self._crop: ImageDetector | None = None
        self.budget_s = budget_ms / 1000.0
        self.lost_s = lost_s
        self.crop_margin = crop_margin
        self.tight_margin = tight_margin
        self.crop_size = crop_size
        self.tiles = tiles
        self.tile_overlap = tile_overlap
        self.tile_every_s = tile_every_s
        if scan_every_s is not None and scan_every_s <= 0:
            raise ValueError(f"scan_every_s must be > 0 or None, got {scan_every_s}")
        self.scan_every_s = scan_every_s
        if rest_s < 0:
            raise ValueError(f"rest_s must be >= 0 (0: search every frame), got {rest_s}")
        self.rest_s = rest_s
        if max_searches is not None and max_searches < 1:
            raise ValueError(f"max_searches must be >= 1 or None, got {max_searches}")
        if retry_s < 0:
            raise ValueError(f"retry_s must be >= 0, got {retry_s}")
        self.max_searches = max_searches
        self.retry_s = retry_s
        self._calls = 0  # landmarker calls in the current frame
        self._cap_hit = False  # max_searches stopped a search in the current frame
        # A scan runs on the first frame, so its model is needed at once: load it in the
        # background while the caller opens the video and loads the main detector
        # (prefetch=True does so without a scan: a live stream must not stall a frame
        # loading it on the first miss).
        self._loader: threading.Thread | None = None
        self._prefetched: ImageDetector | None = None
        self._prefetch_error: BaseException | None = None
        if prefetch or (prefetch is None and scan_every_s is not None):
            self._loader = threading.Thread(target=self._prefetch, daemon=True)
            self._loader.start()
        self.min_upscale = min_upscale
        self.min_find = min_find
        self.min_find_score = min_find_score
        self._seen: list[_Seen] = []
        self._last_tiling = -np.inf  # when the last complete pass over the tiles ended
        self._next_tile = 0  # a pass the budget cut short resumes here on the next frame
        self._tight_finds: set[int] = set()  # id() of keypoints found by a tight crop
        self._searched: set[int] = set()  # id() of keypoints a search put in the output
        self.stats = RefineStats()

    def _load_crop(self) -> ImageDetector:
        crop = self._crop_factory()
        # The first inference sets the runtime up (~10x a normal one): do it now, on a
        # blank image, not inside the first frame's budget.
        crop.detect_one(np.zeros((64, 64, 3), dtype=np.uint8), 0.0)
        return crop

    def _prefetch(self) -> None:
        try:
            self._prefetched = self._load_crop()
        except BaseException as exc:  # re-raised where the model is first needed
            self._prefetch_error = exc

    @property
    def crop(self) -> ImageDetector:
        if self._crop is None:
            if self._loader is not None:
                self._loader.join()
                self._loader = None
                if self._prefetch_error is not None:
                    raise self._prefetch_error
                self._crop = self._prefetched
            else:  # loaded on first need: a scene that never misses never pays
                self._crop = self._load_crop()
        assert self._crop is not None
        return self._crop

    def detect(
        self, frames: Sequence[npt.NDArray[np.uint8]], timestamps: Sequence[float]
    ) -> list[list[PersonPose]]:
        found = self.inner.detect(frames, timestamps)
        return [
            self.refine(frame, float(t), people)
            for frame, t, people in zip(frames, timestamps, found, strict=True)
        ]

    def refine(
        self, frame: npt.NDArray[np.uint8], t: float, people: list[PersonPose]
    ) -> list[PersonPose]:
        """`people` plus whoever a higher-resolution search finds that they miss."""
        self.stats.frames += 1
        known = [(p.keypoints, b) for p in people if (b := _box_of(p)) is not None]
        # A memory seen on fewer than _CONFIRMED frames gets one search: once a search
        # for it has found nothing, it is forgotten. The landmarker's partial and
        # passing skeletons (an athlete in mid-air gives a new one every frame) would
        # otherwise each be searched for lost_s, frame after frame (Sports2D demo: 28
        # memories, 56 crops on one frame of the flip).
        self._seen = [
            s
            for s in self._seen
            if t - s.t <= self.lost_s and (s.hits >= _CONFIRMED or s.tried < s.t)
        ]
        matched = _match(self._seen, known)
        lost = [
            s for i, s in enumerate(self._seen) if i not in matched and t - s.tried >= self.retry_s
        ]
        self._calls, self._cap_hit = 0, False
        # Whom a lost person could be next to: the frame's skeletons and the others
        # remembered (found or not on this frame).
        boxes = [b for _, b in known] + [s.box for s in self._seen]
        searching = [s for s in lost if not self._resting(s, t, boxes)]
        self.stats.rested += len(lost) - len(searching)
        lost = searching
        resuming = self._next_tile > 0
        since = t - self._last_tiling
        tile_due = not people and (resuming or since >= self.tile_every_s)
        # The first scan is on the first frame: who is in the scene from the start (a
        # person found half a second later is a newcomer to identity, and one who then
        # stands beside someone for less than a second looks like their second skeleton).
        since_scan = t - self._last_tiling
        scan_due = bool(people) and self.scan_every_s is not None
        scan_due = scan_due and (resuming or since_scan >= float(self.scan_every_s or 0))
        out = list(people)
        if lost or tile_due or scan_due:
            self.crop  # noqa: B018 - load the model before the clock starts: not search time
            start = time.perf_counter()
            deadline = start + self.budget_s
            self.stats.triggered += 1
            added = self._search(frame, t, lost, out, known, deadline)
            if (not out and tile_due) or scan_due:
                added += self._search_tiles(frame, t, out, known, deadline)
                if self._next_tile == 0 and not self._cap_hit:  # not deferred by the cap
                    self._last_tiling = t
            if added:
                # A skeleton the detector blended from two people the search has now
                # found one by one is neither of them.
                blended = _blends(out)
                if blended:
                    self.stats.blends_dropped += len(blended)
                    out = [p for k, p in enumerate(out) if k not in blended]
            self.stats.found += added
            self.stats.search_s += time.perf_counter() - start
            self.stats.max_calls = max(self.stats.max_calls, self._calls)
        self._remember(out, t)
        return out

    @staticmethod
    def _duplicate(
        kp: np.ndarray, box: np.ndarray, known: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[int, float] | None:
        """The known skeleton a find duplicates (its index, and their joint distance),
        None if it is someone new: the same joints, or a box mostly inside (or mostly
        covering) a known one with joints not clearly apart (a partial second skeleton
        of one person). Someone half hidden behind another person may have a box mostly
        inside theirs, but their joints lie apart. The nearest such skeleton."""
        best: tuple[int, float] | None = None
        for idx, (k, b) in enumerate(known):
            d = _distance(kp, box, k, b)
            if best is not None and d >= best[1]:
                continue
            if d < _SAME_PERSON:
                best = (idx, d)
                continue
            if d >= 2 * _SAME_PERSON:
                continue
            iw = max(min(box[2], b[2]) - max(box[0], b[0]), 0.0)
            ih = max(min(box[3], b[3]) - max(box[1], b[1]), 0.0)
            smaller = min((box[2] - box[0]) * (box[3] - box[1]), (b[2] - b[0]) * (b[3] - b[1]))
            if smaller > 0 and iw * ih / smaller > 0.8:
                best = (idx, d)
        return best

    def _closest(self, kp: np.ndarray, box: np.ndarray) -> tuple[_Seen | None, float]:
        """The remembered person a skeleton continues most closely, and how closely (the
        joint distance of `_distance`); (None, inf) when nobody is remembered."""
        best: tuple[_Seen | None, float] = (None, np.inf)
        for s in self._seen:
            d = _distance(kp, box, s.keypoints, s.box)
            if d < best[1]:
                best = (s, d)
        return best

    def _settle(
        self, kp: np.ndarray, box: np.ndarray, known: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> int | None:
        """What to do with a find: -1 to add it, None to drop it, k to put it in place of
        the frame's skeleton k.

        A find that is no one the frame has is added. One that `_duplicate` says the
        frame already has (skeleton k) is weighed against k on how closely each
        continues someone remembered (joints where theirs were last seen), if the find
        continues anyone:
        - joints apart but a box inside the other's: two people (one behind the other)
          if each clearly continues a different person (twice as closely as the
          other's), added; else a partial second skeleton of one person;
        - a find that continues its person more closely than k continues anyone takes
          k's place (twice as closely for a partial skeleton), unless each clearly
          continues a different person. A video-mode landmarker that loses one of two
          overlapping people drifts onto the other over a few frames, through skeletons
          blended from both (Pose2Sim multi cam03: head and arms on her, hips and legs
          on him, sliding onto her): such a skeleton fits nobody's last pose closely,
          while a still image of a person who stands still fits theirs to a few
          hundredths of a body height. The output then stays with the people as they
          were last seen, not with the drift.
        Otherwise it is dropped."""
        dup = self._duplicate(kp, box, known)
        if dup is None:
            return -1
        mine, own = self._closest(kp, box)
        if mine is None or own >= _SAME_PERSON:
            return None
        # Only a close continuation may replace the frame's skeleton: someone who moved
        # since the last frame is left to the video-mode landmarker, which follows
        # motion better than a still image does.
        steady = own < _STEADY
        k, d = dup
        k_kp, k_box = known[k]
        theirs, fit = self._closest(k_kp, k_box)
        # Each continuing a different remembered person, and clearly.
        two = (
            theirs is not None
            and theirs is not mine
            and fit < _SAME_PERSON
            and 2 * fit < _distance(k_kp, k_box, mine.keypoints, mine.box)
            and 2 * own < _distance(kp, box, theirs.keypoints, theirs.box)
        )
        if two:
            # Two people, however near their joints (one behind the other): added.
            return -1
        # One person twice: the sighting that continues them more closely, if the find
        # continues them closely; a partial second skeleton (a box inside the other's,
        # joints not quite together) must fit twice as closely.
        if not steady:
            return None
        return k if own < (fit if d < _SAME_PERSON else 0.5 * fit) else None

    @staticmethod
    def _found(
        kp: np.ndarray | None, box: np.ndarray, known: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> bool:
        return any(_same_person(kp, box, k, b) for k, b in known)

    def _remember(self, people: list[PersonPose], t: float) -> None:
        """One memory per person: each skeleton renews the memory it is (one to one);
        a skeleton that is no one remembered starts a memory of its own."""
        boxed = [(p, box) for p in people if (box := _box_of(p)) is not None]
        people = [p for p, _ in boxed]
        known = [(np.asarray(p.keypoints, dtype=np.float64), box) for p, box in boxed]
        matched = {j: i for i, j in _match(self._seen, known).items()}
        for j, (kp, box) in enumerate(known):
            tight = id(people[j].keypoints) in self._tight_finds
            searched = id(people[j].keypoints) in self._searched
            if j in matched:
                prev = self._seen[matched[j]]
                still = 0
                if (
                    searched
                    and prev.searched
                    and prev.keypoints is not None
                    and _distance(kp, box, prev.keypoints, prev.box) < _STEADY
                ):
                    still = prev.still + 1
                self._seen[matched[j]] = _Seen(box, t, kp, tight, searched, still, prev.hits + 1)
            else:
                self._seen.append(_Seen(box, t, kp, tight, searched))
        self._tight_finds.clear()
        self._searched.clear()

    def _resting(self, s: _Seen, t: float, boxes: Sequence[np.ndarray]) -> bool:
        """Whether a lost person need not be searched for on this frame: one only the
        search finds (the video-mode landmarker never picked them up: an observer at the
        back wall), found at the same place `_STILL_FINDS` times running, seen less
        than `rest_s` ago, and with nobody the frame has or remembers within one of
        their heights (`boxes`, which may hold their own).
        Such a person is looked at again every `rest_s`, not on every frame. Someone
        next to another person is searched on every frame: the skeletons next to them
        can drift onto them (see `_settle`), and they are likelier to be a performer."""
        if not self.rest_s or not s.searched or s.still < _STILL_FINDS:
            return False
        if t - s.t >= self.rest_s:
            return False
        # Nobody within one of their own heights of their box.
        m = s.box[3] - s.box[1]
        around = s.box + np.array([-m, -m, m, m])
        return all(_meet(around, b) is None for b in boxes if b is not s.box)

    def _run(
        self,
        frame: npt.NDArray[np.uint8],
        t: float,
        x0: int,
        y0: int,
        x1: int,
        y1: int,
        out: list[PersonPose],
        known: list[tuple[np.ndarray, np.ndarray]],
        min_size: float = 0.0,
    ) -> int:
        """Detect in frame[y0:y1, x0:x1] enlarged; add what is new to out/known.

        A find smaller than `min_find` of the crop (or than `min_size` px), or with a
        person score under `min_find_score`, is not a person: a landmarker given an
        enlarged patch returns partial and tiny skeletons (on the Sports2D clip, scores
        0.07-0.68 on limbs and background), and each one remembered would be searched
        for again on the next frame."""
        crop = frame[y0:y1, x0:x1]
        h, w = crop.shape[:2]
        if h < 8 or w < 8:
            return 0
        self._calls += 1
        scale = max(self.crop_size / max(h, w), 1.0)
        if scale < self.min_upscale and (w, h) != frame.shape[1::-1]:
            scale = self.min_upscale
        big = np.asarray(
            cv2.resize(crop, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC),
            dtype=np.uint8,
        )
        added = 0
        for p in self.crop.detect_one(big, t):
            kp = p.keypoints.copy()
            kp[:, 0] = kp[:, 0] / scale + x0
            kp[:, 1] = kp[:, 1] / scale + y0
            box = None
            if p.box is not None:
                bx = np.asarray(p.box, dtype=np.float64) / scale + (x0, y0, x0, y0)
                box = (float(bx[0]), float(bx[1]), float(bx[2]), float(bx[3]))
            mapped = dataclasses.replace(p, keypoints=kp, box=box, track_id=None)
            mb = _box_of(mapped)
            if mb is None:
                continue
            if p.score < self.min_find_score:
                continue
            size = max(mb[2] - mb[0], mb[3] - mb[1])
            if size < max(self.min_find * max(h, w), min_size):
                continue
            where = self._settle(kp, mb, known)
            if where is None:
                continue
            if where >= 0:
                # In place of the frame's skeleton it is a better sighting of. Not someone
                # new: the search for whoever this crop is around goes on.
                old_kp = known[where][0]
                at = next(i for i, q in enumerate(out) if q.keypoints is old_kp)
                out[at] = mapped
                known[where] = (kp, mb)
                self._searched.add(id(kp))
                self.stats.replaced += 1
                continue
            out.append(mapped)
            known.append((kp, mb))
            self._searched.add(id(kp))
            added += 1
        return added

    def _search(
        self,
        frame: npt.NDArray[np.uint8],
        t: float,
        lost: list[_Seen],
        out: list[PersonPose],
        known: list[tuple[np.ndarray, np.ndarray]],
        deadline: float,
    ) -> int:
        fh, fw = frame.shape[:2]
        added = 0
        # The most recently seen first; under max_searches the longest unseen first, so
        # that each lost person gets a turn (the one just found would take every turn).
        order = sorted(lost, key=lambda s: s.t if self.max_searches else -s.t)
        for s in order:
            if time.perf_counter() >= deadline:
                self.stats.over_budget += 1
                break
            if self._capped():
                break
            # Found meanwhile by an earlier crop? (Not: near one of the frame's own
            # skeletons: those were matched one to one to the memories already.)
            finds = [(kp, b) for kp, b in known if id(kp) in self._searched]
            if self._found(s.keypoints, s.box, finds):
                continue
            cx, cy = (s.box[0] + s.box[2]) / 2, (s.box[1] + s.box[3]) / 2
            bw, bh = max(s.box[2] - s.box[0], 16.0), max(s.box[3] - s.box[1], 16.0)
            # A square around the box first (room for someone who moved or lay down);
            # if that finds no one new, the box itself with a little margin: a person
            # half behind someone else is the crop's main subject only in a tight crop.
            half = self.crop_margin * max(bw, bh) / 2
            crops = [(half, half), (self.tight_margin * bw / 2, self.tight_margin * bh / 2)]
            if s.tight:
                crops.reverse()
            found = 0
            for k, (hw, hh) in enumerate(crops):
                if k and time.perf_counter() >= deadline:
                    break
                if k and self._capped():
                    s.tight = not s.tight  # the crop not tried goes first next time
                    break
                x0, y0 = max(int(cx - hw), 0), max(int(cy - hh), 0)
                x1, y1 = min(int(cx + hw), fw), min(int(cy + hh), fh)
                self.stats.crops += 1
                found = self._run(frame, t, x0, y0, x1, y1, out, known, 0.25 * max(bw, bh))
                added += found
                if found:
                    if (hw, hh) != (half, half):
                        self._tight_finds.update(id(p.keypoints) for p in out[-found:])
                    break
            if not found:
                s.tried = t
        return added

    def _capped(self) -> bool:
        """Whether this frame's landmarker calls reached max_searches (counted once)."""
        if self.max_searches is None or self._calls < self.max_searches:
            return False
        if not self._cap_hit:
            self._cap_hit = True
            self.stats.capped += 1
        return True

    def _search_tiles(
        self,
        frame: npt.NDArray[np.uint8],
        t: float,
        out: list[PersonPose],
        known: list[tuple[np.ndarray, np.ndarray]],
        deadline: float,
    ) -> int:
        fh, fw = frame.shape[:2]
        n = self.tiles
        tw = fw / (n - (n - 1) * self.tile_overlap)
        th = fh / (n - (n - 1) * self.tile_overlap)
        added = 0
        first = True
        while self._next_tile < n * n:
            # The first tile always runs, so a short budget still makes progress.
            if not first and time.perf_counter() >= deadline:
                self.stats.over_budget += 1
                return added
            if self._capped():
                return added  # resumes at this tile on the next frame
            first = False
            i, j = divmod(self._next_tile, n)
            self._next_tile += 1
            x0 = int(j * tw * (1 - self.tile_overlap))
            y0 = int(i * th * (1 - self.tile_overlap))
            self.stats.tiles += 1
            added += self._run(
                frame, t, x0, y0, min(int(x0 + tw), fw), min(int(y0 + th), fh), out, known
            )
        self._next_tile = 0
        return added

    def close(self) -> None:
        self.inner.close()
        if self._loader is not None:
            self._loader.join()
            self._loader = None
            self._crop = self._prefetched
        if self._crop is not None:
            self._crop.close()
            self._crop = None
