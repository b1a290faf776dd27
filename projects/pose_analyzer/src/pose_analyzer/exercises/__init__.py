"""Exercise definitions as data (TOML), validated into typed dataclasses."""

from pose_analyzer.exercises.registry import (
    BUILTIN_DIR,
    ENV_VAR,
    UnknownExerciseError,
    get_exercise,
    load_exercises,
    load_file,
)
from pose_analyzer.exercises.schema import (
    ConditionSpec,
    DriveSpec,
    Exercise,
    ExerciseDefinitionError,
    RuleSpec,
    exercise_from_dict,
)

__all__ = [
    "BUILTIN_DIR",
    "ENV_VAR",
    "ConditionSpec",
    "DriveSpec",
    "Exercise",
    "ExerciseDefinitionError",
    "RuleSpec",
    "UnknownExerciseError",
    "exercise_from_dict",
    "get_exercise",
    "load_exercises",
    "load_file",
]
