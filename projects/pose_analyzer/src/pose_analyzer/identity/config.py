"""The one typed configuration of identity, shared by the live and the offline path."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class IdentityConfig:
    """Thresholds of identity. Lengths are in body heights, times in seconds.

    The defaults come from the real clips in tests/data/real (see docs/identity.md for the
    spreads they were measured from); nothing here is tuned to one clip.
    """

    min_keypoint_confidence: float = 0.3  # joints below this take no part in anything
    min_joints: int = 5  # a skeleton with fewer confident joints is not a person
    # Motion model (constant velocity per joint, Kalman): white acceleration noise and
    # measurement noise, in body heights per s^2 and body heights.
    accel_noise: float = 12.0
    measurement_noise: float = 0.05
    max_prediction_s: float = 0.5  # coasting beyond this does not move the prediction further
    # Association: mean normalised joint distance (in sigmas of the prediction) above which
    # a detection is not the track's person; a detection is also never further than
    # `max_match_distance` body heights from the prediction or the last seen place.
    gate_sigmas: float = 4.0
    max_match_distance: float = 1.0
    ambiguity_margin: float = 0.05  # two known people fitting a detection this alike: skip it
    max_age_s: float = 1.0  # how long a tracklet coasts before it is closed
    min_hits: int = 3  # frames before a live tracklet is trusted as a person
    # Plausibility.
    max_joint_jump: float = 1.0  # body heights per frame: a joint further than that is wrong
    max_limb_growth: float = 0.5  # a limb longer than its reference by this fraction is wrong
    max_limb_step: float = 0.5  # a limb changing by this fraction of its reference in a frame
    swap_gain: float = 0.6  # mirrored fits this much better than as-is: left/right swapped
    swap_persist_frames: int = 15  # a swap lasting this long is the detector's new labelling
    swap_min_step: float = 0.08  # ...and the labels as given jumped at least this far
    duplicate_distance: float = 0.15  # two skeletons closer than this are one person
    # Re-identification.
    reacquire_s: float = 6.0  # live: how long a lost person waits to be re-acquired
    signature_gate: float = 3.0  # signature distance (in measured spreads) above: not them
    reacquire_speed: float = 1.5  # body heights per second a lost person may have moved
    reacquire_distance: float = 0.25  # body heights of slack on top of that
    shadow_max_s: float = 1.0  # a tracklet overlapping another's person at most this long...
    shadow_distance: float = 0.5  # ...within this many body heights is a second skeleton
    min_tracklet_frames: int = 4  # offline: shorter tracklets that link to nobody are noise
    max_stitch_gap_s: float = 30.0  # offline: tracklets further apart are never linked

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"identity option {f.name} must be a number >= 0, got {value!r}")
        if self.min_hits < 1:
            raise ValueError(f"identity option min_hits must be >= 1, got {self.min_hits}")
        if not 0 < self.swap_gain < 1:
            raise ValueError(f"identity option swap_gain must be in (0, 1), got {self.swap_gain}")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> IdentityConfig:
        """From a settings/TOML table; an unknown key is an error naming the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"unknown identity option(s) {unknown}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(options))

    def replace(self, **changes: Any) -> IdentityConfig:
        return self.from_mapping({**dataclasses.asdict(self), **changes})
