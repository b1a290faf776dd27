"""Repetition counting: one hysteresis state machine per tracked person.

The drive value (an angle, or the mean/max/min of both sides) is fed one sample
at a time, live or offline alike. A rep starts at rest, goes past `down_deg`
(its extreme phase), comes back past `up_deg`, and ends once the angle has
settled at rest again, so start and end times mark the real movement and not
the threshold crossings. Missing samples are skipped; a gap longer than
`max_gap_s` inside a rep, a rep longer than `max_rep_s`, or one shorter than
`min_rep_s` is dropped, never counted.

A rep the state machine found is then checked before it counts: the drive
angle must have moved `min_rom_deg`, and the caller's `accept` hook (the
engine's: the other angles of the definition moved, the athlete stayed in
place) may refuse it with a reason; refused reps are kept in `rejected`.

Calibration (on unless the definition says `calibrate = false`): a person whose
movement keeps turning back short of `down_deg` has their own range. After two
such excursions (each lasting at least `min_rep_s` and peaking between
`calibrate_floor_deg` and `down_deg`), the down threshold moves to 90% of the
way from `up_deg` to their median peak. It only ever lowers the threshold
toward what that person does, never below the floor the definition allows, and
it is causal, so live and offline counting agree.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pose_analyzer.exercises.schema import DriveSpec

CALIBRATION_EXCURSIONS = 2  # short excursions seen before the threshold adapts
CALIBRATION_FRACTION = 0.9  # of the way from up_deg to the median short peak
HOLD_S = 0.3  # at rest and no lower for this long after returning: the rep is over
SETTLED_DEG = 0.5  # a new low by less than this does not restart that wait


class Phase(enum.Enum):
    WAIT = "wait"  # not yet seen at rest (e.g. the video starts mid-rep)
    REST = "rest"
    EXTREME = "extreme"  # past down_deg
    RETURN = "return"  # back past up_deg, settling


@dataclass
class Rep:
    """A counted repetition. Angles are in the exercise's own sign (as measured)."""

    index: int
    start_s: float
    end_s: float
    extreme_s: float
    min_deg: float
    max_deg: float
    tempo_down_s: float  # rest -> reaching the extreme
    hold_s: float  # time spent within settle_deg of the extreme
    tempo_up_s: float  # leaving the extreme -> rest
    peak_velocity_deg_s: float
    sample_t: np.ndarray  # times of the samples inside [start_s, end_s]
    samples: np.ndarray  # (n, ...) whatever per-frame payload was fed (angle vectors)

    @property
    def rom_deg(self) -> float:
        return self.max_deg - self.min_deg

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def metrics(self) -> dict[str, float]:
        return {
            "rom_deg": self.rom_deg,
            "min_deg": self.min_deg,
            "max_deg": self.max_deg,
            "duration_s": self.duration_s,
            "tempo_down_s": self.tempo_down_s,
            "hold_s": self.hold_s,
            "tempo_up_s": self.tempo_up_s,
            "peak_velocity_deg_s": self.peak_velocity_deg_s,
        }


@dataclass
class _Sample:
    t: float
    v: float  # signed so that the rep always goes up: v = sign * value
    speed: float
    payload: np.ndarray


@dataclass(frozen=True)
class Rejected:
    """A movement the state machine found that did not count, and why."""

    start_s: float
    end_s: float
    reason: str


Accept = Callable[[Rep], str | None]  # None: the rep counts; else the reason it does not


