"""The engine against ground truth: synthetic athletes and the hand-labelled Sports2D clip.

Counting conditions, calibration, roles and `auto` are checked on motion whose reps
are known by construction; the real clip's labels (tests/data/real/labels_reps.toml)
were counted by eye from its frames.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic import MOTIONS, Motion, make_recording

from pose_analyzer.detectors.replay import read_keypoints
from pose_analyzer.engine import LiveEngine, analyze_recording, body_anchor
from pose_analyzer.engine.config import EngineConfig
from pose_analyzer.exercises import ExerciseDefinitionError, load_file
from pose_analyzer.keypoints import FramePoses

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REAL = Path(__file__).parent / "data" / "real"
EXERCISES = ("squat", "push_up", "lunge", "bicep_curl", "shoulder_press", "jumping_jack")
LABELS = tomllib.loads((REAL / "labels_reps.toml").read_text())["sports2d_demo"]


def live(frames, exercise, config=None):
    engine = LiveEngine(exercise, config=config)
    for frame in frames:
        engine.update(frame)
    engine.finish()
    return engine


def _variant(monkeypatch, name: str, base: str, **extreme: float) -> str:
    m = MOTIONS[base]
    monkeypatch.setitem(MOTIONS, name, Motion(m.view, m.rest, {**m.extreme, **extreme}, m.bend))
    return name


def test_a_jumping_jack_needs_the_legs_too(monkeypatch, exercises) -> None:
    arms_only = _variant(monkeypatch, "arms_only", "jumping_jack", hip_l=2, hip_r=2)
    rec = make_recording(arms_only, 4)
    engine = live(rec.frames, exercises["jumping_jack"])
    assert engine.rep_count(1) == 0
    analyzer = engine._people[1].analyzer
    assert len(analyzer.counter.rejected) == 4
    assert all("hip_flexion moved" in r.reason for r in analyzer.counter.rejected)
    report = analyze_recording(rec.frames, exercises["jumping_jack"], rec.fps).report
    assert [(p.id, p.role, p.rep_count) for p in report.people] == [(1, "bystander", 0)]


def test_calibration_follows_the_athletes_own_range(monkeypatch, exercises) -> None:
    # Arms rise to 100 deg: short of down_deg (110), above the floor (80). The first two
    # such reps teach the counter this athlete's range; the other three count.
    short = _variant(monkeypatch, "short_arms", "jumping_jack", arm_l=100, arm_r=100)
    rec = make_recording(short, 5)
    peak = np.nanmax(rec.truth["left_shoulder_elevation"])
    assert 95 < peak < 110
    ex = exercises["jumping_jack"]
    assert live(rec.frames, ex).rep_count(1) == 3
    offline = analyze_recording(rec.frames, ex, rec.fps).report.people[0]
    assert offline.rep_count == 3
    off = EngineConfig(calibrate=False)
    assert analyze_recording(rec.frames, ex, rec.fps, config=off).report.people[0].rep_count == 0
    uncalibrated = dataclasses.replace(ex, drive=dataclasses.replace(ex.drive, calibrate=False))
    assert live(rec.frames, uncalibrated).rep_count(1) == 0


def test_calibration_never_goes_below_the_floor(monkeypatch, exercises) -> None:
    low = _variant(monkeypatch, "low_arms", "jumping_jack", arm_l=70, arm_r=70)
    rec = make_recording(low, 5)
    engine = live(rec.frames, exercises["jumping_jack"])
    assert engine.rep_count(1) == 0
    assert engine._people[1].analyzer.counter.down_deg == 110.0  # no excursion reached 80


@pytest.mark.parametrize(
    ("snippet", "field", "words"),
    [
        ("reach_deg = 200.0", "drive.also[0].reach_deg", "outside what hip_flexion can measure"),
        ("min_rom_deg = 190.0", "drive.also[0].min_rom_deg", "can never hold"),
        ("reach_deg = 50.0\nmax_deg = 40.0", "drive.also[0].reach_deg", "can never be reached"),
        ("min_rom_deg = 30.0\nmax_deg = 20.0", "drive.also[0].min_rom_deg", "can never hold"),
        ('direction = "sideways"\nmin_rom_deg = 5.0', "drive.also[0].direction", "not one of"),
        ("colour = 1\nmin_rom_deg = 5.0", "drive.also[0].colour", "unknown key"),
        ('combine = "mean"', "drive.also[0]", "needs min_rom_deg, reach_deg or max_deg"),
    ],
)
def test_impossible_conditions_name_file_and_field(tmp_path, snippet, field, words) -> None:
    path = tmp_path / "jj.toml"
    path.write_text(
        'name = "jj"\n[drive]\nangle = "shoulder_elevation"\ndown_deg = 110.0\nup_deg = 50.0\n'
        f'[[drive.also]]\nangle = "hip_flexion"\n{snippet}\n'
    )
    with pytest.raises(ExerciseDefinitionError) as err:
        load_file(path)
    assert f"jj.toml: {field}" in str(err.value) and words in str(err.value)


def test_a_condition_that_forbids_the_drive_itself_is_an_error(tmp_path) -> None:
    path = tmp_path / "jj.toml"
    path.write_text(
        'name = "jj"\n[drive]\nangle = "shoulder_elevation"\ndown_deg = 110.0\nup_deg = 50.0\n'
        '[[drive.also]]\nangle = "shoulder_elevation"\nmax_deg = 90.0\n'
    )
    with pytest.raises(ExerciseDefinitionError, match=r"jj.toml: drive.also\[0\].max_deg"):
        load_file(path)


# Angles each synthetic exercise moves by at least 30 deg (from its MOTIONS definition).
MOVING = {
    "squat": {"knee_flexion", "hip_flexion", "shoulder_elevation"},
    "push_up": {"elbow_flexion"},
    "lunge": {"knee_flexion", "hip_flexion", "left_knee_flexion", "left_hip_flexion"},
    "bicep_curl": {"elbow_flexion"},
    "shoulder_press": {"elbow_flexion", "shoulder_elevation"},
    "jumping_jack": {"shoulder_elevation"},
}


@pytest.mark.parametrize("name", EXERCISES)
def test_auto_counts_every_exercise_exactly(name: str) -> None:
    rec = make_recording(name, 5, crosser=True, noise_px=1.0, seed=EXERCISES.index(name))
    period = sum(rec.tempo)
    report = analyze_recording(rec.frames, "auto", rec.fps).report
    assert report.exercise == "auto"
    athlete, crosser = report.people
    assert (athlete.role, athlete.rep_count) == ("athlete", 5)
    assert athlete.drive is not None and athlete.drive["angle"] in MOVING[name]
    assert athlete.drive["period_s"] == pytest.approx(period, abs=0.1)
    assert (crosser.role, crosser.rep_count) == ("bystander", 0)
    assert crosser.drive is not None and crosser.drive["angle"] is None


def test_auto_says_why_when_nothing_repeats() -> None:
    rec = make_recording("squat", 1)  # one squat is a movement, not a repeated one
    (person,) = analyze_recording(rec.frames, "auto", rec.fps).report.people
    assert person.rep_count == 0 and person.role == "bystander"
    assert person.drive is not None and person.drive["angle"] is None
    assert "nothing repeats" in person.drive["reason"] and "1 cycle" in person.drive["reason"]


def test_auto_is_refused_live() -> None:
    from pose_analyzer.engine import AutoNeedsRecordingError

    with pytest.raises(AutoNeedsRecordingError, match="whole recording"):
        LiveEngine("auto")


def _labelled_people(frames: list[FramePoses]) -> list[FramePoses]:
    """Person ids from the labels, not from the tracker: isolates counting from identity.

    Read off the frames (labels_reps.toml, not_reps): until the flip (frame 186) the
    athlete is on the box, in the upper half of the frame, and the passer-by walks on
    the grass in the lower half; after it, the athlete is on the right of the frame
    and the passer-by leaves on the left.
    """
    out = []
    for frame in frames:
        people = []
        for p in frame.people:
            hip_x, hip_y, _ = body_anchor(p.keypoints, 0.3)
            if not np.isfinite(hip_x):
                continue
            x, y = hip_x / frame.width, hip_y / frame.height
            pid = (1 if y < 0.5 else 2) if frame.index < 186 else (1 if x > 0.5 else 2)
            if all(q.track_id != pid for q in people):  # a duplicate skeleton adds nothing
                people.append(dataclasses.replace(p, track_id=pid))
        out.append(dataclasses.replace(frame, people=people))
    return out


@pytest.fixture(scope="module")
def demo() -> list[FramePoses]:
    return list(read_keypoints(REAL / "sports2d_demo.jsonl"))


def test_real_clip_counting_with_labelled_identities(demo, exercises) -> None:
    athlete, passer = LABELS["person"]
    frames = _labelled_people(demo)
    offline = analyze_recording(frames, exercises["jumping_jack"], 30.0).report
    got = {p.id: (p.role, p.rep_count) for p in offline.people}
    assert got == {1: (athlete["role"], athlete["reps"]), 2: (passer["role"], passer["reps"])}
    # Each counted rep is one of the labelled ones (start and end within 0.3 s).
    for rep, label in zip(offline.people[0].reps, athlete["rep_frames"], strict=True):
        assert rep.start_s == pytest.approx(label["start"] / 30.0, abs=0.3)
        assert rep.end_s == pytest.approx(label["end"] / 30.0, abs=0.3)
    engine = live(frames, exercises["jumping_jack"])
    assert engine.athletes() == {1: athlete["reps"]}
    refused = engine._people[2].analyzer.counter.rejected
    assert refused and all("not exercising in place" in r.reason for r in refused)
    auto = analyze_recording(frames, "auto", 30.0).report
    assert {p.id: p.rep_count for p in auto.people} == {1: athlete["reps"], 2: 0}
    assert auto.people[0].drive == {
        "angle": "shoulder_elevation",
        "period_s": pytest.approx(1.2, abs=0.2),
    }


@pytest.mark.parametrize("detections", ["bare", "refined"])
def test_real_clip_through_the_whole_engine(demo, exercises, detections: str) -> None:
    """Identity included: one athlete with the labelled reps, nobody else counts; on the
    bare detector's output and on the offline detector's (refined/: what `analyze
    demo.mp4` sees, with the re-detection search and its scan)."""
    athlete, _ = LABELS["person"]
    if detections == "refined":
        demo = list(read_keypoints(REAL / "refined" / "sports2d_demo.jsonl"))
    report = analyze_recording(demo, exercises["jumping_jack"], 30.0).report
    athletes = [p for p in report.people if p.role == "athlete"]
    assert len(report.people) <= len(LABELS["person"])
    assert [p.rep_count for p in athletes] == [athlete["reps"]]
    assert all(p.rep_count == 0 for p in report.people if p.role == "bystander")
    engine = live(demo, exercises["jumping_jack"])
    assert sorted(engine.athletes().values()) == [athlete["reps"]]


def test_start_up_leaves_the_heavy_imports_for_later() -> None:
    """`exercises` and `analyze` up to its first frame load none of the slow modules
    (bench/bench_engine.py times it; this keeps a stray eager import from coming back)."""
    import subprocess

    code = (
        "import sys\n"
        "from pose_analyzer.cli import main\n"
        "main(['exercises'])\n"
        "from pose_analyzer import recordings\n"
        "heavy = ('scipy', 'matplotlib', 'pydantic_settings', 'mediapipe', 'torch', 'cv2')\n"
        "loaded = sorted(m for m in heavy if m in sys.modules)\n"
        "print('LOADED', ','.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("LOADED"))
    # cv2 comes with the video module (VideoError); the rest must wait for first use.
    assert line.split(" ", 1)[1].split(",") in (["cv2"], [""]), line
