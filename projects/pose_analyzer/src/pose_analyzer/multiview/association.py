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

While everybody is tracked, most instants need no clustering: when every detection
lies within the threshold of exactly one track, no view gives one track two
detections, and the detections of each track agree pairwise (ray distance within the
threshold), that one-to-one answer is taken as it is (`Associator.by_tracks`). Any
doubt (an untracked detection, two candidate tracks, a disagreeing pair) falls back
to the clustering, so the shortcut only skips work whose outcome is not in question.
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


def cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a x b over the last axis (np.cross costs several times more on small arrays)."""
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a . b over the last axis (einsum: half the time of (a * b).sum(-1) here)."""
    return np.einsum("...k,...k->...", a, b)


_PAIRS: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}


def view_pairs(views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (a < b) of detections from different views; the same few layouts
    recur every instant, so they are kept (bounded)."""
    key = views.astype(np.int64).tobytes()
    pairs = _PAIRS.get(key)
    if pairs is None:
        ia, ib = np.triu_indices(views.shape[0], 1)
        keep = views[ia] != views[ib]
        pairs = (ia[keep], ib[keep])
        if len(_PAIRS) > 256:
            _PAIRS.clear()
        _PAIRS[key] = pairs
    return pairs


def masked_median(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Median over the last axis of the valid entries; NaN where none (np.nanmedian is
    ten times slower on these small arrays: it goes through masked arrays)."""
    x = np.where(valid, values, np.inf)
    x.sort(axis=-1)
    count = valid.sum(axis=-1)
    lo = np.maximum((count - 1) // 2, 0)[..., None]
    hi = np.maximum(count // 2, 0)[..., None]
    mid = (np.take_along_axis(x, lo, -1) + np.take_along_axis(x, hi, -1))[..., 0] / 2
    return np.where(count > 0, mid, np.nan)


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
    rig: CameraRig,
    keypoints: list[np.ndarray],
    min_confidence: float,
    normalized: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flattened detections: view of each, centres (D,3), dirs (D,J,3), valid (D,J), normalised."""
    views, centres, dirs, valid, norms = [], [], [], [], []
    for v, (cam, kp) in enumerate(zip(rig.cameras, keypoints, strict=True)):
        if kp.shape[0] == 0:
            continue
        n = cam.undistort(kp[..., :2]) if normalized is None else normalized[v]
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


def ray_costs(
    centres: np.ndarray, dirs: np.ndarray, valid: np.ndarray, views: np.ndarray | None = None
) -> np.ndarray:
    """(D, D) median closest-approach distance of shared joints' rays; NaN when too few.

    Only pairs from different views (`views`, when given) are computed, once each.
    """
    D = centres.shape[0]
    out = np.full((D, D), np.nan)
    if views is not None:
        ia, ib = view_pairs(views)
    else:
        ia, ib = np.triu_indices(D, 1)
    if ia.size == 0:
        return out
    med = pair_costs(centres, dirs, valid, ia, ib)
    out[ia, ib] = med
    out[ib, ia] = med
    return out


def pair_costs(
    centres: np.ndarray, dirs: np.ndarray, valid: np.ndarray, ia: np.ndarray, ib: np.ndarray
) -> np.ndarray:
    """(P,) median closest-approach distance of detections ia[k] and ib[k]'s shared
    joints' rays; NaN when they share too few joints."""
    d1, d2 = dirs[ia], dirs[ib]  # (P, J, 3)
    w0 = (centres[ia] - centres[ib])[:, None, :]
    b = dot(d1, d2)
    d = dot(d1, w0)
    e = dot(d2, w0)
    den = 1.0 - b * b
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (b * e - d) / den
        u = (e - b * d) / den
        diff = w0 + s[..., None] * d1 - u[..., None] * d2
        gap = np.sqrt(dot(diff, diff))
    both = valid[ia] & valid[ib] & (den > 1e-9)
    # A meeting point behind either camera is no meeting at all.
    gap = np.where((s > 0) & (u > 0), gap, np.inf)
    return np.where(both.sum(axis=-1) >= MIN_SHARED_JOINTS, masked_median(gap, both), np.nan)


def track_costs(
    tracks: list[Track], t: float, centres: np.ndarray, dirs: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """(T, D) median distance of each track's predicted joints to each detection's rays."""
    if not tracks or centres.shape[0] == 0:
        return np.full((len(tracks), centres.shape[0]), np.nan)
    X = np.stack([tr.predict(t) for tr in tracks])[:, None]  # (T, 1, J, 3)
    rel = X - centres[None, :, None, :]
    c = cross(rel, dirs[None])
    dist = np.sqrt(dot(c, c))  # (T, D, J)
    ok = valid[None] & np.isfinite(dist)
    out = masked_median(dist, ok)
    return np.where(ok.sum(axis=-1) >= MIN_SHARED_JOINTS, out, np.nan)


def cluster(cost: np.ndarray, group: np.ndarray, max_cost: float) -> list[list[int]]:
    """Average-linkage clustering of nodes; a cluster holds at most one node per group.

    `cost` is symmetric (n, n): NaN for "no evidence", inf for "impossible".
    """
    n = cost.shape[0]
    clusters: list[list[int]] = [[i] for i in range(n)]
    if n < 2:
        return clusters
    _, gidx = np.unique(group, return_inverse=True)
    member = np.zeros((n, int(gidx.max()) + 1), dtype=np.int64)
    member[np.arange(n), gidx] = 1
    total = np.where(np.isfinite(cost), cost, 0.0)
    count = np.isfinite(cost).astype(np.float64)
    blocked = np.isinf(cost)
    alive = np.ones(n, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _merge(clusters, member, total, count, blocked, alive, total / count, max_cost)


def _merge(
    clusters: list[list[int]],
    member: np.ndarray,
    total: np.ndarray,
    count: np.ndarray,
    blocked: np.ndarray,
    alive: np.ndarray,
    link: np.ndarray,
    max_cost: float,
) -> list[list[int]]:
    n = link.shape[0]
    conflict = (member @ member.T) > 0
    link[(count == 0) | blocked | conflict] = np.inf
    while True:
        k = int(np.argmin(link))
        i, j = divmod(k, n)
        if not link[i, j] <= max_cost:
            break
        clusters[i] += clusters[j]
        alive[j] = False
        member[i] += member[j]
        total[i] += total[j]
        count[i] += count[j]
        blocked[i] |= blocked[j]
        row = total[i] / count[i]
        bad = (count[i] == 0) | blocked[i] | ((member @ member[i]) > 0) | ~alive
        row[bad] = np.inf
        total[:, i], count[:, i], blocked[:, i] = total[i], count[i], blocked[i]
        link[i], link[:, i] = row, row
        link[j], link[:, j] = np.inf, np.inf
    return [sorted(clusters[i]) for i in np.flatnonzero(alive)]


@dataclass
class Associator:
    """Per-instant association with stable 3D track ids (state: the live tracks)."""

    rig: CameraRig
    max_distance_m: float = DEFAULT_MAX_DISTANCE_M
    min_confidence: float = 0.3
    forget_after_s: float = 1.0
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1

    def associate(
        self,
        t: float,
        keypoints: list[np.ndarray],
        normalized: list[np.ndarray] | None = None,
    ) -> list[Group]:
        """Groups of detections (per view arrays (P_v, J, 3)) that are one person each.

        `normalized`: the undistorted points of each view, when the caller has them.
        """
        self.tracks = [tr for tr in self.tracks if t - tr.t <= self.forget_after_s]
        views, centres, dirs, valid, _ = ray_bundles(
            self.rig, keypoints, self.min_confidence, normalized
        )
        D, T = len(views), len(self.tracks)
        tc = track_costs(self.tracks, t, centres, dirs, valid)
        local = np.concatenate(
            [np.arange(np.sum(views == v)) for v in range(len(self.rig)) if np.any(views == v)]
            or [np.zeros(0, int)]
        )
        quick = self.by_tracks(views, local, centres, dirs, valid, tc / TRACK_SLACK)
        if quick is not None:
            return quick
        cost = np.full((D + T, D + T), np.nan)
        cost[:D, :D] = ray_costs(centres, dirs, valid, views)
        cost[D:, :D] = tc / TRACK_SLACK
        cost[:D, D:] = tc.T / TRACK_SLACK
        cost[D:, D:] = np.inf
        groups = np.concatenate([views, len(self.rig) + np.arange(T)])
        out = []
        for members in cluster(cost, groups, self.max_distance_m):
            dets = {int(views[m]): int(local[m]) for m in members if m < D}
            tids = [self.tracks[m - D].id for m in members if m >= D]
            if len(dets) >= 2 or (tids and dets):
                out.append(Group(dets, tids[0] if tids else None))
        return out

    def by_tracks(
        self,
        views: np.ndarray,
        local: np.ndarray,
        centres: np.ndarray,
        dirs: np.ndarray,
        valid: np.ndarray,
        track_cost: np.ndarray,
    ) -> list[Group] | None:
        """The groups when the tracks alone settle the instant without doubt, else None.

        `track_cost` (T, D) is on the clustering's scale (already divided by the slack).
        """
        T, D = track_cost.shape
        if T == 0 or D < 2:
            return None
        near = np.where(np.isfinite(track_cost), track_cost, np.inf) <= self.max_distance_m
        if not near.sum(axis=0).astype(bool).all() or (near.sum(axis=0) > 1).any():
            return None  # a detection with no track, or with two candidates
        owner = np.argmax(near, axis=0)  # (D,) the one track within reach
        if np.unique(owner * len(self.rig) + views).size < D:
            return None  # one view gives a track two detections
        ia_l, ib_l = [], []
        members = [np.flatnonzero(owner == k) for k in range(T)]
        for m in members:
            if m.size >= 2:
                a, b = np.triu_indices(m.size, 1)
                ia_l.append(m[a])
                ib_l.append(m[b])
        if ia_l:
            gaps = pair_costs(centres, dirs, valid, np.concatenate(ia_l), np.concatenate(ib_l))
            if not (gaps <= self.max_distance_m).all():
                return None  # a pair that does not agree (or shares too few joints)
        return [
            Group({int(views[i]): int(local[i]) for i in m}, self.tracks[k].id)
            for k, m in enumerate(members)
            if m.size
        ]

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
