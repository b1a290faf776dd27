"""A live rig: fused 3D people plus their reps and form, one instant at a time.

`LiveRig.step(t, {view: frame})` is what a service calls per instant: the
`RigFuser` fuses the views that arrived in time, each 3D person's angles are
smoothed causally (One-Euro, as a live 2D stream is) and fed to that person's
live engine, so reps and faults are counted once per person for the rig.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pose_analyzer.biomechanics import NUM_ANGLES, OneEuroFilter
from pose_analyzer.engine import EngineConfig, PersonAnalyzer, drive_values
from pose_analyzer.exercises.schema import Exercise
from pose_analyzer.keypoints import FramePoses
from pose_analyzer.multiview.engine import live_person_analyzer
from pose_analyzer.multiview.rig import FusedInstant, FusedPerson, RigFuser
from pose_analyzer.report import RepReport


@dataclass
class _Person:
    analyzer: PersonAnalyzer
    smoother: OneEuroFilter


@dataclass
class LivePerson:
    fused: FusedPerson
    angles: np.ndarray  # smoothed 3D angles
    rep_count: int
    new_rep: RepReport | None
    active_faults: list[Any]

    def to_dict(self) -> dict[str, Any]:
        d = self.fused.to_dict()
        d["angles"] = {
            k: (round(float(v), 2) if np.isfinite(v) else None)
            for k, v in zip(d["angles"], self.angles, strict=True)
        }
        d["rep_count"] = self.rep_count
        d["new_rep"] = None if self.new_rep is None else self.new_rep.to_dict()
        d["active_faults"] = [f.to_dict() for f in self.active_faults]
        return d


@dataclass
class LiveStep:
    instant: FusedInstant
    people: list[LivePerson] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = self.instant.to_dict()
        d["people"] = [p.to_dict() for p in self.people]
        return d


class LiveRig:
    def __init__(
        self, fuser: RigFuser, exercise: Exercise, config: EngineConfig | None = None
    ) -> None:
        self.fuser = fuser
        self.exercise = exercise
        self.config = config or EngineConfig()
        self._people: dict[int, _Person] = {}

    def rep_count(self, track_id: int) -> int:
        p = self._people.get(track_id)
        return 0 if p is None else p.analyzer.counter.count

    def step(self, t: float, views: Mapping[str, FramePoses]) -> LiveStep:
        instant = self.fuser.fuse(t, views)
        out = LiveStep(instant)
        for fused in instant.people:
            person = self._people.get(fused.track_id)
            if person is None:
                person = _Person(
                    live_person_analyzer(self.exercise, fused.track_id),
                    OneEuroFilter(self.config.one_euro_min_cutoff, self.config.one_euro_beta),
                )
                self._people[fused.track_id] = person
            smooth, velocity = person.smoother(fused.angles, t)
            analyzer = person.analyzer
            analyzer.frames_seen += 1
            drive_velocity = float(drive_values(self.exercise, velocity))
            new_rep = analyzer.step(t, np.asarray(smooth, dtype=np.float64), drive_velocity)
            out.people.append(
                LivePerson(
                    fused=fused,
                    angles=np.asarray(smooth, dtype=np.float64).reshape(NUM_ANGLES),
                    rep_count=analyzer.counter.count,
                    new_rep=new_rep,
                    active_faults=analyzer.in_progress_faults(),
                )
            )
        return out

    @property
    def track_ids(self) -> list[int]:
        return list(self._people)

    def analyzer(self, track_id: int) -> PersonAnalyzer | None:
        p = self._people.get(track_id)
        return None if p is None else p.analyzer

    def finish_people(self) -> list[tuple[int, RepReport]]:
        """The rep each person was still in when the rig ended, with the person's track id."""
        return [
            (tid, r) for tid, p in self._people.items() if (r := p.analyzer.finish()) is not None
        ]

    def finish(self) -> list[RepReport]:
        return [r for p in self._people.values() if (r := p.analyzer.finish()) is not None]
