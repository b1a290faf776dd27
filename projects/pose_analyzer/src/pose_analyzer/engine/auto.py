"""`--exercise auto`: count the dominant repeated movement of a person, with no definition.

For each angle (each side, and both sides averaged) over the frames where the
person stays in place, the movement is its robust range (5th to 95th
percentile) and its cycles are counted with hysteresis at 35% and 65% of that
range. The dominant repeated movement is the angle with the largest range that
completes at least two similar cycles (intervals within a factor of two of
their median). Its rest side is where the angle dwells (the median's side),
which gives the direction. A drive definition is then built from that
person's own range and counted by the same counter as any exercise, so the
in-place check and the rep boundaries are the usual ones.

A repetition repeats: each counted movement's whole-body signature (the range
of every angle within it) is compared with the typical one (the per-angle
median over all of them); one that differs by more than SIGNATURE_TOL_DEG on
average is another movement that happened to cross the same thresholds (a
crouch after jumping jacks), and does not count.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from pose_analyzer.biomechanics.angles import ANGLE_FAMILIES, ANGLE_INDEX, SIDES, angle_name
from pose_analyzer.exercises.schema import DriveSpec, Exercise
from pose_analyzer.reps import Rep

AUTO = "auto"
MIN_RANGE_DEG = 30.0  # smaller movements are posture noise, not exercise
MIN_CYCLES = 2
LOW, HIGH = 0.35, 0.65  # hysteresis band, fractions of the person's range
IN_PLACE_WINDOW_S = 3.0
IN_PLACE_SPEED = 0.1  # body heights per second: slower than anyone walks
MAX_GAP_CV = 0.5  # with 4+ cycles, their intervals must be this regular
SIGNATURE_TOL_DEG = 20.0


@dataclass(frozen=True)
class AutoChoice:
    exercise: Exercise | None
    angle: str | None
    period_s: float | None
    reason: str | None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "angle": self.angle,
            "period_s": None if self.period_s is None else round(self.period_s, 3),
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def placeholder() -> Exercise:
    """The stand-in definition `get_exercise("auto")` returns; each person gets their own."""
    return Exercise(
        name=AUTO,
        description="the dominant repeated movement of each athlete, no definition needed",
        drive=DriveSpec(angle="knee_flexion", down_deg=60.0, up_deg=30.0),
    )


def is_auto(exercise: Exercise) -> bool:
    return exercise.name == AUTO and exercise.source is None


def in_place(t: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Frames where the person is not going anywhere.

    The hip centre is averaged over IN_PLACE_WINDOW_S (longer than any rep, so
    the up-and-down of a squat or a jump averages out while walking does not);
    where that average drifts faster than IN_PLACE_SPEED body heights per
    second, the person is travelling.
    """
    n = len(t)
    ok = np.isfinite(anchors).all(axis=1)
    if ok.sum() < 2:
        return np.ones(n, dtype=bool)
    filled = np.stack([np.interp(t, t[ok], anchors[ok, k]) for k in range(3)], axis=1)
    half = IN_PLACE_WINDOW_S / 2
    lo = np.searchsorted(t, t - half)
    hi = np.searchsorted(t, t + half, side="right")
    csum = np.concatenate([np.zeros((1, 3)), np.cumsum(filled, axis=0)])
    mean = (csum[hi] - csum[lo]) / (hi - lo)[:, None]
    speed = np.hypot(*np.gradient(mean[:, :2], t, axis=0).T) if n > 1 else np.zeros(n)
    height = float(np.median(filled[:, 2]))
    return speed <= IN_PLACE_SPEED * max(height, 1.0)


def _cycles(x: np.ndarray, t: np.ndarray, lo: float, hi: float) -> list[float]:
    """Times at which x rises past hi after having been below lo (one per cycle)."""
    starts = []
    armed = False
    for v, tv in zip(x.tolist(), t.tolist(), strict=True):
        if v != v:
            continue
        if v <= lo:
            armed = True
        elif v >= hi and armed:
            starts.append(tv)
            armed = False
    return starts


def _candidates() -> list[tuple[str, tuple[str, ...]]]:
    out: list[tuple[str, tuple[str, ...]]] = []
    for family, sided in ANGLE_FAMILIES.items():
        if family == "knee_valgus":
            continue  # a deviation, not a movement anyone repeats on purpose
        if sided:
            out.append((family, SIDES))
            out.extend((family, (s,)) for s in SIDES)
        else:
            out.append((family, ()))
    return out


