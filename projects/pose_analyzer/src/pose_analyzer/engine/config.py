"""The engine's knobs, one typed config for every driver (CLI, upload job, live stream)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EngineConfig:
    min_confidence: float = 0.5  # keypoints below this are not measured
    cutoff_hz: float = 6.0  # offline Butterworth low-pass
    filter_order: int = 4
    max_interp_gap_s: float = 0.25  # offline only: longer gaps stay missing
    one_euro_min_cutoff: float = 1.5  # live
    one_euro_beta: float = 0.01
    calibrate: bool | None = None  # None: as each exercise definition says
    # A person seen for less than this, who did no rep, is a detection glitch, not a
    # person: left out of the report (a passer-by crossing the frame takes seconds).
    min_person_s: float = 0.5
    forget_after_s: float = 60.0  # live: bystanders unseen this long are forgotten

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown engine option(s) {unknown}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)
