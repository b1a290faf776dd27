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
# What each angle family can measure at all, in degrees: a condition outside it can never hold.
ANGLE_RANGES: dict[str, tuple[float, float]] = {
    "knee_flexion": (0.0, 180.0),
    "hip_flexion": (0.0, 180.0),
    "elbow_flexion": (0.0, 180.0),
    "shoulder_elevation": (0.0, 180.0),
    "ankle_dorsiflexion": (-90.0, 90.0),
    "trunk_lean": (0.0, 180.0),
    "knee_valgus": (-90.0, 90.0),
}
STATS = ("max", "min", "mean", "range", "asymmetry")
DIRECTIONS = ("increase", "decrease")
VIEWS = ("side", "front", "any")


class ExerciseDefinitionError(ValueError):
    """An exercise definition file is invalid; the message names the file and field."""


@dataclass(frozen=True)
class ConditionSpec:
    """A second angle a rep must also move (a jumping jack is arms AND legs).

    Checked over the samples of each rep the drive angle found: the condition
    angle must move through at least `min_rom_deg` (its range within the rep:
    robust to a noisy first sample), reach `reach_deg` if given (for direction
    "decrease": go down to it), and never pass `max_deg` if given (for
    "decrease": never go below it).
    """

    angle: str
    sides: tuple[str, ...] = ("left", "right")
    combine: str = "mean"
    direction: str = "increase"
    min_rom_deg: float = 0.0
    reach_deg: float | None = None
    max_deg: float | None = None

    def columns(self) -> tuple[str, ...]:
        return _columns(self.angle, self.sides)


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
    min_rom_deg: float = 0.0  # a rep whose drive angle moves less than this is not counted
    # A rep counts only if the hip centre ends where it started: at most this many body
    # heights apart (an exercise done in place returns there; a walker does not).
    max_travel: float = 0.25
    # Per-athlete calibration: lower down_deg toward the athlete's own peaks, never below
    # calibrate_floor_deg (default: halfway between up_deg and down_deg).
    calibrate: bool = True
    calibrate_floor_deg: float | None = None
    also: tuple[ConditionSpec, ...] = ()

    @property
    def floor_deg(self) -> float:
        if self.calibrate_floor_deg is not None:
            return self.calibrate_floor_deg
        return (self.up_deg + self.down_deg) / 2.0

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
    if annotation is bool:
        return isinstance(value, bool)
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
    return {float: "a number", str: "a string", bool: "true or false"}.get(
        annotation, str(annotation)
    )


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


def _conditions(raw: Any, where: str) -> tuple[ConditionSpec, ...]:
    if not isinstance(raw, (list, tuple)):
        raise ExerciseDefinitionError(f"{where}: expected an array of tables [[drive.also]]")
    out = []
    for i, item in enumerate(raw):
        cw = f"{where}[{i}]"
        kw = _build(ConditionSpec, item, cw)
        _check_angle(cw, kw["angle"], kw.get("sides", ("left", "right")))
        cond = ConditionSpec(**kw)
        _check_choice(f"{cw}.combine", cond.combine, COMBINES)
        _check_choice(f"{cw}.direction", cond.direction, DIRECTIONS)
        lo, hi = ANGLE_RANGES[cond.angle]
        if cond.min_rom_deg <= 0 and cond.reach_deg is None and cond.max_deg is None:
            raise ExerciseDefinitionError(f"{cw}: needs min_rom_deg, reach_deg or max_deg")
        if not 0 <= cond.min_rom_deg <= hi - lo:
            raise ExerciseDefinitionError(
                f"{cw}.min_rom_deg: {cond.min_rom_deg:g} deg can never hold: {cond.angle} "
                f"spans {lo:g}..{hi:g} deg"
            )
        for name in ("reach_deg", "max_deg"):
            value = getattr(cond, name)
            if value is not None and not lo <= value <= hi:
                raise ExerciseDefinitionError(
                    f"{cw}.{name}: {value:g} deg is outside what {cond.angle} can measure "
                    f"({lo:g}..{hi:g} deg)"
                )
        if cond.reach_deg is not None and cond.max_deg is not None:
            sign = 1.0 if cond.direction == "increase" else -1.0
            if sign * (cond.reach_deg - cond.max_deg) > 0:
                raise ExerciseDefinitionError(
                    f"{cw}.reach_deg: {cond.reach_deg:g} deg can never be reached while "
                    f"max_deg keeps {cond.angle} {'below' if sign > 0 else 'above'} "
                    f"{cond.max_deg:g} deg"
                )
        if cond.max_deg is not None and cond.min_rom_deg > 0:
            room = (cond.max_deg - lo) if cond.direction == "increase" else (hi - cond.max_deg)
            if cond.min_rom_deg > room:
                raise ExerciseDefinitionError(
                    f"{cw}.min_rom_deg: {cond.min_rom_deg:g} deg can never hold below "
                    f"max_deg {cond.max_deg:g} ({cond.angle} starts at {lo:g} at least)"
                )
        out.append(cond)
    return tuple(out)


def _check_drive_range(where: str, drive: DriveSpec) -> None:
    lo, hi = ANGLE_RANGES[drive.angle]
    for name in ("down_deg", "up_deg"):
        value = getattr(drive, name)
        if not lo <= value <= hi:
            raise ExerciseDefinitionError(
                f"{where}: drive.{name}: {value:g} deg is outside what {drive.angle} can "
                f"measure ({lo:g}..{hi:g} deg)"
            )
    if not 0 <= drive.min_rom_deg <= hi - lo:
        raise ExerciseDefinitionError(
            f"{where}: drive.min_rom_deg: {drive.min_rom_deg:g} deg can never hold: "
            f"{drive.angle} spans {lo:g}..{hi:g} deg"
        )
    if drive.max_travel <= 0:
        raise ExerciseDefinitionError(f"{where}: drive.max_travel must be above 0 (body heights)")
    floor = drive.floor_deg
    sign = 1.0 if drive.direction == "increase" else -1.0
    if sign * (floor - drive.up_deg) <= 0 or sign * (floor - drive.down_deg) > 0:
        raise ExerciseDefinitionError(
            f"{where}: drive.calibrate_floor_deg: {floor:g} must lie between up_deg "
            f"({drive.up_deg:g}) and down_deg ({drive.down_deg:g})"
        )
    for i, cond in enumerate(drive.also):
        if cond.columns() != drive.columns() or cond.max_deg is None:
            continue
        csign = 1.0 if cond.direction == "increase" else -1.0
        if csign == sign and sign * (drive.down_deg - cond.max_deg) > 0:
            raise ExerciseDefinitionError(
                f"{where}: drive.also[{i}].max_deg: {cond.max_deg:g} deg forbids the drive "
                f"angle's own down_deg ({drive.down_deg:g}): no rep could ever count"
            )


def exercise_from_dict(data: Any, source: Path | None = None) -> Exercise:
    """Validate a parsed TOML document into an Exercise (errors name file and field)."""
    where = source.name if source is not None else "<exercise>"
    top = _build(Exercise, data, where, skip=("source",), raw=("drive", "rules"))
    drive_kw = _build(DriveSpec, top.pop("drive"), f"{where}: drive", raw=("also",))
    _check_angle(f"{where}: drive", drive_kw["angle"], drive_kw.get("sides", ("left", "right")))
    drive_kw["also"] = _conditions(drive_kw.get("also", ()), f"{where}: drive.also")
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
    _check_drive_range(where, drive)
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