def choose_drive(t: np.ndarray, angles: np.ndarray, anchors: np.ndarray) -> AutoChoice:
    """The dominant repeated movement of one person: angles (F, NUM_ANGLES), anchors (F, 3)."""
    mask = in_place(t, anchors)
    if mask.sum() < 4:
        return AutoChoice(None, None, None, "the person never stayed in place")
    best: tuple[float, str, tuple[str, ...], float, float, float, str] | None = None
    largest = (0.0, "", 0)
    for family, sides in _candidates():
        cols = [ANGLE_INDEX[angle_name(family, s or None)] for s in (sides or ("",))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            series = np.nanmean(angles[:, cols], axis=1) if len(cols) > 1 else angles[:, cols[0]]
        series = np.where(mask, series, np.nan)
        finite = series[np.isfinite(series)]
        if finite.size < max(4, 0.3 * mask.sum()):
            continue
        p5, p50, p95 = np.percentile(finite, [5, 50, 95])
        span = float(p95 - p5)
        rising = p50 - p5 <= p95 - p50  # rests low, moves up
        signed = series if rising else -series
        base = p5 if rising else -p95
        starts = _cycles(signed, t, base + LOW * span, base + HIGH * span)
        label = family if len(sides) != 1 else angle_name(family, sides[0])
        if span > largest[0]:
            largest = (span, label, len(starts))
        if span < MIN_RANGE_DEG or len(starts) < MIN_CYCLES:
            continue
        gaps = np.diff(starts)
        period = float(np.median(gaps))
        if len(gaps) >= 3 and float(np.std(gaps)) > MAX_GAP_CV * float(np.mean(gaps)):
            continue  # jitter crossing the band at random, not a rhythm
        # Prefer both sides together unless one side alone moves clearly more.
        score = span * (1.0 if len(sides) != 1 else 0.8)
        if best is None or score > best[0]:
            direction = "increase" if rising else "decrease"
            best = (score, family, sides, span, float(p5 if rising else p95), period, direction)
    if best is None:
        span, label, n = largest
        if not label:
            return AutoChoice(None, None, None, "no angle was measured while in place")
        return AutoChoice(
            None,
            None,
            None,
            f"nothing repeats: the largest movement in place was {label} over {span:.0f} deg "
            f"with {n} cycle(s); a repeated movement needs {MIN_CYCLES} cycles of at least "
            f"{MIN_RANGE_DEG:g} deg",
        )
    _, family, sides, span, rest, period, direction = best
    sign = 1.0 if direction == "increase" else -1.0
    drive = DriveSpec(
        angle=family,
        sides=sides or ("left", "right"),
        combine="mean",
        direction=direction,
        down_deg=rest + sign * HIGH * span,
        up_deg=rest + sign * LOW * span,
        min_rep_s=max(0.25, 0.3 * period),
        max_rep_s=max(2.0, 3.0 * period),
        calibrate=False,  # the thresholds already come from this person's range
    )
    label = family if len(sides) != 1 else angle_name(family, sides[0])
    exercise = Exercise(name=AUTO, drive=drive, description=f"auto: {label}")
    return AutoChoice(exercise, label, period, None)


def signature(samples: np.ndarray) -> np.ndarray:
    """Range of every angle within one rep (NaN where unmeasured)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(samples, axis=0) - np.nanmin(samples, axis=0)


class Screen:
    """Refuses reps whose whole-body signature is not the typical one (see module doc)."""

    def __init__(self, signatures: list[np.ndarray]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self.typical = np.nanmedian(np.stack(signatures), axis=0) if signatures else None

    def __call__(self, rep: Rep) -> str | None:
        if self.typical is None:
            return None
        diff = np.abs(signature(rep.samples) - self.typical)
        diff = diff[np.isfinite(diff)]
        if diff.size and float(diff.mean()) > SIGNATURE_TOL_DEG:
            return (
                f"a different movement: its angles differ from the typical rep's by "
                f"{float(diff.mean()):.0f} deg on average (at most {SIGNATURE_TOL_DEG:g})"
            )
        return None


def period_of(starts: list[float]) -> float | None:
    return float(np.median(np.diff(starts))) if len(starts) >= 2 else None
