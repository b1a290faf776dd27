"""Search again, at higher resolution, where a detector found nobody or lost someone.

BlazePose's person detector works on a 224 px square of the whole frame, so a person
~60 px tall in a 480x270 frame is ~30 px to it and is usually missed. Given the same
pixels enlarged it finds them. `RefiningDetector` wraps any backend and, per frame:

1. if a person seen in the last `lost_s` seconds has no detection now, crops a square
   around their last box (`crop_margin` times its size), enlarges it to `crop_size` px
   and runs the crop detector on it;
2. if after that nobody at all is found, runs it on `tiles` x `tiles` overlapping tiles,
   each enlarged to `crop_size` (no more often than every `tile_every_s` while the frame
   stays empty, so an empty scene does not pay the tiling cost on every frame);

stopping as soon as the frame's `budget_ms` is spent (measured, per frame; a pass over
the tiles that the budget cut short resumes at the next tile on the next frame). What a
search finds is mapped back to frame pixels and dropped if it overlaps a detection the
frame already has. The crop detector is a separate image-mode landmarker: MediaPipe's
video mode keeps tracking state tied to one image size and strictly increasing
timestamps, which crops of varying size and position would break.
"""

from __future__ import annotations

import dataclasses
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


@dataclass
class _Seen:
    box: np.ndarray  # x1, y1, x2, y2
    t: float


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
        crop_size: int = 512,
        tiles: int = 2,
        tile_overlap: float = 0.25,
        tile_every_s: float = 0.5,
        min_upscale: float = 1.5,
        models_dir: Path | None = None,
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
        self.crop_size = crop_size
        self.tiles = tiles
        self.tile_overlap = tile_overlap
        self.tile_every_s = tile_every_s
        self.min_upscale = min_upscale
        self._seen: list[_Seen] = []
        self._last_tiling = -np.inf  # when the last complete pass over the tiles ended
        self._next_tile = 0  # a pass the budget cut short resumes here on the next frame
        self.stats = RefineStats()

    @property
    def crop(self) -> ImageDetector:
        if self._crop is None:  # loaded on first need: a scene that never misses never pays
            self._crop = self._crop_factory()
            # The first inference sets the runtime up (~10x a normal one): do it now, on a
            # blank image, not inside the first frame's budget.
            self._crop.detect_one(np.zeros((64, 64, 3), dtype=np.uint8), 0.0)
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
        boxes = [b for b in (_box_of(p) for p in people) if b is not None]
        self._seen = [s for s in self._seen if t - s.t <= self.lost_s]
        lost = [s for s in self._seen if not _overlaps(s.box, boxes, 0.1)]
        resuming = self._next_tile > 0
        tile_due = not people and (resuming or t - self._last_tiling >= self.tile_every_s)
        out = list(people)
        if lost or tile_due:
            self.crop  # noqa: B018 - load the model before the clock starts: not search time
            start = time.perf_counter()
            deadline = start + self.budget_s
            self.stats.triggered += 1
            added = self._search(frame, t, lost, out, boxes, deadline)
            if not out and tile_due:
                added += self._search_tiles(frame, t, out, boxes, deadline)
                if self._next_tile == 0:
                    self._last_tiling = t
            self.stats.found += added
            self.stats.search_s += time.perf_counter() - start
        self._remember(out, t)
        return out

    def _remember(self, people: list[PersonPose], t: float) -> None:
        for p in people:
            box = _box_of(p)
            if box is None:
                continue
            # One memory per place: a new sighting replaces the ones it overlaps.
            self._seen = [s for s in self._seen if _iou(s.box, box) <= 0.3]
            self._seen.append(_Seen(box, t))

    def _run(
        self,
        frame: npt.NDArray[np.uint8],
        t: float,
        x0: int,
        y0: int,
        x1: int,
        y1: int,
        out: list[PersonPose],
        boxes: list[np.ndarray],
    ) -> int:
        """Detect in frame[y0:y1, x0:x1] enlarged; add what is new to out/boxes."""
        crop = frame[y0:y1, x0:x1]
        h, w = crop.shape[:2]
        if h < 8 or w < 8:
            return 0
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
            if mb is None or _overlaps(mb, boxes, 0.3):
                continue
            out.append(mapped)
            boxes.append(mb)
            added += 1
        return added

    def _search(
        self,
        frame: npt.NDArray[np.uint8],
        t: float,
        lost: list[_Seen],
        out: list[PersonPose],
        boxes: list[np.ndarray],
        deadline: float,
    ) -> int:
        fh, fw = frame.shape[:2]
        added = 0
        for s in sorted(lost, key=lambda s: -s.t):  # the most recently seen first
            if time.perf_counter() >= deadline:
                self.stats.over_budget += 1
                break
            if _overlaps(s.box, boxes, 0.1):
                continue  # found meanwhile by an earlier crop
            cx, cy = (s.box[0] + s.box[2]) / 2, (s.box[1] + s.box[3]) / 2
            half = self.crop_margin * max(s.box[2] - s.box[0], s.box[3] - s.box[1], 16.0) / 2
            x0, y0 = max(int(cx - half), 0), max(int(cy - half), 0)
            x1, y1 = min(int(cx + half), fw), min(int(cy + half), fh)
            self.stats.crops += 1
            added += self._run(frame, t, x0, y0, x1, y1, out, boxes)
        return added

    def _search_tiles(
        self,
        frame: npt.NDArray[np.uint8],
        t: float,
        out: list[PersonPose],
        boxes: list[np.ndarray],
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
            first = False
            i, j = divmod(self._next_tile, n)
            self._next_tile += 1
            x0 = int(j * tw * (1 - self.tile_overlap))
            y0 = int(i * th * (1 - self.tile_overlap))
            self.stats.tiles += 1
            added += self._run(
                frame, t, x0, y0, min(int(x0 + tw), fw), min(int(y0 + th), fh), out, boxes
            )
        self._next_tile = 0
        return added

    def close(self) -> None:
        self.inner.close()
        if self._crop is not None:
            self._crop.close()
            self._crop = None
