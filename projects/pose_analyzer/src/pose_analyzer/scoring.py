"""Form scoring: each rule of an exercise measured over a rep, faults with messages.

A rule reduces one angle family over the rep's frames (sides combined per
frame with mean/max/min, then max/min/mean/range over time, or the
difference between the sides' peaks for `asymmetry`). A value outside its
limit by more than the tolerance is a fault and costs the rule's penalty;
the score is 100 minus the penalties, floored at 0. An angle that was never
measured in the rep (e.g. valgus from a side view) is not judged.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from pose_analyzer.biomechanics.angles import ANGLE_INDEX
from pose_analyzer.exercises.schema import Exercise, RuleSpec


@dataclass(frozen=True)
class Fault:
    code: str
    message: str
    value: float
    limit: float

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def combine(values: np.ndarray, how: str) -> Any:
    """Per-frame combination over the last axis, NaN-aware (all NaN gives NaN).

    Returns an array, or a numpy scalar for a single frame (1-D input).
    """
    if values.ndim == 1:  # one frame: the live path, kept cheap
        finite = [v for v in values.tolist() if v == v]
        if not finite:
            return np.float64(np.nan)
        if how == "max":
            return np.float64(max(finite))
        if how == "min":
            return np.float64(min(finite))
        return np.float64(sum(finite) / len(finite))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if how == "max":
            return np.nanmax(values, axis=-1)
        if how == "min":
            return np.nanmin(values, axis=-1)
        return np.nanmean(values, axis=-1)


def _reduce(series: np.ndarray, stat: str) -> float:
    finite = series[np.isfinite(series)]
    if finite.size == 0:
        return float("nan")
    if stat == "max":
        return float(finite.max())
    if stat == "min":
        return float(finite.min())
    if stat == "range":
        return float(finite.max() - finite.min())
    return float(finite.mean())


def rule_value(rule: RuleSpec, angles: np.ndarray) -> float:
    """The measured value of `rule` over angle rows (n, NUM_ANGLES); NaN if unmeasured."""
    cols = [ANGLE_INDEX[c] for c in rule.columns()]
    block = angles[:, cols]
    if rule.stat == "asymmetry":
        left, right = _reduce(block[:, 0], "max"), _reduce(block[:, 1], "max")
        return abs(left - right)
    return _reduce(combine(block, rule.combine), rule.stat)


def check_rule(rule: RuleSpec, value: float) -> Fault | None:
    if not np.isfinite(value):
        return None
    if rule.min is not None and value < rule.min - rule.tolerance:
        limit = rule.min
    elif rule.max is not None and value > rule.max + rule.tolerance:
        limit = rule.max
    else:
        return None
    message = rule.message.format(value=value, min=rule.min, max=rule.max, limit=limit)
    return Fault(code=rule.code, message=message, value=value, limit=limit)


@dataclass(frozen=True)
class RepScore:
    score: float
    faults: tuple[Fault, ...]
    metrics: dict[str, float]  # rule metrics that could be measured


def score_rep(exercise: Exercise, angles: np.ndarray) -> RepScore:
    """Score one rep from its per-frame angle rows (n, NUM_ANGLES)."""
    faults: list[Fault] = []
    metrics: dict[str, float] = {}
    penalty = 0.0
    for rule in exercise.rules:
        value = rule_value(rule, angles)
        if np.isfinite(value):
            metrics[rule.metric] = value
        fault = check_rule(rule, value)
        if fault is not None:
            faults.append(fault)
            penalty += rule.penalty
    return RepScore(score=max(0.0, 100.0 - penalty), faults=tuple(faults), metrics=metrics)


class RunningFaults:
    """`active_faults` kept up to date one frame at a time during a rep (live path).

    Holds, per judgeable rule, the running max and min of the per-frame value
    (or of each side, for asymmetry), so a frame costs O(rules), not O(rep).
    """

    def __init__(self, exercise: Exercise) -> None:
        self.rules = [
            r
            for r in exercise.rules
            if r.max is not None and r.stat in ("max", "range", "asymmetry")
        ]
        self._cols = [[ANGLE_INDEX[c] for c in r.columns()] for r in self.rules]
        self.reset()

    def reset(self) -> None:
        n = len(self.rules)
        self._hi = np.full((n, 2), -np.inf)
        self._lo = np.full((n, 2), np.inf)

    def add(self, angles: np.ndarray) -> None:
        for i, (rule, cols) in enumerate(zip(self.rules, self._cols, strict=True)):
            block = angles[cols]
            if rule.stat == "asymmetry":
                for side in (0, 1):
                    v = block[side]
                    if v == v:
                        self._hi[i, side] = max(self._hi[i, side], v)
            else:
                v = float(combine(block, rule.combine))
                if v == v:
                    self._hi[i, 0] = max(self._hi[i, 0], v)
                    self._lo[i, 0] = min(self._lo[i, 0], v)

    def faults(self) -> list[Fault]:
        out = []
        for i, rule in enumerate(self.rules):
            hi, lo = self._hi[i], self._lo[i]
            if rule.stat == "asymmetry":
                value = abs(hi[0] - hi[1]) if np.isfinite(hi).all() else np.nan
            elif rule.stat == "range":
                value = hi[0] - lo[0] if np.isfinite(hi[0]) else np.nan
            else:
                value = hi[0]
            assert rule.max is not None
            if np.isfinite(value) and value > rule.max + rule.tolerance:
                message = rule.message.format(
                    value=value, min=rule.min, max=rule.max, limit=rule.max
                )
                out.append(Fault(rule.code, message, float(value), rule.max))
        return out


def active_faults(exercise: Exercise, angles: np.ndarray) -> list[Fault]:
    """Faults already certain during a rep in progress: limits exceeded so far.

    Only upper limits on growing statistics (max, range, asymmetry) can be
    judged before the rep ends; a depth requirement cannot.
    """
    if len(angles) == 0:
        return []
    out = []
    for rule in exercise.rules:
        if rule.max is None or rule.stat not in ("max", "range", "asymmetry"):
            continue
        value = rule_value(rule, angles)
        if np.isfinite(value) and value > rule.max + rule.tolerance:
            message = rule.message.format(value=value, min=rule.min, max=rule.max, limit=rule.max)
            out.append(Fault(rule.code, message, value, rule.max))
    return out
