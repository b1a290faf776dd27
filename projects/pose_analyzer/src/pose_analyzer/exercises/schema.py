"""Typed exercise definitions, validated from TOML data.

Every table maps onto a frozen dataclass; an unknown key, a missing required
key, a wrong type or an inconsistent threshold raises ExerciseDefinitionError
naming the file and the field (`squat.toml: rules[2].tolerence: unknown key`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pose_analyzer.biomechanics.angles import ANGLE_FAMILIES, SIDES, angle_name

COMBINES = ("mean", "max", "min")
STATS = ("max", "min", "mean", "range", "asymmetry")
DIRECTIONS = ("increase", "decrease")
VIEWS = ("side", "front", "any")


class ExerciseDefinitionError(ValueError):
    """An exercise definition file is invalid; the message names the file and field."""


@dataclass(frozen=True)
class DriveSpec:
    """The angle whose excursion makes a repetition, and the state machine's thresholds.

    With direction "increase" a rep starts at rest (angle below `up_deg`), reaches
    its extreme beyond `down_deg`, and ends back below `up_deg`; the gap between
    the two thresholds is the hysteresis. "decrease" mirrors it.
    """

    angle: str
    down_deg: float
    up_deg: float
    sides: tuple[str, ...] = ("left", "right")
    combine: str = "mean"
    direction: str = "increase"
    min_rep_s: float = 0.5
    max_rep_s: float = 10.0
    max_gap_s: float = 0.5  # missing drive angle for longer than this aborts a rep
    settle_deg: float = 3.0  # within this of rest counts as at rest (rep start/end times)

    def columns(self) -> tuple[str, ...]:
        return _columns(self.angle, self.sides)


@dataclass(frozen=True)
class RuleSpec:
    """One form rule: a statistic of an angle over the rep, with limits and a fault code.

    A fault is raised when the value is below `min - tolerance` or above
    `max + tolerance`. `message` is formatted with value, min, max and limit.
    """

    code: str
    angle: str
    stat: str
    message: str
    metric: str
    sides: tuple[str, ...] = ("left", "right")
    combine: str = "mean"
    min: float | None = None
    max: float | None = None
    tolerance: float = 0.0
    penalty: float = 20.0

    def columns(self) -> tuple[str, ...]:
        return _columns(self.angle, self.sides)


@dataclass(frozen=True)
class Exercise:
    name: str
    drive: DriveSpec
    description: str = ""
    view: str = "any"
    rules: tuple[RuleSpec, ...] = ()
    source: Path | None = field(default=None, compare=False)


def _columns(family: str, sides: tuple[str, ...]) -> tuple[str, ...]:
    if not ANGLE_FAMILIES[family]:
        return (angle_name(family, None),)
    return tuple(angle_name(family, s) for s in sides)


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, annotation)


def _build(
    cls: type, data: Any, where: str, skip: tuple[str, ...] = (), raw: tuple[str, ...] = ()
) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ExerciseDefinitionError(f"{where}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    known = sorted(fields)
    for key in data:
        if key not in fields:
            raise ExerciseDefinitionError(
                f"{where}.{key}: unknown key (known keys: {', '.join(known)})"
            )
    out: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ExerciseDefinitionError(f"{where}.{name}: required key is missing")
            continue
        value = data[name]
        if name in raw:
            out[name] = value
            continue
        if not _type_ok(value, hints[name]):
            raise ExerciseDefinitionError(
                f"{where}.{name}: expected {_describe(hints[name])}, got {value!r}"
            )
        out[name] = tuple(value) if isinstance(value, list) else value
    return out


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is tuple:
        return "a list of strings"
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args:
        return _describe(args[0])
    return {float: "a number", str: "a string"}.get(annotation, str(annotation))


def _check_choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ExerciseDefinitionError(f"{where}: {value!r} is not one of {', '.join(choices)}")


def _check_angle(where: str, family: str, sides: tuple[str, ...]) -> None:
    if family not in ANGLE_FAMILIES:
        raise ExerciseDefinitionError(
            f"{where}.angle: unknown angle {family!r} (known: {', '.join(ANGLE_FAMILIES)})"
        )
    if ANGLE_FAMILIES[family]:
        if not sides:
            raise ExerciseDefinitionError(f"{where}.sides: {family} needs at least one side")
        for s in sides:
            _check_choice(f"{where}.sides", s, SIDES)


def exercise_from_dict(data: Any, source: Path | None = None) -> Exercise:
    """Validate a parsed TOML document into an Exercise (errors name file and field)."""
    where = source.name if source is not None else "<exercise>"
    top = _build(Exercise, data, where, skip=("source",), raw=("drive", "rules"))
    drive_kw = _build(DriveSpec, top.pop("drive"), f"{where}: drive")
    _check_angle(f"{where}: drive", drive_kw["angle"], drive_kw.get("sides", ("left", "right")))
    drive = DriveSpec(**drive_kw)
    _check_choice(f"{where}: drive.combine", drive.combine, COMBINES)
    _check_choice(f"{where}: drive.direction", drive.direction, DIRECTIONS)
    sign = 1.0 if drive.direction == "increase" else -1.0
    if sign * (drive.down_deg - drive.up_deg) <= 0:
        raise ExerciseDefinitionError(
            f"{where}: drive.down_deg ({drive.down_deg}) must be "
            f"{'above' if sign > 0 else 'below'} drive.up_deg ({drive.up_deg}) "
            f"for direction {drive.direction!r} (that gap is the hysteresis)"
        )
    if not 0 < drive.min_rep_s < drive.max_rep_s:
        raise ExerciseDefinitionError(f"{where}: drive needs 0 < min_rep_s < max_rep_s")
    raw_rules = top.pop("rules", ())
    if not isinstance(raw_rules, (list, tuple)):
        raise ExerciseDefinitionError(f"{where}.rules: expected an array of tables [[rules]]")
    rules = []
    codes: set[str] = set()
    for i, raw in enumerate(raw_rules):
        rw = f"{where}: rules[{i}]"
        kw = _build(RuleSpec, raw, rw)
        _check_angle(rw, kw["angle"], kw.get("sides", ("left", "right")))
        rule = RuleSpec(**kw)
        _check_choice(f"{rw}.stat", rule.stat, STATS)
        _check_choice(f"{rw}.combine", rule.combine, COMBINES)
        if rule.min is None and rule.max is None:
            raise ExerciseDefinitionError(f"{rw}: needs min or max (or both)")
        if rule.stat == "asymmetry" and len(rule.sides) != 2:
            raise ExerciseDefinitionError(f"{rw}.sides: asymmetry compares two sides")
        if rule.code in codes:
            raise ExerciseDefinitionError(f"{rw}.code: duplicate fault code {rule.code!r}")
        codes.add(rule.code)
        try:
            rule.message.format(value=0.0, min=0.0, max=0.0, limit=0.0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ExerciseDefinitionError(
                f"{rw}.message: bad placeholder ({exc}); use {{value}}, {{min}}, {{max}}, {{limit}}"
            ) from None
        rules.append(rule)
    exercise = Exercise(drive=drive, rules=tuple(rules), source=source, **top)
    _check_choice(f"{where}.view", exercise.view, VIEWS)
    return exercise
