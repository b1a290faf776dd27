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
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from pose_analyzer.identity.config import IdentityConfig
from pose_analyzer.identity.motion import JointKalman
from pose_analyzer.identity.skeleton import (
    LIMB_A,
    LIMB_B,
    LIMB_MIRROR,
    MIRROR,
    body_scale,
    centre,
    confident,
    frame_signatures,
    limb_lengths,
    mirrored,
    nanmedian,
    nanquantile,
    norm2,
    segment_lengths,
)
from pose_analyzer.keypoints import PersonPose

_INFEASIBLE = 1e9
_LIMB_HISTORY = 90  # frames of limb lengths a tracklet keeps as its reference
_MIN_LIMB_SAMPLES = 5
_LIMB_REFRESH = 5  # new limb samples between recomputations of the limb reference


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
    absorbed_into: int | None = None  # closed as a duplicate follower of that tracklet
    swap_run: int = 0  # consecutive frames whose labels had to be mirrored
    relabelled: int = 0  # times the detector's new labelling was adopted
    last_limbs: np.ndarray | None = None  # limb_lengths of `last` (kept with it)
    last_ok: np.ndarray | None = None  # confident() of `last` (kept with it)
    _samples: int = 0  # limb samples appended so far
    _ref: np.ndarray | None = None  # cached limb_reference()
    _ref_at: int = 0  # _samples when _ref was computed

    def adopt_mirror(self) -> None:
        """Mirror the tracklet's own state, so the detector's current labels fit as-is."""
        k = self.kalman
        k.forget_prediction()
        k.p, k.v = k.p[MIRROR], k.v[MIRROR]
        k.ppp, k.ppv, k.pvv = k.ppp[MIRROR], k.ppv[MIRROR], k.pvv[MIRROR]
        self.last = self.last[MIRROR]
        if self.last_limbs is not None:
            self.last_limbs = self.last_limbs[LIMB_MIRROR]
        if self.last_ok is not None:
            self.last_ok = self.last_ok[MIRROR]
        self.limbs = deque((row[LIMB_MIRROR] for row in self.limbs), maxlen=self.limbs.maxlen)
        self._ref = None
        self.swap_run = 0
        self.relabelled += 1

    def limb_reference(self) -> np.ndarray:
        """Per limb, the long end of its recent lengths (NaN until enough were seen).

        Recomputed every `_LIMB_REFRESH` new samples, not every frame: it is the 90th
        percentile of up to 90 frames, which a few more frames barely move, and the
        sort over the history was the largest single cost of identity per frame."""
        if len(self.limbs) < _MIN_LIMB_SAMPLES:
            return np.full(LIMB_B.shape[0], np.nan)
        if self._ref is None or self._ref_at + _LIMB_REFRESH <= self._samples:
            hist = np.array(self.limbs)
            n = np.isfinite(hist).sum(axis=0)
            self._ref = np.where(n >= _MIN_LIMB_SAMPLES, nanquantile(hist, 0.9, axis=0), np.nan)
            self._ref_at = self._samples
        return self._ref

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


def with_pose(src: PersonPose, keypoints: np.ndarray, track_id: int | None) -> PersonPose:
    """dataclasses.replace(src, keypoints=..., track_id=...), built directly for a plain
    PersonPose (replace introspects the fields on every call; this runs per person per
    frame)."""
    if type(src) is PersonPose:
        return PersonPose(keypoints, src.score, src.box, track_id)
    return dataclasses.replace(src, keypoints=keypoints, track_id=track_id)


@dataclass
class Observation:
    """A detection that survived cleaning, and the tracklet it now belongs to."""

    person: PersonPose  # cleaned copy
    tracklet: Tracklet
    order: int  # position among the frame's input detections


