"""Stable person ids across frames.

Each frame, live tracks are moved forward with a constant-velocity model and
matched to the new detections by one global (Hungarian) assignment. The cost
of a pair mixes box overlap (1 - IoU) with the mean keypoint distance
normalised by the person's size, so two people whose boxes overlap while they
cross are still told apart by where their joints are heading. A track that
finds no detection lives on, predicted, for `max_age_s`, so a person who is
hidden for a moment or steps out briefly gets the same id back.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from pose_analyzer.keypoints import FloatArray, PersonPose

_INFEASIBLE = 1e6


@dataclass
class TrackerConfig:
    max_age_s: float = 1.0  # how long an unmatched track waits for its person
    min_keypoint_confidence: float = 0.3  # joints below this take no part in matching
    iou_weight: float = 0.5  # cost = iou_weight * (1 - IoU) + (1 - iou_weight) * kp distance
    max_keypoint_distance: float = 1.0  # in person heights; farther pairs never match
    max_cost: float = 0.8  # a pair above this is not matched
    velocity_smoothing: float = 0.5  # weight of the newest velocity estimate (0..1]
    max_prediction_s: float = 0.5  # coasting beyond this does not move the prediction further


@dataclass
class _Track:
    track_id: int
    keypoints: FloatArray  # (J, 3) last observed
    box: np.ndarray  # (4,) last observed x1, y1, x2, y2
    t: float  # time of last observation
    velocity: np.ndarray  # (J, 2) px/s, NaN where unknown
    box_velocity: np.ndarray  # (4,) px/s
    hits: int = 1
    missed: int = 0  # updates since the last match

    def predict(self, t: float, horizon: float) -> tuple[np.ndarray, np.ndarray]:
        dt = min(max(t - self.t, 0.0), horizon)
        xy = self.keypoints[:, :2] + np.nan_to_num(self.velocity) * dt
        return xy, self.box + self.box_velocity * dt

    @property
    def scale(self) -> float:
        return _box_scale(self.box)


def box_from_keypoints(keypoints: FloatArray, min_confidence: float = 0.0) -> np.ndarray | None:
    """Tight box of the joints at or above `min_confidence`; None if there are none."""
    ok = (keypoints[:, 2] >= min_confidence) & np.isfinite(keypoints[:, :2]).all(axis=1)
    ok &= keypoints[:, 2] > 0
    if not ok.any():
        return None
    xy = keypoints[ok, :2]
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)]).astype(np.float64)


def _box_scale(box: np.ndarray) -> float:
    # The person's height (or width, for someone lying down), at least a few pixels.
    return max(float(box[2] - box[0]), float(box[3] - box[1]), 8.0)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N, 4) with every box in b (M, 4)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


class Tracker:
    """Assigns `track_id`s; one tracker per stream."""

    def __init__(self, max_age_s: float = 1.0, **options: float) -> None:
        unknown = set(options) - {f.name for f in dataclasses.fields(TrackerConfig)}
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(TrackerConfig))
            raise TypeError(f"unknown tracker option(s) {sorted(unknown)}; known: {known}")
        self.config = TrackerConfig(max_age_s=max_age_s, **options)
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._last_t = -math.inf

    @property
    def active_ids(self) -> list[int]:
        return [tr.track_id for tr in self._tracks]

    def reset(self) -> None:
        self._tracks.clear()
        self._last_t = -math.inf

    def _cost(self, people: list[PersonPose], boxes: np.ndarray, t: float) -> np.ndarray:
        cfg = self.config
        pred = [tr.predict(t, cfg.max_prediction_s) for tr in self._tracks]
        det_kp = np.stack([p.keypoints for p in people])  # (D, J, 3)
        cost = self._pair_cost(
            np.stack([p[0] for p in pred]), np.stack([p[1] for p in pred]), det_kp, boxes
        )
        coasting = np.array([tr.missed > 0 for tr in self._tracks])
        if coasting.any():
            # Someone who stepped out of view often comes back where they left, not where
            # their last motion pointed: a coasting track may also match at its last place.
            last = self._pair_cost(
                np.stack([tr.keypoints[:, :2] for tr in self._tracks]),
                np.stack([tr.box for tr in self._tracks]),
                det_kp,
                boxes,
            )
            cost = np.where(coasting[:, None], np.minimum(cost, last), cost)
        return cost

    def _pair_cost(
        self, track_xy: np.ndarray, track_box: np.ndarray, det_kp: np.ndarray, boxes: np.ndarray
    ) -> np.ndarray:
        """(tracks, detections) cost for tracks placed at track_xy (T, J, 2) / track_box (T, 4)."""
        cfg = self.config
        tr_ok = np.stack([tr.keypoints[:, 2] >= cfg.min_keypoint_confidence for tr in self._tracks])
        det_ok = det_kp[:, :, 2] >= cfg.min_keypoint_confidence
        both = tr_ok[:, None, :] & det_ok[None, :, :]  # (T, D, J)
        dist = np.linalg.norm(track_xy[:, None, :, :] - det_kp[None, :, :, :2], axis=-1)
        dist = np.where(both, dist, 0.0)
        shared = both.sum(axis=-1)
        scale = np.array([tr.scale for tr in self._tracks])[:, None]
        kp_dist = np.where(shared > 0, dist.sum(axis=-1) / np.maximum(shared, 1) / scale, np.inf)
        iou = iou_matrix(track_box, boxes)
        kp_term = np.minimum(kp_dist, cfg.max_keypoint_distance)
        cost = cfg.iou_weight * (1.0 - iou) + (1.0 - cfg.iou_weight) * kp_term
        # Without shared joints, only box overlap can vouch for a match.
        cost = np.where(shared > 0, cost, 1.0 - iou)
        feasible = (kp_dist <= cfg.max_keypoint_distance) | ((shared == 0) & (iou > 0.3))
        return np.where(feasible & (cost <= cfg.max_cost), cost, _INFEASIBLE)

    def update(self, people: list[PersonPose], t: float) -> list[PersonPose]:
        """The same people, in the same order, with `track_id` set."""
        cfg = self.config
        if t < self._last_t:
            raise ValueError(f"tracker time went backwards: {t} after {self._last_t}")
        self._last_t = t
        self._tracks = [tr for tr in self._tracks if t - tr.t <= cfg.max_age_s]

        boxes_list = []
        for p in people:
            box = (
                np.asarray(p.box, dtype=np.float64)
                if p.box is not None
                else box_from_keypoints(p.keypoints)
            )
            boxes_list.append(box if box is not None else np.full(4, np.nan))
        boxes = np.stack(boxes_list) if boxes_list else np.zeros((0, 4))

        assigned: dict[int, _Track] = {}
        if self._tracks and people:
            cost = self._cost(people, np.nan_to_num(boxes), t)
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols, strict=True):
                if cost[r, c] < _INFEASIBLE:
                    assigned[int(c)] = self._tracks[int(r)]

        matched = {id(tr) for tr in assigned.values()}
        for tr in self._tracks:
            if id(tr) not in matched:
                tr.missed += 1
        out = []
        for i, person in enumerate(people):
            track = assigned.get(i)
            if track is None:
                if not np.isfinite(boxes[i]).all():
                    out.append(dataclasses.replace(person, track_id=None))
                    continue  # nothing to track: no box, no confident joint
                track = _Track(
                    track_id=self._next_id,
                    keypoints=person.keypoints.copy(),
                    box=boxes[i].copy(),
                    t=t,
                    velocity=np.full((person.keypoints.shape[0], 2), np.nan),
                    box_velocity=np.zeros(4),
                )
                self._next_id += 1
                self._tracks.append(track)
            else:
                self._observe(track, person, boxes[i], t)
            out.append(dataclasses.replace(person, track_id=track.track_id))
        return out

    def _observe(self, track: _Track, person: PersonPose, box: np.ndarray, t: float) -> None:
        cfg = self.config
        dt = t - track.t
        kp = person.keypoints
        if dt > 0:
            ok = (kp[:, 2] >= cfg.min_keypoint_confidence) & (
                track.keypoints[:, 2] >= cfg.min_keypoint_confidence
            )
            v_new = (kp[:, :2] - track.keypoints[:, :2]) / dt
            a = cfg.velocity_smoothing
            blended = np.where(
                np.isnan(track.velocity), v_new, a * v_new + (1 - a) * track.velocity
            )
            track.velocity = np.where(ok[:, None], blended, track.velocity)
            if np.isfinite(box).all():
                track.box_velocity = a * (box - track.box) / dt + (1 - a) * track.box_velocity
        track.keypoints = kp.copy()
        if np.isfinite(box).all():
            track.box = box.copy()
        track.t = t
        track.hits += 1
        track.missed = 0
