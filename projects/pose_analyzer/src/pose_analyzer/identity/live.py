"""Causal identity for one stream: tracklets as frames come, persons re-acquired live."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from pose_analyzer.identity.config import IdentityConfig
from pose_analyzer.identity.persons import INFEASIBLE, link_cost, shadow_host
from pose_analyzer.identity.tracklets import Observation, Tracklet, TrackletTracker, with_pose
from pose_analyzer.keypoints import FramePoses, PersonPose

_HISTORY = 300  # frames of per-frame records a live tracklet keeps (~10 s at 30 fps)


@dataclass
class _Person:
    pid: int
    tracklets: list[Tracklet] = field(default_factory=list)

    @property
    def t_last(self) -> float:
        return self.tracklets[-1].t_last


class LiveIdentity:
    """One per stream/camera. Causal: sees each frame once, in time order.

    A new tracklet is held back (not returned) until it has `min_hits` frames, so a
    skeleton that flickers up for a frame or two never becomes a person. When it is
    confirmed it is first offered to the persons not in view (lost up to
    `reacquire_s`), by body-proportion signature and position; only if none fits does
    it become a new person.
    """

    def __init__(self, config: IdentityConfig | None = None) -> None:
        self.config = config or IdentityConfig()
        self._tracker = TrackletTracker(self.config, history=_HISTORY)
        self._persons: dict[int, _Person] = {}
        self._next_pid = 1

    @property
    def tracker(self) -> TrackletTracker:
        return self._tracker

    def update(self, frame: FramePoses) -> list[PersonPose]:
        """The frame's plausible people with `track_id` = the person id."""
        obs = self._tracker.step(frame.people, frame.t, frame.index)
        pending = [
            o for o in obs if o.tracklet.person is None and o.tracklet.hits >= self.config.min_hits
        ]
        if pending:
            self._confirm(pending, obs, frame.t)
        out = []
        seen: set[int] = set()
        # Main tracklets first: of two skeletons of one person, the shadow is dropped.
        for o in sorted(obs, key=lambda o: (o.tracklet.absorbed_into is not None, o.order)):
            pid = o.tracklet.person
            if pid is not None and pid not in seen:
                seen.add(pid)
                out.append((o.order, with_pose(o.person, o.person.keypoints, pid)))
        return [p for _, p in sorted(out, key=lambda x: x[0])]

    def _confirm(self, pending: list[Observation], obs: list[Observation], t: float) -> None:
        cfg = self.config
        in_view = {o.tracklet.person for o in obs if o.tracklet.person is not None}
        lost = [
            p
            for p in self._persons.values()
            if p.pid not in in_view and t - p.t_last <= cfg.reacquire_s
        ]
        assigned: dict[int, _Person] = {}
        if lost:
            cost = np.array(
                [[link_cost(p.tracklets, o.tracklet, cfg)[0] for p in lost] for o in pending]
            )
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols, strict=True):
                if cost[r, c] < INFEASIBLE:
                    assigned[int(r)] = lost[int(c)]
        known = [tr for p in self._persons.values() for tr in p.tracklets]
        for i, o in enumerate(pending):
            host = shadow_host(o.tracklet, known, cfg)
            if host is not None and host.person is not None:
                # A second skeleton riding on someone already known: theirs, not a person.
                o.tracklet.person = host.person
                o.tracklet.absorbed_into = host.tid
                self._persons[host.person].tracklets.append(o.tracklet)
                continue
            person = assigned.get(i)
            if person is None:
                person = _Person(self._next_pid)
                self._persons[person.pid] = person
                self._next_pid += 1
            else:
                # The old tracklet, if it is still coasting, is this person's past.
                old = person.tracklets[-1]
                if old in self._tracker.active:
                    self._tracker.active.remove(old)
                    self._tracker.closed.append(old)
            person.tracklets.append(o.tracklet)
            o.tracklet.person = person.pid

    def tracklets(self) -> dict[int, list[int]]:
        """person id -> the tracklet ids merged into it so far."""
        return {pid: [tr.tid for tr in p.tracklets] for pid, p in sorted(self._persons.items())}