class TrackletTracker:
    """`history`: frames of per-frame records a tracklet keeps (None: all, offline). A
    live stream runs for hours; its tracklets keep the last `history` to 2x `history`."""

    def __init__(self, config: IdentityConfig, history: int | None = None) -> None:
        self.config = config
        self.history = history
        self.active: list[Tracklet] = []
        self.closed: list[Tracklet] = []
        self._next = 1
        self._last_t = -math.inf
        self._frame_dt = math.inf  # typical time between frames, learned
        self.dropped_small = 0
        self.dropped_duplicates = 0
        self.dropped_impossible = 0

    # -- cleaning -------------------------------------------------------------------------

    def _closeness(self, kp: np.ndarray, ok: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """(D, D) median joint distance between skeletons (either labelling), in body
        heights of the smaller one; inf on the diagonal and without 3 shared joints."""
        d = kp.shape[0]
        if d < 2:
            return np.full((d, d), np.inf)  # one skeleton: nothing to be a duplicate of
        # Both labellings at once (columns :D as given, D: mirrored); confident() of a
        # mirrored skeleton is its own, mirrored.
        alt_xy = np.concatenate([kp[..., :2], kp[:, MIRROR, :2]])  # (2D, J, 2)
        alt_ok = np.concatenate([ok, ok[:, MIRROR]])
        both = ok[:, None, :] & alt_ok[None, :, :]
        dist = norm2(kp[:, None, :, :2] - alt_xy[None])
        shared = both.sum(axis=-1)
        # The median joint: a second skeleton on one person often shares the torso
        # and places a limb or two elsewhere.
        med = nanmedian(np.where(both, dist, np.nan), axis=-1)
        smaller = np.minimum(scale[:, None], scale[None, :])
        norm = np.where(np.isnan(med), np.inf, med) / np.concatenate([smaller, smaller], axis=1)
        norm = np.where(shared >= 3, norm, np.inf)
        best = np.minimum(norm[:, :d], norm[:, d:])
        np.fill_diagonal(best, np.inf)
        return best

    def _suppress_duplicates(
        self, close: np.ndarray, quality: np.ndarray, assigned: dict[int, tuple[Tracklet, bool]]
    ) -> np.ndarray:
        """(D,) bool: skeletons that are a second detection of someone. Of two skeletons
        on one place the one continuing an established tracklet stays (else the better
        one); both stay when each continues its own established tracklet: that is two
        people overlapping (one walking past the other), not one person seen twice."""
        cfg = self.config
        d = close.shape[0]
        drop = np.zeros(d, dtype=bool)
        if d < 2:
            return drop  # one skeleton is nobody's duplicate

        def established(k: int) -> Tracklet | None:
            a = assigned.get(k)
            return a[0] if a is not None and a[0].hits >= cfg.min_hits else None

        for i in np.argsort(-quality):
            if drop[i]:
                continue
            for j in np.flatnonzero(close[i] < cfg.duplicate_distance):
                if drop[j] or drop[i]:
                    continue
                ti, tj = established(int(i)), established(int(j))
                if ti is not None and tj is not None and ti is not tj:
                    continue
                loser = int(i) if (tj is not None and ti is None) else int(j)
                drop[loser] = True
                assigned.pop(loser, None)
        return drop

    # -- association ----------------------------------------------------------------------

    def _costs(
        self, kp: np.ndarray, ok: np.ndarray, scale: np.ndarray, t: float
    ) -> tuple[Any, ...]:
        """(T, D) arrays, each as-is and mirrored: the assignment cost (mean negative
        log-likelihood per joint under the prediction; _INFEASIBLE outside the gate), the
        mean normalised distance (sigmas), and a function that gives the median joint
        distance to the last observation in body heights (what a left/right swap is
        judged on).

        The likelihood, not the distance in sigmas, decides who gets a detection: a
        track coasting for a while has a wide prediction, so everything is "near" it in
        sigmas, and it would steal the detection of a person seen a frame ago."""
        cfg = self.config
        tr_scale = np.array([tr.scale for tr in self.active])
        pred, var, last = [], [], []
        for tr in self.active:
            p, v = tr.kalman.predict(t - tr.t_last, tr.scale)
            pred.append(p)
            var.append(v)
            last.append(tr.kalman.p)
        # (np.array of a list: np.stack's result at a fraction of its call overhead)
        pred_a, var_a, last_a = np.array(pred), np.array(var), np.array(last)
        tr_ok = np.isfinite(pred_a).all(axis=-1)  # (T, J)
        since = np.array([t - tr.t_last for tr in self.active])
        # Matching at the last seen place is for someone who stepped out and came back
        # the way they went; for a frame or two of coasting the prediction is better (a
        # person missed at a crossing is further on, not where they were).
        coasting = since > 0.5 * cfg.max_prediction_s
        r = (cfg.measurement_noise * tr_scale) ** 2
        spread = 0.5 * np.log1p(cfg.accel_noise**2 * since**3 / (3 * cfg.measurement_noise**2))
        # Both labellings at once: the detections as given (columns :D) and mirrored
        # (D:), one set of array operations for the two (the same arithmetic per element).
        d = kp.shape[0]
        alt_xy = np.concatenate([kp[..., :2], kp[:, MIRROR, :2]])  # (2D, J, 2)
        alt_ok = np.concatenate([ok, ok[:, MIRROR]])
        both = tr_ok[:, None, :] & alt_ok[None, :, :]  # (T, 2D, J)
        shared = both.sum(axis=-1)
        per_joint = np.maximum(shared, 1)

        def jumps() -> tuple[np.ndarray, np.ndarray]:
            """Median joint distance to the last observation (as given, mirrored): only
            needed where a swap is in question, which is seldom; computed on demand."""
            step = norm2(last_a[:, None] - alt_xy[None])
            with np.errstate(all="ignore"):
                med = nanmedian(np.where(both, step, np.nan), axis=-1)
            jump = np.where(np.isnan(med), np.inf, med) / tr_scale[:, None]
            return jump[:, :d], jump[:, d:]

        best = np.full(shared.shape, np.inf)
        best_sig = np.full(shared.shape, np.inf)
        sd = np.sqrt(var_a[:, None, :] + r[:, None, None])
        # Someone who stepped out often comes back where they left, not where their
        # last motion pointed: a coasting track may also match at its last place.
        places = [(pred_a, None), (last_a, coasting)]
        for place, rows in places:
            if rows is not None and not rows.any():
                continue
            dist = norm2(place[:, None] - alt_xy[None])
            dist = np.where(both, dist, 0.0)  # finite wherever both are seen
            z = np.where(both, np.minimum(dist / sd, 10.0), 0.0)
            sig = z.sum(axis=-1) / per_joint
            # The spread term depends only on how long a track has not been seen (the
            # growth of its prediction's variance relative to the measurement noise,
            # which is scale-free): tracks seen equally recently are compared on fit
            # alone, and one seen a frame ago beats one that has coasted for a while.
            nll = (0.5 * z**2).sum(axis=-1) / per_joint + spread[:, None]
            px = dist.sum(axis=-1) / per_joint / tr_scale[:, None]
            feasible = (shared >= 3) & (sig <= cfg.gate_sigmas) & (px <= cfg.max_match_distance)
            if rows is not None:
                feasible &= rows[:, None]
            nll = np.where(feasible, nll, np.inf)
            better = nll < best
            best = np.where(better, nll, best)
            best_sig = np.where(better, sig, best_sig)
        cost = np.where(np.isfinite(best), best, _INFEASIBLE)
        sigma = np.where(np.isfinite(best_sig), best_sig, _INFEASIBLE)
        return cost[:, :d], cost[:, d:], sigma[:, :d], sigma[:, d:], jumps

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
            # A tentative tracklet (fewer than min_hits frames) that misses a frame was a
            # flicker, not a person: it does not coast, or it would grab someone else.
            tentative_miss = tr.hits < cfg.min_hits and t - tr.t_last > 1.5 * self._frame_dt
            alive = t - tr.t_last <= cfg.max_age_s and not tentative_miss
            (still if alive else self.closed).append(tr)
        self.active = still
        if not people:
            return []

        kp = np.array([p.keypoints for p in people], dtype=np.float64)
        mc = cfg.min_keypoint_confidence
        ok = confident(kp, mc)
        keep = ok.sum(axis=1) >= cfg.min_joints
        self.dropped_small += int((~keep).sum())
        # Every detection measured once, all together: what association needs (the
        # scale) and what the tracklet records for it afterwards (limbs, segments).
        limbs = limb_lengths(kp, mc, ok)
        seg = segment_lengths(kp, mc, limbs)
        scale = body_scale(kp, mc, limbs, ok, seg)
        idx = np.flatnonzero(keep)
        if idx.size == 0:
            return []
        kp, ok, scale, limbs, seg = kp[idx], ok[idx], scale[idx], limbs[idx], seg[idx]
        quality = ok.sum(axis=1) * np.array([people[int(i)].score for i in idx])

        assigned: dict[int, tuple[Tracklet, bool]] = {}
        self.ambiguous: set[int] = set()
        if self.active:
            direct, mirror, z_direct, z_mirror, jumps = self._costs(kp, ok, scale, t)
            hits = np.array([tr.hits for tr in self.active])[:, None]
            # A swap is a jump of the labels, not a motion: the mirrored skeleton must sit
            # clearly nearer the last observation than the skeleton as given, and fit the
            # motion model better too. A person seen side-on (left and right joints close)
            # never qualifies, so a real turn is not "corrected".
            swap = (hits >= 5) & (mirror < _INFEASIBLE) & (z_mirror < cfg.swap_gain * z_direct)
            if swap.any():
                step, step_m = jumps()
                swap &= (step > cfg.swap_min_step) & (step_m < cfg.swap_gain * step)
            use_mirror = swap | ((direct >= _INFEASIBLE) & (mirror < _INFEASIBLE))
            cost = np.where(use_mirror, mirror, direct)
            # Two tracklets on one place: an established one takes the detection.
            cost = np.where((cost < _INFEASIBLE) & (hits < cfg.min_hits), cost + 0.5, cost)
            rows, cols = linear_sum_assignment(cost)
            for r_, c_ in zip(rows, cols, strict=True):
                if cost[r_, c_] < _INFEASIBLE:
                    assigned[int(c_)] = (self.active[int(r_)], bool(use_mirror[r_, c_]))
            self._drop_ambiguous(cost, hits[:, 0], assigned)

        dup = self._suppress_duplicates(self._closeness(kp, ok, scale), quality, assigned)
        self.dropped_duplicates += int(dup.sum())
        if self.active:
            self._absorb_redundant(kp, ok, scale, assigned, z_direct, z_mirror, t)
        out: list[Observation] = []
        for k in range(len(idx)):
            if dup[k] or k in self.ambiguous:
                continue
            pose = kp[k].copy()
            if k in assigned:
                tr, swap = assigned[k]
                flipped = False
                if swap:
                    pose = mirrored(pose)
                    flipped = True
                    tr.swaps += 1
                    tr.swap_run += 1
                    if tr.swap_run >= cfg.swap_persist_frames:
                        # The detector has settled on the other labelling: follow it
                        # rather than correct it for the rest of the tracklet.
                        tr.adopt_mirror()
                        pose = mirrored(pose)
                        flipped = False
                else:
                    tr.swap_run = 0
                # Mirroring permutes joints and limbs; segments and scale take the
                # longer side and the extent, which it leaves as they are.
                pose_ok = ok[k][MIRROR] if flipped else ok[k]
                pose_limbs = limbs[k][LIMB_MIRROR] if flipped else limbs[k]
                checked = self._plausible(tr, pose, t, pose_ok, pose_limbs)
                if checked is None:
                    self.dropped_impossible += 1
                    continue
                pose, pose_ok, pose_limbs, cleaned = checked
                measured = None if cleaned else (seg[k : k + 1], float(scale[k]))
                self._observe(tr, pose, t, position, pose_ok, pose_limbs, measured)
            else:
                tr = self._new(pose, t, position, ok[k], limbs[k : k + 1], seg[k : k + 1])
            src = people[int(idx[k])]
            kept = with_pose(src, pose.astype(np.float32), None)
            out.append(Observation(kept, tr, int(idx[k])))
        return out

    def _drop_ambiguous(
        self, cost: np.ndarray, hits: np.ndarray, assigned: dict[int, tuple[Tracklet, bool]]
    ) -> None:
        """Leave a detection unassigned when another established tracklet, left without a
        detection this frame, fits it as well (two people crossing, one of them missed):
        which of them it is cannot be told from this frame, and guessing wrong swaps
        identities. Both tracklets coast one frame instead; the next frame decides."""
        cfg = self.config
        taken = {id(tr) for tr, _ in assigned.values()}
        rows = {id(tr): i for i, tr in enumerate(self.active)}
        free = np.array([id(tr) not in taken and tr.hits >= cfg.min_hits for tr in self.active])
        if not free.any():
            return
        for c, (tr, _) in list(assigned.items()):
            r = rows[id(tr)]
            rivals = free & (np.abs(cost[:, c] - cost[r, c]) < cfg.ambiguity_margin)
            rivals[r] = False
            if rivals.any() and hits[r] >= cfg.min_hits:
                del assigned[c]
                self.ambiguous.add(c)

    def _absorb_redundant(
        self,
        kp: np.ndarray,
        ok: np.ndarray,
        scale: np.ndarray,
        assigned: dict[int, tuple[Tracklet, bool]],
        direct: np.ndarray,
        mirror: np.ndarray,
        t: float,
    ) -> None:
        """Resolve two tracklets following one person (a young one born from a duplicate
        skeleton): an unmatched tracklet whose prediction sits on a detection another
        tracklet took would otherwise steal that person's detection every other frame.
        The one with more history keeps the detection; the other is closed and
        remembered as absorbed into it (offline puts both into one person). Two
        established tracklets are never merged here: that is two people close together."""
        cfg = self.config
        matched = {id(tr) for tr, _ in assigned.values()}
        rows = {id(tr): i for i, tr in enumerate(self.active)}
        for tr in list(self.active):
            if id(tr) in matched or tr not in self.active:
                continue
            p, _ = tr.kalman.predict(t - tr.t_last, tr.scale)
            both = np.isfinite(p).all(axis=-1)[None, :] & ok
            enough = both.sum(axis=1) >= 3
            if not enough.any():
                continue
            dist = norm2(p[None] - kp[..., :2])
            with np.errstate(all="ignore"):
                med = nanmedian(np.where(both, dist, np.nan), axis=1)
            limit = cfg.duplicate_distance * np.minimum(scale, tr.scale)
            r = rows[id(tr)]
            # Only a detection this tracklet could itself have taken (inside its own gate).
            fits = np.minimum(direct[r], mirror[r]) < cfg.gate_sigmas / 2
            close = enough & fits & (np.where(np.isnan(med), np.inf, med) < limit)
            near = [k for k in np.flatnonzero(close) if k in assigned]
            if not near:
                continue
            k = int(near[0])
            other, _ = assigned[k]
            young = 2 * cfg.min_hits
            if tr.hits > young and other.hits > young:
                continue  # two established people side by side, not one seen twice
            if tr.hits > other.hits:
                assigned[k] = (tr, bool(mirror[r, k] < direct[r, k]))
                loser, winner = other, tr
            else:
                loser, winner = tr, other
            self.active.remove(loser)
            self.closed.append(loser)
            loser.absorbed_into = winner.tid
            matched = {id(x) for x, _ in assigned.values()}

    # -- plausibility ---------------------------------------------------------------------

    def _plausible(
        self, tr: Tracklet, pose: np.ndarray, t: float, ok: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool] | None:
        """The pose (`ok`, `lengths`: its confident() joints and limb_lengths) with
        impossible joints removed: (pose, ok, lengths, whether any was removed); None if
        too little is left."""
        cfg = self.config
        mc = cfg.min_keypoint_confidence
        frames = max(1.0, (t - tr.t_last) / self._frame_dt) if self._frame_dt < math.inf else 1
        last_ok = tr.last_ok
        if last_ok is None:
            last_ok = tr.last_ok = confident(tr.last, mc)
        jump = norm2(pose[:, :2] - tr.last[:, :2])
        bad = ok & last_ok & (jump > cfg.max_joint_jump * tr.scale * frames)
        ref = tr.limb_reference()
        with np.errstate(invalid="ignore"):
            stretched = lengths > (1 + cfg.max_limb_growth) * ref
            if frames <= 1.5:
                prev = tr.last_limbs
                if prev is None:
                    prev = tr.last_limbs = limb_lengths(tr.last[None], mc)[0]
                stretched |= np.abs(lengths - prev) > cfg.max_limb_step * ref
        bad[LIMB_B[stretched]] = True
        cleaned = bool(bad.any())
        if cleaned:
            tr.rejected_joints += int(bad.sum())
            pose[bad, :2] = np.nan
            pose[bad, 2] = 0.0
            # What confident() and limb_lengths() give on the cleaned pose: a removed
            # joint is no longer confident, and no limb with a removed end has a length.
            ok = ok & ~bad
            lengths = np.where(bad[LIMB_A] | bad[LIMB_B], np.nan, lengths)
        if ok.sum() < cfg.min_joints:
            return None
        return pose, ok, lengths, cleaned

    # -- bookkeeping ----------------------------------------------------------------------

    def _new(
        self,
        pose: np.ndarray,
        t: float,
        position: int,
        ok: np.ndarray,
        limbs: np.ndarray,
        seg: np.ndarray,
    ) -> Tracklet:
        """`ok` (J,), `limbs` (1, L), `seg` (1, S): the pose's confident joints, limb and
        segment lengths."""
        cfg = self.config
        mc = cfg.min_keypoint_confidence
        scale = float(body_scale(pose[None], mc, limbs, ok[None], seg)[0])
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
            last_limbs=limbs[0],
            last_ok=ok,
        )
        self._next += 1
        self._record(tr, pose, t, position, scale, limbs, ok, seg)
        self.active.append(tr)
        return tr

    def _observe(
        self,
        tr: Tracklet,
        pose: np.ndarray,
        t: float,
        position: int,
        ok: np.ndarray,
        limb_row: np.ndarray,
        measured: tuple[np.ndarray, float] | None = None,
    ) -> None:
        """Fold in a plausible pose; `ok`, `limb_row`: its confident() joints and
        limb_lengths, as _plausible measured them; `measured`: its (segment_lengths,
        body_scale) if known (the detection's own, when nothing was removed from it)."""
        cfg = self.config
        mc = cfg.min_keypoint_confidence
        limbs = limb_row[None]
        if measured is None:
            seg = segment_lengths(pose[None], mc, limbs)
            scale = float(body_scale(pose[None], mc, limbs, ok[None], seg)[0])
        else:
            seg, scale = measured
        tr.kalman.update(t - tr.t_last, pose[:, :2], ok, pose[:, 2], tr.scale)
        tr.scale = 0.8 * tr.scale + 0.2 * scale
        tr.t_last = t
        if ok.all():
            tr.last, tr.last_limbs, tr.last_ok = pose.copy(), limbs[0], ok
        else:
            merged = tr.last.copy()
            merged[ok] = pose[ok]  # a joint not seen now keeps its last sighting for jumps
            last_ok = None if tr.last_ok is None else tr.last_ok | ok
            tr.last, tr.last_limbs, tr.last_ok = merged, None, last_ok  # limbs: when needed
        tr.hits += 1
        self._record(tr, pose, t, position, scale, limbs, ok, seg)

    def _record(
        self,
        tr: Tracklet,
        pose: np.ndarray,
        t: float,
        position: int,
        scale: float,
        limbs: np.ndarray,
        ok: np.ndarray,
        seg: np.ndarray,
    ) -> None:
        """`limbs`, `ok`, `seg`: limb_lengths, confident and segment_lengths of the pose."""
        mc = self.config.min_keypoint_confidence
        tr.frames.append(position)
        tr.times.append(t)
        tr.centres.append(centre(pose[None], mc, ok[None])[0])
        tr.scales.append(scale)
        tr.signatures.append(frame_signatures(pose[None], mc, limbs, seg)[0])
        tr.limbs.append(limbs[0])
        tr._samples += 1
        if self.history is not None and len(tr.frames) >= 2 * self.history:
            keep = -self.history
            for seq in (tr.frames, tr.times, tr.centres, tr.scales, tr.signatures):
                del seq[:keep]

    def all_tracklets(self) -> list[Tracklet]:
        return sorted(self.closed + self.active, key=lambda tr: tr.tid)
