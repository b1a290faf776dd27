"""Which 2D skeleton in each view is the same person, and who that person is over time.

Every detection becomes a bundle of rays (one per confident joint) from its
camera centre. Two detections in different views are the same person when
their rays nearly meet: the cost is the median over shared joints of the
distance between the two rays' closest points (metres, in front of both
cameras, so epipolar-consistent but also depth-consistent). A known 3D
track is a node too: its cost to a detection is the median distance of the
track's joints (predicted at constant velocity) to the detection's rays.
One global assignment per instant is then an average-linkage clustering of
all nodes at once, where a cluster takes at most one node per view and one
track, and merges only below a distance threshold. Clusters with a track keep
its id; clusters seen by two or more views without one start a new track.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pose_analyzer.multiview.calibration import CameraRig

DEFAULT_MAX_DISTANCE_M = 0.1  # median ray distance for "same person"
# A track's last position is a noisier witness than a second view (it may come from
# two views only, and the person moved since): it may lie this much further away.
TRACK_SLACK = 2.0
MIN_SHARED_JOINTS = 3


@dataclass
class Track:
    id: int
    points: np.ndarray  # (J, 3) last fused joints (NaN unknown)
    t: float
    hits: int = 1

    def predict(self, t: float) -> np.ndarray:
        """Where the joints are expected at t: where they last were. (A constant-velocity
        prediction from two-view triangulations amplified their noise and lost people.)"""
        return self.points


@dataclass
class Group:
    """One person at one instant: the detection index chosen in each view, and its track."""

    detections: dict[int, int]  # view index -> detection index in that view
    track_id: int | None = None


def ray_bundles(
    rig: CameraRig, keypoints: list[np.ndarray], min_confidence: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flattened detections: view of each, centres (D,3), dirs (D,J,3), valid (D,J), normalised."""
    views, centres, dirs, valid, norms = [], [], [], [], []
    for v, (cam, kp) in enumerate(zip(rig.cameras, keypoints, strict=True)):
        if kp.shape[0] == 0:
            continue
        n = cam.undistort(kp[..., :2])
        d = np.concatenate([n, np.ones((*n.shape[:-1], 1))], axis=-1) @ cam.R
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        ok = (kp[..., 2] >= min_confidence) & np.isfinite(d).all(axis=-1)
        views += [v] * kp.shape[0]
        centres += [cam.center] * kp.shape[0]
        dirs.append(d)
        valid.append(ok)
        norms.append(n)
    if not views:
        J = keypoints[0].shape[1] if keypoints else 0
        return (
            np.zeros(0, int),
            np.zeros((0, 3)),
            np.zeros((0, J, 3)),
            np.zeros((0, J), bool),
            np.zeros((0, J, 2)),
        )
    return (
        np.asarray(views),
        np.asarray(centres),
        np.concatenate(dirs),
        np.concatenate(valid),
        np.concatenate(norms),
    )


