"""Exercise definitions: the built-in set, validation messages, user directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from pose_analyzer.exercises import (
    BUILTIN_DIR,
    ExerciseDefinitionError,
    UnknownExerciseError,
    get_exercise,
    load_exercises,
)

REQUIRED = {"squat", "push_up", "lunge", "bicep_curl", "shoulder_press", "jumping_jack"}


def test_builtin_definitions_load_and_are_typed() -> None:
    exercises = load_exercises(extra_dirs=[])
    assert set(exercises) >= REQUIRED
    squat = exercises["squat"]
    assert squat.drive.columns() == ("left_knee_flexion", "right_knee_flexion")
    assert squat.drive.down_deg > squat.drive.up_deg
    codes = {r.code for r in squat.rules}
    assert {"insufficient_depth", "knee_valgus", "excessive_trunk_lean", "asymmetry"} <= codes
    for exercise in exercises.values():
        assert exercise.rules, exercise.name
        assert exercise.drive.min_rep_s > 0


def _write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


def _squat_text() -> str:
    return (BUILTIN_DIR / "squat.toml").read_text()


def test_unknown_key_names_file_and_field(tmp_path: Path) -> None:
    text = _squat_text().replace("tolerance = 5.0", "tolerence = 5.0", 1)
    _write(tmp_path, "squat", text)
    with pytest.raises(ExerciseDefinitionError) as err:
        load_exercises(extra_dirs=[tmp_path])
    assert "squat.toml" in str(err.value)
    assert "rules[0].tolerence: unknown key" in str(err.value)


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("down_deg = 65.0", 'down_deg = "deep"', "drive.down_deg: expected a number"),
        ("down_deg = 65.0\n", "", "drive.down_deg: required key is missing"),
        ("up_deg = 30.0", "up_deg = 80.0", "must be above drive.up_deg"),
        ('angle = "knee_flexion"', 'angle = "knee_bend"', "unknown angle 'knee_bend'"),
        ('stat = "max"', 'stat = "peak"', "'peak' is not one of"),
        ("{value:.0f} deg, squat", "{valeu} deg, squat", "bad placeholder"),
    ],
)
def test_invalid_values_are_named(tmp_path: Path, old: str, new: str, fragment: str) -> None:
    assert old in _squat_text()
    _write(tmp_path, "squat", _squat_text().replace(old, new, 1))
    with pytest.raises(ExerciseDefinitionError, match=r"squat\.toml") as err:
        load_exercises(extra_dirs=[tmp_path])
    assert fragment in str(err.value)


def test_invalid_toml_syntax(tmp_path: Path) -> None:
    _write(tmp_path, "broken", "name = 'broken'\n[drive\n")
    with pytest.raises(ExerciseDefinitionError, match=r"broken\.toml: not valid TOML"):
        load_exercises(extra_dirs=[tmp_path])


def test_user_directory_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = _squat_text().replace('name = "squat"', 'name = "goblet_squat"')
    _write(tmp_path, "goblet_squat", text.replace("min = 90.0", "min = 100.0"))
    monkeypatch.setenv("POSE_EXERCISES_DIR", str(tmp_path))
    exercises = load_exercises()
    assert "goblet_squat" in exercises and set(exercises) >= REQUIRED
    assert exercises["goblet_squat"].rules[0].min == 100.0


def test_unknown_exercise_lists_the_known_ones() -> None:
    with pytest.raises(UnknownExerciseError) as err:
        get_exercise("burpee", extra_dirs=[])
    message = str(err.value)
    assert "burpee" in message
    assert all(name in message for name in REQUIRED)
