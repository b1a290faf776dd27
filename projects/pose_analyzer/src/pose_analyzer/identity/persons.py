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
    """The tracklet whose person `tr` is a second skeleton of, if any.

    `tr` overlaps an older tracklet in time for at most `shadow_max_s`, and in most of
    the frames where both were observed it sat within `shadow_distance` body heights of
    it: a duplicate the per-frame test let through (e.g. a skeleton on the lower half
    of someone) that then, while the real one was missed, carried on as its own
    tracklet. Two people who walk past each other overlap for longer, and are that
    close only for the few frames of the crossing."""
    mine = dict(zip(tr.frames, zip(tr.centres, tr.scales, strict=True), strict=True))
    best: Tracklet | None = None
    best_votes = 0
    for other in others:
        if other is tr or other.hits <= tr.hits:
            continue
        overlap = min(tr.t_last, other.t_last) - max(tr.t_first, other.t_first)
        if overlap < 0 or overlap > config.shadow_max_s:
            continue
        both = near = 0
        for f, oc, os_ in zip(other.frames, other.centres, other.scales, strict=True):
            m = mine.get(f)
            if m is None:
                continue
            both += 1
            if np.linalg.norm(m[0] - oc) < config.shadow_distance * max(m[1], os_):
                near += 1
        if both and near >= 0.5 * both and near > best_votes:
            best, best_votes = other, near
    return best
