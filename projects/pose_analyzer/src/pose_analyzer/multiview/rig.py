"""Per-view 2D detections in, fused 3D people out: one instant at a time (`RigFuser`).

The fuser is causal: each call gets the views' detections for one instant
(with their capture timestamps), leaves out every view further than half a
frame from the instant, associates the rest across views (with the track
state of the previous instants), triangulates each person and measures the
3D angles. The offline CLI and a live service both drive the same object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pose_analyzer.biomechanics.angles import ANGLE_NAMES
from pose_analyzer.keypoints import JOINTS, NUM_JOINTS, FramePoses
from pose_analyzer.multiview.angles3d import compute_angles_3d
from pose_analyzer.multiview.association import DEFAULT_MAX_DISTANCE_M, Associator
from pose_analyzer.multiview.calibration import CameraRig
from pose_analyzer.multiview.sync import half_frame
from pose_analyzer.multiview.triangulation import (
    DEFAULT_MAX_ERROR_PX,
    DEFAULT_MIN_CONFIDENCE,
    triangulate,
)

MIN_JOINTS_NEW_TRACK = 8  # a new 3D person needs this many triangulated joints


def _num(x: float, digits: int = 4) -> float | None:
    return round(float(x), digits) if np.isfinite(x) else None


@dataclass
class FusedPerson:
    """One person at one instant, fused from the views that saw them."""

    track_id: int
    points: np.ndarray  # (NUM_JOINTS, 3) metres, NaN where not triangulated
    error_px: np.ndarray  # (NUM_JOINTS,) mean reprojection error
    views_per_joint: np.ndarray  # (NUM_JOINTS,) number of views used
    view_error_px: np.ndarray  # (V, NUM_JOINTS) per view, NaN where that view was not used
    views: list[str]  # views whose detection was assigned to this person
    detections: dict[str, int]  # view -> index of the detection in that view's list
    angles: np.ndarray  # (NUM_ANGLES,) degrees, NaN when unmeasured

    @property
    def mean_error_px(self) -> float:
        e = self.error_px[np.isfinite(self.error_px)]
        return float(e.mean()) if e.size else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.track_id,
            "joints": {
                n: [round(float(c), 4) for c in p]
                for n, p in zip(JOINTS, self.points, strict=True)
                if np.isfinite(p).all()
            },
            "angles": {n: _num(v, 2) for n, v in zip(ANGLE_NAMES, self.angles, strict=True)},
            "views": self.views,
            "reprojection_error_px": _num(self.mean_error_px, 2),
        }


@dataclass
class FusedInstant:
    index: int
    t: float
    people: list[FusedPerson] = field(default_factory=list)
    views_used: list[str] = field(default_factory=list)  # views that delivered in time
    views_missing: list[str] = field(default_factory=list)  # late, dropped or absent

    def to_dict(self) -> dict[str, Any]:
        return {
            "instant": self.index,
            "t": round(self.t, 6),
            "views_used": self.views_used,
            "views_missing": self.views_missing,
            "people": [p.to_dict() for p in self.people],
        }


class RigFuser:
    """Causal multi-view fusion: `fuse(t, {view: frame})` once per instant."""

    def __init__(
        self,
        rig: CameraRig,
        fps: float,
        *,
        tolerance_s: float | None = None,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        max_error_px: float = DEFAULT_MAX_ERROR_PX,
        max_distance_m: float = DEFAULT_MAX_DISTANCE_M,
        forget_after_s: float = 1.0,
        same_person_m: float = 0.3,
    ) -> None:
        if len(rig) < 2:
            raise ValueError(f"a rig needs at least two calibrated cameras, got {len(rig)}")
        self.rig = rig
        self.fps = fps
        self.tolerance_s = half_frame(fps) if tolerance_s is None else tolerance_s
        self.min_confidence = min_confidence
        self.max_error_px = max_error_px
        self.same_person_m = same_person_m
        self.associator = Associator(
            rig,
            max_distance_m=max_distance_m,
            min_confidence=min_confidence,
            forget_after_s=forget_after_s,
        )
        self._index = {name: v for v, name in enumerate(rig.names)}
        self.instants = 0

    def fuse(self, t: float, views: Mapping[str, FramePoses]) -> FusedInstant:
        """Fuse the views captured within the tolerance of `t`; the rest are left out."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._fuse(t, views)

    def _fuse(self, t: float, views: Mapping[str, FramePoses]) -> FusedInstant:
        unknown = set(views) - set(self._index)
        if unknown:
            raise ValueError(f"views {sorted(unknown)} are not cameras of the rig")
        V = len(self.rig)
        result = FusedInstant(index=self.instants, t=t)
        self.instants += 1
        kps: list[np.ndarray] = [np.zeros((0, NUM_JOINTS, 3), np.float32) for _ in range(V)]
        for name in self.rig.names:
            frame = views.get(name)
            if frame is None or abs(frame.t - t) > self.tolerance_s + 1e-9:
                result.views_missing.append(name)
                continue
            result.views_used.append(name)
            if frame.people:
                kps[self._index[name]] = np.stack([p.keypoints for p in frame.people])
        # Undistorted once: association and triangulation both work on these.
        norms = [
            cam.undistort(kp[..., :2]) if kp.shape[0] else np.zeros((0, NUM_JOINTS, 2))
            for cam, kp in zip(self.rig.cameras, kps, strict=True)
        ]
        groups = self.associator.associate(t, kps, norms)
        if not groups:
            return result
        G = len(groups)
        px = np.full((V, G, NUM_JOINTS, 2), np.nan)
        norm = np.full((V, G, NUM_JOINTS, 2), np.nan)
        conf = np.zeros((V, G, NUM_JOINTS))
        for g, group in enumerate(groups):
            for v, i in group.detections.items():
                px[v, g] = kps[v][i, :, :2]
                norm[v, g] = norms[v][i]
                conf[v, g] = kps[v][i, :, 2]
        tri = triangulate(
            self.rig,
            px,
            conf,
            min_confidence=self.min_confidence,
            max_error_px=self.max_error_px,
            normalized=norm,
        )
        angles = compute_angles_3d(tri.points, self.rig.up)
        taken = {g.track_id for g in groups if g.track_id is not None}
        for g, group in enumerate(groups):
            valid = int(np.isfinite(tri.points[g]).all(axis=-1).sum())
            # Views that cannot agree on a skeleton (two views paired by chance) are
            # no person, whether they matched a track or not.
            if valid == 0 or not self._plausible(tri.error_px[g]):
                continue
            if group.track_id is None:
                if valid < MIN_JOINTS_NEW_TRACK:
                    continue
                # Two views that agree by chance can re-find a known person the
                # tracker lost this instant: that is the track, not a new one.
                near = self.associator.nearest(tri.points[g], self.same_person_m)
                if near is not None:
                    if near in taken:
                        continue
                    group.track_id = near
                    taken.add(near)
            tid = self.associator.update(t, group.track_id, tri.points[g])
            names = [self.rig.names[v] for v in sorted(group.detections)]
            result.people.append(
                FusedPerson(
                    track_id=tid,
                    points=tri.points[g],
                    error_px=tri.error_px[g],
                    views_per_joint=tri.views_used[g],
                    view_error_px=tri.view_error_px[:, g],
                    views=names,
                    detections={self.rig.names[v]: i for v, i in group.detections.items()},
                    angles=angles[g],
                )
            )
        result.people.sort(key=lambda p: p.track_id)
        return result

    def _plausible(self, error_px: np.ndarray) -> bool:
        e = error_px[np.isfinite(error_px)]
        return bool(e.size) and float(np.median(e)) <= self.max_error_px
