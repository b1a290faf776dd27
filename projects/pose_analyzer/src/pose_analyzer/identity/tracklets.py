"""Frame-to-frame association: detections -> tracklets (runs of one person, unbroken).

Shared by the live and the offline path; they differ only in what they do with the
tracklets (live: re-acquire lost persons as it goes; offline: stitch afterwards).
Per frame: drop skeletons with too few joints, suppress duplicate skeletons of one
person, match the rest to the tracklets' Kalman predictions by one Hungarian
assignment (each detection tried as-is and mirrored, so a left/right swap is caught
and undone), then reject joints that moved impossibly far or stretched a limb.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from pose_analyzer.identity.config import IdentityConfig
from pose_analyzer.identity.motion import JointKalman
from pose_analyzer.identity.skeleton import (
    LIMB_B,
    body_scale,
    centre,
    confident,
    frame_signatures,
    limb_lengths,
    mirrored,
)
from pose_analyzer.keypoints import PersonPose

_INFEASIBLE = 1e9
_LIMB_HISTORY = 90  # frames of limb lengths a tracklet keeps as its reference
_MIN_LIMB_SAMPLES = 5


@dataclass
class Tracklet:
    """One person seen without a break longer than `max_age_s`."""

    tid: int
    kalman: JointKalman
    scale: float
    t_first: float
    t_last: float
    last: np.ndarray  # (J, 3) last accepted observation
    hits: int = 1
    person: int | None = None
    frames: list[int] = field(default_factory=list)  # positions in the input sequence
    times: list[float] = field(default_factory=list)
    centres: list[np.ndarray] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    signatures: list[np.ndarray] = field(default_factory=list)
    limbs: deque[np.ndarray] = field(default_factory=lambda: deque(maxlen=_LIMB_HISTORY))
    swaps: int = 0  # left/right swaps undone
    rejected_joints: int = 0

    def limb_reference(self) -> np.ndarray:
        """Per limb, the long end of its recent lengths (NaN until enough were seen)."""
        if len(self.limbs) < _MIN_LIMB_SAMPLES:
            return np.full(LIMB_B.shape[0], np.nan)
        hist = np.stack(self.limbs)
        n = np.isfinite(hist).sum(axis=0)
        ref = np.full(hist.shape[1], np.nan)
        cols = n >= _MIN_LIMB_SAMPLES
        if cols.any():
            ref[cols] = np.nanpercentile(hist[:, cols], 90, axis=0)
        return ref

    def velocity(self, window_s: float = 0.5) -> np.ndarray:
        """Centre velocity (px/s) over the last `window_s`, from a line fit; 0 if unknown."""
        return _centre_velocity(self.times, self.centres, window_s, end=True)

    def start_velocity(self, window_s: float = 0.5) -> np.ndarray:
        return _centre_velocity(self.times, self.centres, window_s, end=False)


def _centre_velocity(
    times: list[float], centres: list[np.ndarray], window_s: float, end: bool
) -> np.ndarray:
    if len(times) < 3:
        return np.zeros(2)
    t = np.asarray(times)
    c = np.stack(centres)
    sel = t >= t[-1] - window_s if end else t <= t[0] + window_s
    sel &= np.isfinite(c).all(axis=1)
    if sel.sum() < 3 or np.ptp(t[sel]) <= 0:
        return np.zeros(2)
    tt = t[sel] - t[sel].mean()
    return ((c[sel] - c[sel].mean(axis=0)) * tt[:, None]).sum(axis=0) / (tt**2).sum()


@dataclass
class Observation:
    """A detection that survived cleaning, and the tracklet it now belongs to."""

    person: PersonPose  # cleaned copy
    tracklet: Tracklet
    order: int  # position among the frame's input detections


class TrackletTracker:
    def __init__(self, config: IdentityConfig) -> None:
        self.config = config
        self.active: list[Tracklet] = []
        self.closed: list[Tracklet] = []
        self._next = 1
        self._last_t = -math.inf
        self._frame_dt = math.inf  # typical time between frames, learned
        self.dropped_small = 0
        self.dropped_duplicates = 0
        self.dropped_impossible = 0

    # -- cleaning -------------------------------------------------------------------------

    def _duplicates(
        self, kp: np.ndarray, ok: np.ndarray, scale: np.ndarray, quality: np.ndarray
    ) -> np.ndarray:
        """(D,) bool: a skeleton that is a second detection of another, better one."""
        d = kp.shape[0]
        drop = np.zeros(d, dtype=bool)
        if d < 2:
            return drop
        cfg = self.config
        alts = (kp, mirrored(kp))
        best = np.full((d, d), np.inf)
        for alt in alts:
            alt_ok = confident(alt, cfg.min_keypoint_confidence)
            both = ok[:, None, :] & alt_ok[None, :, :]
            dist = np.linalg.norm(kp[:, None, :, :2] - alt[None, :, :, :2], axis=-1)
            shared = both.sum(axis=-1)
            mean = np.where(both, dist, 0.0).sum(axis=-1) / np.maximum(shared, 1)
            norm = mean / np.minimum(scale[:, None], scale[None, :])
            best = np.minimum(best, np.where(shared >= 3, norm, np.inf))
        np.fill_diagonal(best, np.inf)
        for i in np.argsort(-quality):  # best first keeps; its near copies go
            if drop[i]:
                continue
            drop |= (best[i] < cfg.duplicate_distance) & (np.arange(d) != i) & ~drop[i]
        return drop

    # -- association ----------------------------------------------------------------------

    def _costs(
        self, kp: np.ndarray, ok: np.ndarray, scale: np.ndarray, t: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(T, D) cost as-is and mirrored, in mean sigmas; _INFEASIBLE outside the gate."""
        cfg = self.config
        out: list[np.ndarray] = []
        tr_scale = np.array([tr.scale for tr in self.active])
        pred, var, last = [], [], []
        for tr in self.active:
            p, v = tr.kalman.predict(t - tr.t_last, tr.scale)
            pred.append(p)
            var.append(v)
            last.append(tr.kalman.p)
        pred_a, var_a, last_a = np.stack(pred), np.stack(var), np.stack(last)
        tr_ok = np.isfinite(pred_a).all(axis=-1)  # (T, J)
        coasting = np.array([t - tr.t_last > 1.5 * self._frame_dt for tr in self.active])
        r = (cfg.measurement_noise * tr_scale) ** 2
        for alt, alt_ok in ((kp, ok), (mirrored(kp), mirrored(ok[..., None])[..., 0])):
            both = tr_ok[:, None, :] & alt_ok[None, :, :]
            shared = both.sum(axis=-1)
            best = np.full(shared.shape, np.inf)
            # Someone who stepped out often comes back where they left, not where their
            # last motion pointed: a coasting track may also match at its last place.
            places = [(pred_a, np.ones(len(self.active), dtype=bool)), (last_a, coasting)]
            for place, rows in places:
                if not rows.any():
                    continue
                dist = np.linalg.norm(place[:, None] - alt[None, :, :, :2], axis=-1)
                dist = np.where(both, np.nan_to_num(dist), 0.0)
                z = np.minimum(dist / np.sqrt(var_a[:, None, :] + r[:, None, None]), 10.0)
                sig = z.sum(axis=-1) / np.maximum(shared, 1)
                px = dist.sum(axis=-1) / np.maximum(shared, 1) / tr_scale[:, None]
                feasible = (
                    rows[:, None]
                    & (shared >= 3)
                    & (sig <= cfg.gate_sigmas)
                    & (px <= cfg.max_match_distance)
                )
                best = np.minimum(best, np.where(feasible, sig, np.inf))
            out.append(np.where(np.isfinite(best), best, _INFEASIBLE))
        return out[0], out[1]

    def step(self, people: list[PersonPose], t: float, position: int) -> list[Observation]:
        """Associate one frame's detections; returns the kept ones with their tracklets."""
        cfg = self.config
        if t < self._last_t:
            raise ValueError(f"identity: time went backwards: {t} after {self._last_t}")
        if t > self._last_t:
            self._frame_dt = min(self._frame_dt, t - self._last_t)
        self._last_t = t
        still: list[Tracklet] = []
        for tr in self.active:
            (still if t - tr.t_last <= cfg.max_age_s else self.closed).append(tr)
        self.active = still
        if not people:
            return []

        kp = np.stack([np.asarray(p.keypoints, dtype=np.float64) for p in people])
        ok = confident(kp, cfg.min_keypoint_confidence)
        keep = ok.sum(axis=1) >= cfg.min_joints
        self.dropped_small += int((~keep).sum())
        scale = body_scale(kp, cfg.min_keypoint_confidence)
        quality = ok.sum(axis=1) * np.array([p.score for p in people]) + keep * 1000
        dup = self._duplicates(kp, ok & keep[:, None], scale, quality) & keep
        self.dropped_duplicates += int(dup.sum())
        keep &= ~dup
        idx = np.flatnonzero(keep)
        if idx.size == 0:
            return []
        kp, ok, scale = kp[idx], ok[idx], scale[idx]

        assigned: dict[int, tuple[Tracklet, bool]] = {}
        if self.active:
            direct, mirror = self._costs(kp, ok, scale, t)
            hits = np.array([tr.hits for tr in self.active])[:, None]
            use_mirror = (mirror < cfg.swap_gain * direct) & (mirror < _INFEASIBLE) & (hits >= 3)
            cost = np.where(use_mirror, mirror, direct)
            rows, cols = linear_sum_assignment(cost)
            for r_, c_ in zip(rows, cols, strict=True):
                if cost[r_, c_] < _INFEASIBLE:
                    assigned[int(c_)] = (self.active[int(r_)], bool(use_mirror[r_, c_]))

        out: list[Observation] = []
        for k in range(len(idx)):
            pose = kp[k].copy()
            if k in assigned:
                tr, swap = assigned[k]
                if swap:
                    pose = mirrored(pose)
                    tr.swaps += 1
                pose = self._plausible(tr, pose, t)
                if pose is None:
                    self.dropped_impossible += 1
                    continue
                self._observe(tr, pose, t, position)
            else:
                tr = self._new(pose, t, position)
            src = people[int(idx[k])]
            cleaned = dataclasses.replace(src, keypoints=pose.astype(np.float32), track_id=None)
            out.append(Observation(cleaned, tr, int(idx[k])))
        return out

    # -- plausibility ---------------------------------------------------------------------

    def _plausible(self, tr: Tracklet, pose: np.ndarray, t: float) -> np.ndarray | None:
        """The pose with impossible joints removed; None if too little is left."""
        cfg = self.config
        mc = cfg.min_keypoint_confidence
        ok = confident(pose, mc)
        frames = max(1.0, (t - tr.t_last) / self._frame_dt) if self._frame_dt < math.inf else 1
        last_ok = confident(tr.last, mc)
        jump = np.linalg.norm(pose[:, :2] - tr.last[:, :2], axis=-1)
        bad = ok & last_ok & (jump > cfg.max_joint_jump * tr.scale * frames)
        lengths = limb_lengths(pose[None], mc)[0]
        ref = tr.limb_reference()
        with np.errstate(invalid="ignore"):
            stretched = lengths > (1 + cfg.max_limb_growth) * ref
            if frames <= 1.5:
                prev = limb_lengths(tr.last[None], mc)[0]
                stretched |= np.abs(lengths - prev) > cfg.max_limb_step * ref
        bad[LIMB_B[stretched]] = True
        if bad.any():
            tr.rejected_joints += int(bad.sum())
            pose[bad, :2] = np.nan
            pose[bad, 2] = 0.0
        if (ok & ~bad).sum() < cfg.min_joints:
            return None
        return pose

    # -- bookkeeping ----------------------------------------------------------------------

    def _new(self, pose: np.ndarray, t: float, position: int) -> Tracklet:
        cfg = self.config
        ok = confident(pose, cfg.min_keypoint_confidence)
        scale = float(body_scale(pose[None], cfg.min_keypoint_confidence)[0])
        tr = Tracklet(
            tid=self._next,
            kalman=JointKalman(
                pose[:, :2],
                ok,
                scale,
                cfg.accel_noise,
                cfg.measurement_noise,
                cfg.max_prediction_s,
            ),
            scale=scale,
            t_first=t,
            t_last=t,
            last=pose.copy(),
        )
        self._next += 1
        self._record(tr, pose, t, position, scale)
        self.active.append(tr)
        return tr

    def _observe(self, tr: Tracklet, pose: np.ndarray, t: float, position: int) -> None:
        cfg = self.config
        ok = confident(pose, cfg.min_keypoint_confidence)
        scale = float(body_scale(pose[None], cfg.min_keypoint_confidence)[0])
        tr.kalman.update(t - tr.t_last, pose[:, :2], ok, pose[:, 2], tr.scale)
        tr.scale = 0.8 * tr.scale + 0.2 * scale
        tr.t_last = t
        merged = tr.last.copy()
        merged[ok] = pose[ok]  # a joint not seen now keeps its last sighting for jump checks
        tr.last = merged
        tr.hits += 1
        self._record(tr, pose, t, position, scale)

    def _record(
        self, tr: Tracklet, pose: np.ndarray, t: float, position: int, scale: float
    ) -> None:
        mc = self.config.min_keypoint_confidence
        tr.frames.append(position)
        tr.times.append(t)
        tr.centres.append(centre(pose[None], mc)[0])
        tr.scales.append(scale)
        tr.signatures.append(frame_signatures(pose[None], mc)[0])
        tr.limbs.append(limb_lengths(pose[None], mc)[0])

    def all_tracklets(self) -> list[Tracklet]:
        return sorted(self.closed + self.active, key=lambda tr: tr.tid)
