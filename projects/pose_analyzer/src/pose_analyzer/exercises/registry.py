"""Finding and loading exercise definitions: the built-in ones plus a user directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the backport
    import tomli as tomllib

from pose_analyzer.exercises.schema import Exercise, ExerciseDefinitionError, exercise_from_dict

BUILTIN_DIR = Path(__file__).with_name("definitions")
ENV_VAR = "POSE_EXERCISES_DIR"
AUTO = "auto"  # not a file: the engine finds each athlete's own movement


class UnknownExerciseError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def user_dirs() -> list[Path]:
    """Extra definition directories: settings' `exercises_dir` if set, else $POSE_EXERCISES_DIR.

    Settings are consulted only where they are already loaded (the service): the
    env var is the same one (prefix POSE_), and importing pydantic-settings would
    cost the CLI most of its start-up time.
    """
    dirs: list[Path] = []
    configured = None
    settings_module = sys.modules.get("pose_analyzer.settings")
    if settings_module is not None:
        try:
            configured = getattr(settings_module.get_settings(), "exercises_dir", None)
        except Exception:
            configured = None
    if configured:
        dirs.append(Path(configured))
    env = os.environ.get(ENV_VAR)
    if env and Path(env) not in dirs:
        dirs.append(Path(env))
    return dirs


def load_file(path: Path) -> Exercise:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ExerciseDefinitionError(f"{path.name}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ExerciseDefinitionError(f"{path}: cannot read ({exc.strerror})") from None
    exercise = exercise_from_dict(data, source=path)
    if exercise.name == AUTO:
        raise ExerciseDefinitionError(
            f"{path.name}.name: 'auto' is reserved (the dominant repeated movement); "
            "rename the exercise and its file"
        )
    if exercise.name != path.stem:
        raise ExerciseDefinitionError(
            f"{path.name}.name: {exercise.name!r} must match the file name {path.stem!r}"
        )
    return exercise


def load_exercises(extra_dirs: list[Path] | None = None) -> dict[str, Exercise]:
    """Every definition by name; a user file overrides a built-in of the same name."""
    dirs = [BUILTIN_DIR, *(user_dirs() if extra_dirs is None else extra_dirs)]
    found: dict[str, Exercise] = {}
    for d in dirs:
        if not d.is_dir():
            if d != BUILTIN_DIR:
                raise ExerciseDefinitionError(f"{d}: exercise directory does not exist")
            continue
        for path in sorted(d.glob("*.toml")):
            exercise = load_file(path)
            found[exercise.name] = exercise
    return dict(sorted(found.items()))


def get_exercise(name: str, extra_dirs: list[Path] | None = None) -> Exercise:
    """The definition called `name`; "auto" gives the engine's stand-in (engine/auto.py)."""
    if name == AUTO:
        from pose_analyzer.engine.auto import placeholder

        return placeholder()
    exercises = load_exercises(extra_dirs)
    if name not in exercises:
        raise UnknownExerciseError(
            f"unknown exercise {name!r}; known exercises: {', '.join(exercises)}, or auto"
        )
    return exercises[name]


class ExerciseCatalog:
    """The service's exercises, loaded and validated once, and again only when a file changes.

    Each user file is loaded on its own: a broken one (bad TOML, a wrong type,
    a name that does not match the file, a directory that is gone) is kept as
    an error naming the file and the field, and every other exercise, built-in
    or user, keeps working. Asking for the broken one raises
    ExerciseDefinitionError with that message.
    """

    def __init__(self, extra_dirs: list[Path] | None = None) -> None:
        self._extra_dirs = extra_dirs
        self._signature: tuple[object, ...] | None = None
        self.exercises: dict[str, Exercise] = {}
        self.errors: dict[str, str] = {}  # exercise name (file stem) or directory -> message
        self.refresh()

    def _dirs(self) -> list[Path]:
        return [BUILTIN_DIR, *(user_dirs() if self._extra_dirs is None else self._extra_dirs)]

    def _current_signature(self) -> tuple[object, ...]:
        parts: list[object] = []
        for d in self._dirs():
            try:
                files = sorted(d.glob("*.toml"))
                parts.append((str(d), d.stat().st_mtime_ns))
            except OSError:
                parts.append((str(d), None))
                continue
            for path in files:
                try:
                    st = path.stat()
                    parts.append((str(path), st.st_mtime_ns, st.st_size))
                except OSError:
                    parts.append((str(path), None))
        return tuple(parts)

    def refresh(self) -> None:
        """Reload when a definition file or directory changed since the last load."""
        signature = self._current_signature()
        if signature == self._signature:
            return
        found: dict[str, Exercise] = {}
        errors: dict[str, str] = {}
        for d in self._dirs():
            if not d.is_dir():
                if d != BUILTIN_DIR:
                    errors[str(d)] = f"{d.name}: exercise directory does not exist"
                continue
            for path in sorted(d.glob("*.toml")):
                try:
                    exercise = load_file(path)
                except ExerciseDefinitionError as exc:
                    errors[path.stem] = str(exc)
                    found.pop(path.stem, None)
                    continue
                errors.pop(exercise.name, None)
                found[exercise.name] = exercise
        self.exercises = dict(sorted(found.items()))
        self.errors = errors
        self._signature = signature

    def get(self, name: str) -> Exercise:
        if name == AUTO:
            return get_exercise(AUTO)
        self.refresh()
        if name in self.exercises:
            return self.exercises[name]
        if name in self.errors:
            raise ExerciseDefinitionError(self.errors[name])
        raise UnknownExerciseError(
            f"unknown exercise {name!r}; known exercises: {', '.join(self.exercises)}, or auto"
        )

    def all(self) -> dict[str, Exercise]:
        self.refresh()
        return self.exercises


def describe_exercises() -> list[str]:
    """One line per exercise definition, for `pose-analyzer exercises`."""
    lines = [
        f"{AUTO:<16} {'any':<5} the dominant repeated movement of each athlete, "
        "no definition (recordings only)"
    ]
    for name, ex in load_exercises().items():
        d = ex.drive
        sides = f" ({', '.join(d.sides)}; {d.combine})" if len(d.columns()) > 1 else ""
        also = "".join(f" + {c.angle}" for c in d.also)
        origin = "" if ex.source is None or ex.source.parent == BUILTIN_DIR else f"  [{ex.source}]"
        lines.append(
            f"{name:<16} {ex.view:<5} {d.angle}{sides}{also} {d.direction}: down "
            f"{d.down_deg:g}, up {d.up_deg:g} deg, min {d.min_rep_s:g} s; faults: "
            f"{', '.join(r.code for r in ex.rules)}{origin}"
        )
    return lines