def ray_costs(centres: np.ndarray, dirs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(D, D) median closest-approach distance of shared joints' rays; NaN when too few."""
    c1, c2 = centres[:, None, None, :], centres[None, :, None, :]
    d1, d2 = dirs[:, None], dirs[None, :]
    w0 = c1 - c2
    b = np.einsum("...k,...k->...", d1, d2)
    d = np.einsum("...k,...k->...", d1, w0)
    e = np.einsum("...k,...k->...", d2, w0)
    den = 1.0 - b * b
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (b * e - d) / den
        u = (e - b * d) / den
        gap = np.linalg.norm(w0 + s[..., None] * d1 - u[..., None] * d2, axis=-1)
    both = valid[:, None] & valid[None, :] & (den > 1e-9)
    # A meeting point behind either camera is no meeting at all.
    gap = np.where((s > 0) & (u > 0), gap, np.inf)
    gap = np.where(both, gap, np.nan)
    enough = both.sum(axis=-1) >= MIN_SHARED_JOINTS
    out = np.full(gap.shape[:2], np.nan)
    if enough.any():
        out[enough] = np.nanmedian(gap[enough], axis=-1)
    return out


def track_costs(
    tracks: list[Track], t: float, centres: np.ndarray, dirs: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """(T, D) median distance of each track's predicted joints to each detection's rays."""
    if not tracks or centres.shape[0] == 0:
        return np.full((len(tracks), centres.shape[0]), np.nan)
    X = np.stack([tr.predict(t) for tr in tracks])[:, None]  # (T, 1, J, 3)
    rel = X - centres[None, :, None, :]
    dist = np.linalg.norm(np.cross(rel, dirs[None]), axis=-1)  # (T, D, J)
    ok = valid[None] & np.isfinite(dist)
    dist = np.where(ok, dist, np.nan)
    enough = ok.sum(axis=-1) >= MIN_SHARED_JOINTS
    out = np.full(dist.shape[:2], np.nan)
    if enough.any():
        out[enough] = np.nanmedian(dist[enough], axis=-1)
    return out


def cluster(cost: np.ndarray, group: np.ndarray, max_cost: float) -> list[list[int]]:
    """Average-linkage clustering of nodes; a cluster holds at most one node per group.

    `cost` is symmetric (n, n): NaN for "no evidence", inf for "impossible".
    """
    n = cost.shape[0]
    clusters: list[list[int]] = [[i] for i in range(n)]
    _, gidx = np.unique(group, return_inverse=True)
    member = np.zeros((n, int(gidx.max()) + 1 if n else 0), dtype=bool)
    member[np.arange(n), gidx] = True
    total = np.where(np.isfinite(cost), cost, 0.0)
    count = np.isfinite(cost).astype(np.int64)
    blocked = np.isinf(cost)
    alive = list(range(n))
    while len(alive) > 1:
        sub = np.ix_(alive, alive)
        with np.errstate(invalid="ignore", divide="ignore"):
            link = total[sub] / count[sub]
        m = member[alive].astype(np.int64)
        conflict = (m @ m.T) > 0
        link = np.where((count[sub] > 0) & ~blocked[sub] & ~conflict, link, np.inf)
        k = int(np.argmin(link))
        a, b = divmod(k, len(alive))
        if not link[a, b] <= max_cost:
            break
        i, j = alive[a], alive[b]
        clusters[i] += clusters[j]
        member[i] |= member[j]
        total[i, :] += total[j, :]
        total[:, i] = total[i, :]
        count[i, :] += count[j, :]
        count[:, i] = count[i, :]
        blocked[i, :] |= blocked[j, :]
        blocked[:, i] = blocked[i, :]
        alive.remove(j)
    return [sorted(clusters[i]) for i in alive]


@dataclass
class Associator:
    """Per-instant association with stable 3D track ids (state: the live tracks)."""

    rig: CameraRig
    max_distance_m: float = DEFAULT_MAX_DISTANCE_M
    min_confidence: float = 0.3
    forget_after_s: float = 1.0
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1

    def associate(self, t: float, keypoints: list[np.ndarray]) -> list[Group]:
        """Groups of detections (per view arrays (P_v, J, 3)) that are one person each."""
        self.tracks = [tr for tr in self.tracks if t - tr.t <= self.forget_after_s]
        views, centres, dirs, valid, _ = ray_bundles(self.rig, keypoints, self.min_confidence)
        D, T = len(views), len(self.tracks)
        cost = np.full((D + T, D + T), np.nan)
        cost[:D, :D] = ray_costs(centres, dirs, valid)
        tc = track_costs(self.tracks, t, centres, dirs, valid)
        cost[D:, :D] = tc / TRACK_SLACK
        cost[:D, D:] = tc.T / TRACK_SLACK
        cost[D:, D:] = np.inf
        groups = np.concatenate([views, len(self.rig) + np.arange(T)])
        local = np.concatenate(
            [np.arange(np.sum(views == v)) for v in range(len(self.rig)) if np.any(views == v)]
            or [np.zeros(0, int)]
        )
        out = []
        for members in cluster(cost, groups, self.max_distance_m):
            dets = {int(views[m]): int(local[m]) for m in members if m < D}
            tids = [self.tracks[m - D].id for m in members if m >= D]
            if len(dets) >= 2 or (tids and dets):
                out.append(Group(dets, tids[0] if tids else None))
        return out

    def nearest(self, points: np.ndarray, within_m: float) -> int | None:
        """The track whose joints lie closest (median) to `points`, if within `within_m`."""
        best, best_d = None, within_m
        for tr in self.tracks:
            d = np.linalg.norm(tr.points - points, axis=-1)
            d = d[np.isfinite(d)]
            if d.size >= MIN_SHARED_JOINTS and float(np.median(d)) < best_d:
                best, best_d = tr.id, float(np.median(d))
        return best

    def update(self, t: float, track_id: int | None, points: np.ndarray) -> int:
        """Record a fused person; returns its (possibly new) track id."""
        if track_id is None:
            track_id = self.next_id
            self.next_id += 1
            self.tracks.append(Track(track_id, points.copy(), t))
            return track_id
        for tr in self.tracks:
            if tr.id == track_id:
                fresh = np.isfinite(points).all(axis=-1)
                tr.points[fresh] = points[fresh]
                tr.t = t
                tr.hits += 1
        return track_id