class RepCounter:
    """Counts reps of one person from (t, drive value, drive velocity, payload) samples."""

    def __init__(
        self,
        drive: DriveSpec,
        hold_s: float = HOLD_S,
        accept: Accept | None = None,
        calibrate: bool | None = None,
    ) -> None:
        self.drive = drive
        self.sign = 1.0 if drive.direction == "increase" else -1.0
        self.defined_down = self.sign * drive.down_deg
        self.down = self.defined_down
        self.up = self.sign * drive.up_deg
        self.floor = self.sign * drive.floor_deg
        self.calibrate = drive.calibrate if calibrate is None else calibrate
        self.hold_s = hold_s
        self.accept = accept
        self.rejected: list[Rejected] = []
        self._short_peaks: deque[float] = deque(maxlen=5)
        self._exc_peak = -np.inf
        self._exc_t0: float | None = None
        self.count = 0
        self.phase = Phase.WAIT
        self._buf: deque[_Sample] = deque()
        self._start = 0  # buffer index of the rep's start
        self._last_valid_t = -np.inf
        self._ret_min = np.inf
        self._ret_min_t = 0.0

    @property
    def in_rep(self) -> bool:
        return self.phase in (Phase.EXTREME, Phase.RETURN)

    def current_samples(self) -> list[np.ndarray]:
        """Payloads of the rep in progress so far (empty at rest)."""
        if not self.in_rep:
            return []
        return [s.payload for s in list(self._buf)[self._start :]]

    def update(
        self, t: float, value: float, velocity: float = np.nan, payload: np.ndarray | None = None
    ) -> Rep | None:
        """Feed one sample; returns the rep that this sample completed, if any."""
        if not np.isfinite(value):
            if self.in_rep and t - self._last_valid_t > self.drive.max_gap_s:
                self._abort()
            return None
        if self._buf and t - self._last_valid_t > self.drive.max_gap_s:
            # Too long unseen: whatever was going on (even the start of a rep) is unknown.
            self._abort()
        self._last_valid_t = t
        v = self.sign * float(value)
        speed = abs(float(velocity)) if np.isfinite(velocity) else np.nan
        self._buf.append(_Sample(t, v, speed, np.asarray(payload if payload is not None else v)))
        done: Rep | None = None
        if self.phase is Phase.RETURN:
            if v < self._ret_min - SETTLED_DEG:
                self._ret_min, self._ret_min_t = v, t
            else:
                # Creeping lower (a causal filter converging) still counts as at rest.
                self._ret_min = min(self._ret_min, v)
                if v > self._ret_min + self.drive.settle_deg or t - self._ret_min_t >= self.hold_s:
                    done = self._finish_rep()
        if self.phase is Phase.WAIT:
            if v <= self.up:
                self.phase = Phase.REST
            self._trim(t)
        elif self.phase is Phase.REST:
            if v >= self.down:
                self._exc_t0 = None
                self._begin_rep()
            else:
                self._watch_excursion(t, v)
                self._trim(t)
        elif self.phase is Phase.EXTREME:
            if t - self._buf[self._start].t > self.drive.max_rep_s:
                self._abort()
            elif v <= self.up:
                self.phase = Phase.RETURN
                self._ret_min, self._ret_min_t = v, t
        return done

    def finish(self) -> Rep | None:
        """End of stream: a rep that has returned to rest is completed, anything else dropped."""
        if self.phase is Phase.RETURN:
            return self._finish_rep()
        return None

    @property
    def down_deg(self) -> float:
        """The down threshold in use (the definition's, or the calibrated one)."""
        return self.sign * self.down

    def _watch_excursion(self, t: float, v: float) -> None:
        """At rest, an excursion past up_deg that turns back short of down: calibration."""
        if not self.calibrate:
            return
        if v > self.up:
            if self._exc_t0 is None:
                self._exc_t0, self._exc_peak = t, v
            self._exc_peak = max(self._exc_peak, v)
            return
        if self._exc_t0 is None:
            return
        lasted = t - self._exc_t0
        peak, self._exc_t0 = self._exc_peak, None
        if lasted < self.drive.min_rep_s or peak < self.floor:
            return  # a twitch, or a movement too small for this exercise at all
        self._short_peaks.append(peak)
        if len(self._short_peaks) >= CALIBRATION_EXCURSIONS:
            target = self.up + CALIBRATION_FRACTION * (
                float(np.median(self._short_peaks)) - self.up
            )
            self.down = min(self.defined_down, max(self.floor, target))

    def _trim(self, t: float) -> None:
        horizon = t - self.drive.max_rep_s
        while len(self._buf) > 2 and self._buf[0].t < horizon:
            self._buf.popleft()

    def _begin_rep(self) -> None:
        rest = [i for i, s in enumerate(self._buf) if s.v <= self.up]
        if not rest:  # cannot happen after REST, kept for safety
            self._abort()
            return
        floor = min(self._buf[i].v for i in rest)
        last_rest = rest[-1]
        start = last_rest
        for i in range(last_rest, -1, -1):
            if self._buf[i].v <= floor + self.drive.settle_deg:
                start = i
                break
        for _ in range(start):
            self._buf.popleft()
        self._start = 0
        self.phase = Phase.EXTREME

    def _abort(self) -> None:
        self._buf.clear()
        self._start = 0
        self.phase = Phase.WAIT

    def _finish_rep(self) -> Rep | None:
        samples = list(self._buf)
        v = np.array([s.v for s in samples])
        t = np.array([s.t for s in samples])
        ext = int(np.argmax(v))
        settle = self.drive.settle_deg
        # End: first sample after the extreme that is settled at the final rest level.
        after = np.flatnonzero(v[ext:] <= self._ret_min + settle)
        end = ext + int(after[0]) if after.size else len(v) - 1
        near_ext = np.flatnonzero(v[: end + 1] >= v[ext] - settle)
        first_ext, last_ext = int(near_ext[0]), int(near_ext[-1])
        rep_v, rep_t = v[: end + 1], t[: end + 1]
        leftover = samples[end:]
        self._buf = deque(leftover)
        self._start = 0
        self.phase = Phase.REST
        duration = rep_t[-1] - rep_t[0]
        if duration < self.drive.min_rep_s:
            return None
        speeds = np.array([s.speed for s in samples[: end + 1]])
        peak = float(np.nanmax(speeds)) if np.isfinite(speeds).any() else float("nan")
        values = self.sign * rep_v
        rep = Rep(
            index=self.count + 1,
            start_s=float(rep_t[0]),
            end_s=float(rep_t[-1]),
            extreme_s=float(rep_t[ext]),
            min_deg=float(np.min(values)),
            max_deg=float(np.max(values)),
            tempo_down_s=float(rep_t[first_ext] - rep_t[0]),
            hold_s=float(rep_t[last_ext] - rep_t[first_ext]),
            tempo_up_s=float(rep_t[-1] - rep_t[last_ext]),
            peak_velocity_deg_s=peak,
            sample_t=rep_t,
            samples=np.stack([s.payload for s in samples[: end + 1]]),
        )
        reason = None
        if rep.rom_deg < self.drive.min_rom_deg:
            reason = (
                f"moved {rep.rom_deg:.0f} deg, less than the {self.drive.min_rom_deg:g} deg "
                "range of motion the exercise needs"
            )
        elif self.accept is not None:
            reason = self.accept(rep)
        if reason is not None:
            self.rejected.append(Rejected(rep.start_s, rep.end_s, reason))
            return None
        self.count += 1
        return rep
