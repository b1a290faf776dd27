"""Whether two tracklets (or a tracklet and a lost person) can be one person.

Three signals, each gated on its own and then summed into one cost:
- body proportions (limb-length ratios, `skeleton.signature_distance`), which a
  change of pose does not change;
- where: the later one must start within reach of where the earlier one ended,
  moving on at its last velocity for a short while, plus what a person can walk in
  the gap (`reacquire_speed`), plus slack (`reacquire_distance`); in body heights;
- when: never overlapping in time.
"""

from __future__ import annotations

import math

import numpy as np

from pose_analyzer.identity.config import IdentityConfig
from pose_analyzer.identity.skeleton import signature_distance, tracklet_signature
from pose_analyzer.identity.tracklets import Tracklet

INFEASIBLE = 1e9


def signature(tracklets: list[Tracklet]) -> tuple[np.ndarray, np.ndarray]:
    rows = [s for tr in tracklets for s in tr.signatures]
    if not rows:
        return np.full(4, np.nan), np.zeros(4, dtype=np.int64)
    return tracklet_signature(np.stack(rows))


def _end(tr: Tracklet) -> tuple[np.ndarray, float]:
    c = np.stack(tr.centres[-5:])
    c = c[np.isfinite(c).all(axis=1)]
    return (c[-1] if len(c) else np.full(2, np.nan)), float(np.median(tr.scales[-5:]))


def _start(tr: Tracklet) -> tuple[np.ndarray, float]:
    c = np.stack(tr.centres[:5])
    c = c[np.isfinite(c).all(axis=1)]
    return (c[0] if len(c) else np.full(2, np.nan)), float(np.median(tr.scales[:5]))


def link_cost(
    before: list[Tracklet], after: Tracklet, config: IdentityConfig
) -> tuple[float, float, float]:
    """(cost, signature distance, position distance in allowed radii) of `after` being the
    person last seen as `before[-1]`; cost INFEASIBLE when a gate fails."""
    last = before[-1]
    gap = after.t_first - last.t_last
    if gap <= 0:
        return INFEASIBLE, math.nan, math.nan
    end, end_scale = _end(last)
    start, start_scale = _start(after)
    scale = max(end_scale, start_scale)
    coast = min(gap, config.max_prediction_s)
    expected = end + last.velocity() * coast
    allowed = (config.reacquire_distance + config.reacquire_speed * gap) * scale
    pos = float(np.linalg.norm(start - expected) / allowed) if np.isfinite(start).all() else 1.0
    pos = min(pos, float(np.linalg.norm(start - end) / allowed)) if np.isfinite(end).all() else pos
    # Apparent size changes only as fast as the person walks towards the camera.
    size_ratio = abs(math.log(max(start_scale, 1.0) / max(end_scale, 1.0)))
    sig = signature_distance(signature(before), signature([after]))
    if not pos <= 1.0 or size_ratio > math.log(1.6) + gap * 0.5:
        return INFEASIBLE, sig, pos
    if math.isfinite(sig) and sig > config.signature_gate:
        return INFEASIBLE, sig, pos
    sig_term = sig / config.signature_gate if math.isfinite(sig) else 0.5
    return sig_term + pos + gap / max(config.max_stitch_gap_s, 1e-9), sig, pos


def shadow_host(tr: Tracklet, others: list[Tracklet], config: IdentityConfig) -> Tracklet | None:
    """The tracklet whose person `tr` is a second skeleton of, if any: a short tracklet
    that, in most of the frames it has, sits within `shadow_distance` body heights of an
    older tracklet's observation in the same frame (a duplicate that the per-frame test
    let through, e.g. a skeleton on the lower half of someone)."""
    if tr.t_last - tr.t_first > config.shadow_max_s:
        return None
    mine = dict(zip(tr.frames, zip(tr.centres, tr.scales, strict=True), strict=True))
    votes: dict[int, int] = {}
    for other in others:
        if other is tr or other.hits <= tr.hits or other.t_last < tr.t_first:
            continue
        if other.t_first > tr.t_last:
            continue
        for f, oc, os_ in zip(other.frames, other.centres, other.scales, strict=True):
            m = mine.get(f)
            if m is not None and np.linalg.norm(m[0] - oc) < config.shadow_distance * max(
                m[1], os_
            ):
                votes[id(other)] = votes.get(id(other), 0) + 1
    if not votes:
        return None
    best = max(votes, key=lambda k: votes[k])
    if votes[best] < 0.5 * len(tr.frames):
        return None
    return next(o for o in others if id(o) == best)
