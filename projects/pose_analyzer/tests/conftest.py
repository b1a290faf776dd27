"""Fixtures of the pose_analyzer tests: the synthetic athlete and sample media."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from synthetic import Recording, make_recording

from pose_analyzer.exercises import Exercise, get_exercise

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "data" / "samples" / "pose2sim"


@pytest.fixture(scope="session")
def recording_factory():
    """make_recording with a cache: the same arguments give the same (shared) recording."""
    cache: dict[str, Recording] = {}

    def make(exercise: str, reps: int = 5, **kw: object) -> Recording:
        key = repr((exercise, reps, sorted(kw.items())))
        if key not in cache:
            cache[key] = make_recording(exercise, reps, **kw)  # type: ignore[arg-type]
        return cache[key]

    return make


@pytest.fixture(scope="session")
def exercises() -> dict[str, Exercise]:
    names = ("squat", "push_up", "lunge", "bicep_curl", "shoulder_press", "jumping_jack")
    return {n: get_exercise(n, extra_dirs=[]) for n in names}


@pytest.fixture
def squat_file(tmp_path: Path, recording_factory) -> Path:
    """A keypoint file of 4 clean squats, for the CLI."""
    return recording_factory("squat", 4).write(tmp_path / "squat.jsonl")


@pytest.fixture(scope="session")
def sample_video() -> Path:
    path = SAMPLES / "single" / "cam01.mp4"
    if not path.is_file():
        pytest.skip(f"sample video {path.name} absent: run scripts/fetch_samples.py")
    return path
