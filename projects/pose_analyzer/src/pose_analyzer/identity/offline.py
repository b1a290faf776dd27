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
from pose_analyzer.identity.persons import INFEASIBLE, link_cost
from pose_analyzer.identity.tracklets import Observation, Tracklet, TrackletTracker
from pose_analyzer.keypoints import FramePoses

_LINK_BONUS = 10.0  # every feasible link beats no link; cheaper links beat dearer ones


def stitch(tracklets: list[Tracklet], config: IdentityConfig) -> list[list[Tracklet]]:
    """Chains of tracklets, each one person, in time order within a chain."""
    chains = [[tr] for tr in sorted(tracklets, key=lambda tr: tr.t_first)]
    for _ in range(8):
        n = len(chains)
        if n < 2:
            break
        score = np.zeros((n, n))
        for i, a in enumerate(chains):
            for j, b in enumerate(chains):
                if i != j and b[0].t_first > a[-1].t_last:
                    c = link_cost(a, b[0], config)[0]
                    if c < INFEASIBLE and b[0].t_first - a[-1].t_last <= config.max_stitch_gap_s:
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
            merged.append(chain)
        chains = merged
    return chains


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
    chains.sort(key=lambda c: (c[0].t_first, c[0].tid))
    person_of: dict[int, int] = {}
    persons: dict[int, list[int]] = {}
    for pid, chain in enumerate(chains, start=1):
        persons[pid] = [tr.tid for tr in chain]
        for tr in chain:
            person_of[tr.tid] = pid
    out = []
    for f, obs in zip(frames, per_frame, strict=True):
        people = [
            dataclasses.replace(o.person, track_id=person_of[o.tracklet.tid])
            for o in sorted(obs, key=lambda o: o.order)
            if o.tracklet.tid in person_of
        ]
        out.append(dataclasses.replace(f, people=people))
    return out, persons
