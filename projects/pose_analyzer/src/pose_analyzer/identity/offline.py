"""Identity when the whole recording is known: track, then stitch tracklets into persons.

Stitching is one global assignment of tracklet ends to tracklet starts (Hungarian):
a link is possible only between tracklets that do not overlap in time and pass the
gates of `persons.link_cost` (signature, gap-consistent position, size); among the
possible links the assignment takes as many as it can at the least total cost. The
chains it forms are persons; the assignment is repeated on the chains (with the
signature of the whole chain, which is steadier than a short tracklet's) until
nothing more links. Chains shorter than `min_tracklet_frames` are noise and dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from pose_analyzer.identity.config import IdentityConfig
from pose_analyzer.identity.persons import INFEASIBLE, link_cost, shadow_host
from pose_analyzer.identity.tracklets import Observation, Tracklet, TrackletTracker
from pose_analyzer.keypoints import FramePoses, PersonPose

_LINK_BONUS = 10.0  # every feasible link beats no link; cheaper links beat dearer ones


def stitch(tracklets: list[Tracklet], config: IdentityConfig) -> list[list[Tracklet]]:
    """Chains of tracklets, each one person, in time order within a chain."""
    _mark_shadows(tracklets, config)
    chains = _absorbed_groups(tracklets)
    for _ in range(8):
        n = len(chains)
        if n < 2:
            break
        score = np.zeros((n, n))
        for i, a in enumerate(chains):
            for j, b in enumerate(chains):
                first = min(b, key=lambda tr: tr.t_first)
                if i != j and first.t_first > a[-1].t_last:
                    c = link_cost(a, first, config)[0]
                    if c < INFEASIBLE and first.t_first - a[-1].t_last <= config.max_stitch_gap_s:
                        score[i, j] = c - _LINK_BONUS
        if not (score < 0).any():
            break
        rows, cols = linear_sum_assignment(score)
        succ = {int(r): int(c) for r, c in zip(rows, cols, strict=True) if score[r, c] < 0}
        has_pred = set(succ.values())
        merged = []
        for i in range(n):
            if i in has_pred:
                continue
            chain, k = list(chains[i]), i
            while k in succ:
                k = succ[k]
                chain.extend(chains[k])
            merged.append(_ordered(chain))
        chains = merged
    return chains


def _ordered(chain: list[Tracklet]) -> list[Tracklet]:
    """Tracklets of one person ordered by when they end: chain[-1] is the last seen, and
    (for chains built from non-overlapping links) chain[0] the first."""
    return sorted(chain, key=lambda tr: (tr.t_last, tr.t_first))


def _mark_shadows(tracklets: list[Tracklet], config: IdentityConfig) -> None:
    for tr in tracklets:
        if tr.absorbed_into is None:
            host = shadow_host(tr, tracklets, config)
            if host is not None:
                tr.absorbed_into = host.tid


def _absorbed_groups(tracklets: list[Tracklet]) -> list[list[Tracklet]]:
    """Tracklets that followed one person side by side (one absorbed into the other)."""
    by_id = {tr.tid: tr for tr in tracklets}
    root: dict[int, int] = {}

    def find(tid: int) -> int:
        while tid in root:
            tid = root[tid]
        return tid

    for tr in tracklets:
        if tr.absorbed_into is not None and tr.absorbed_into in by_id:
            a, b = find(tr.tid), find(tr.absorbed_into)
            if a != b:
                root[a] = b
    groups: dict[int, list[Tracklet]] = {}
    for tr in tracklets:
        groups.setdefault(find(tr.tid), []).append(tr)
    return sorted((_ordered(g) for g in groups.values()), key=lambda g: min(tr.t_first for tr in g))


def identify_offline(
    frames: Sequence[FramePoses], config: IdentityConfig | None = None
) -> tuple[list[FramePoses], dict[int, list[int]]]:
    """Whole recording known: track, then stitch tracklets into persons.

    Returns new FramePoses (same index/t/size; people cleaned; track_id = person id)
    and person id -> tracklet ids. Person ids are 1..N in order of first appearance.
    """
    cfg = config or IdentityConfig()
    tracker = TrackletTracker(cfg)
    per_frame: list[list[Observation]] = [
        tracker.step(f.people, f.t, pos) for pos, f in enumerate(frames)
    ]
    chains = stitch(tracker.all_tracklets(), cfg)
    chains = [c for c in chains if sum(tr.hits for tr in c) >= cfg.min_tracklet_frames]
    chains.sort(key=lambda c: min((tr.t_first, tr.tid) for tr in c))
    person_of: dict[int, int] = {}
    persons: dict[int, list[int]] = {}
    for pid, chain in enumerate(chains, start=1):
        persons[pid] = sorted(tr.tid for tr in chain)
        for tr in chain:
            person_of[tr.tid] = pid
    out = []
    for f, obs in zip(frames, per_frame, strict=True):
        kept: list[tuple[int, PersonPose]] = []
        seen: set[int] = set()
        # Main tracklets first: of two skeletons of one person, the shadow is dropped.
        for o in sorted(obs, key=lambda o: (o.tracklet.absorbed_into is not None, o.order)):
            person_id = person_of.get(o.tracklet.tid)
            if person_id is None or person_id in seen:
                continue  # noise, or a second skeleton of someone already in the frame
            seen.add(person_id)
            kept.append((o.order, dataclasses.replace(o.person, track_id=person_id)))
        out.append(dataclasses.replace(f, people=[p for _, p in sorted(kept, key=lambda x: x[0])]))
    return out, persons
