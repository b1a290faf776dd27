"""Temporary stand-in for `pose_analyzer.identity` (the identity contract).

Until the identity package lands, live and offline identity both run the old
frame-to-frame `Tracker`: a tracklet is a person, nothing is stitched. Same
signatures as the contract, so switching is a one-line import in modes.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from pose_analyzer.keypoints import FramePoses, PersonPose
from pose_analyzer.tracking import Tracker


@dataclasses.dataclass(frozen=True)
class IdentityConfig:
    max_age_s: float = 1.0


class LiveIdentity:
    def __init__(self, config: IdentityConfig | None = None) -> None:
        self._tracker = Tracker(max_age_s=(config or IdentityConfig()).max_age_s)
        self._seen: set[int] = set()

    def update(self, frame: FramePoses) -> list[PersonPose]:
        people = [p for p in self._tracker.update(frame.people, frame.t) if p.track_id is not None]
        self._seen.update(int(p.track_id) for p in people if p.track_id is not None)
        return people

    def tracklets(self) -> dict[int, list[int]]:
        return {pid: [pid] for pid in sorted(self._seen)}


def identify_offline(
    frames: Sequence[FramePoses], config: IdentityConfig | None = None
) -> tuple[list[FramePoses], dict[int, list[int]]]:
    live = LiveIdentity(config)
    out = [dataclasses.replace(f, people=live.update(f)) for f in frames]
    return out, live.tracklets()
