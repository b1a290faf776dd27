"""Keypoint JSON Lines: exact round trip, clear errors, the detector factory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pose_analyzer.detectors import create_detector
from pose_analyzer.detectors.replay import (
    KeypointFileError,
    ReplayDetector,
    read_keypoints,
    write_keypoints,
)


def test_round_trip_is_bit_exact(tmp_path: Path, recording_factory) -> None:
    rec = recording_factory("squat", 1, noise_px=2.0, drop=0.05, seed=3)
    path = rec.write(tmp_path / "k.jsonl")
    back = list(read_keypoints(path))
    assert len(back) == len(rec.frames)
    for a, b in zip(rec.frames, back, strict=True):
        assert (a.index, a.t, a.width, a.height) == (b.index, b.t, b.width, b.height)
        assert [p.track_id for p in a.people] == [p.track_id for p in b.people]
        for pa, pb in zip(a.people, b.people, strict=True):
            np.testing.assert_array_equal(pa.keypoints, pb.keypoints)
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"t", "frame", "width", "height", "people"}
    assert set(first["people"][0]) == {"id", "keypoints"}
    assert len(first["people"][0]["keypoints"]["left_hip"]) == 3


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (
            '{"t": 0, "frame": 0, "width": 10, "height": 10, "people": []}\n{oops',
            "line 2: not valid",
        ),
        ('{"frame": 0, "width": 10, "height": 10}', "line 1: missing key 't'"),
        (
            '{"t": 0, "frame": 0, "width": 9, "height": 9, '
            '"people": [{"id": 1, "keypoints": {"tail": [1, 2, 1]}}]}',
            "unknown joint 'tail'",
        ),
        (
            '{"t": 1, "frame": 0, "width": 9, "height": 9}\n'
            '{"t": 1, "frame": 1, "width": 9, "height": 9}',
            "does not increase",
        ),
    ],
)
def test_malformed_files_name_the_line(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(KeypointFileError) as err:
        list(read_keypoints(path))
    assert fragment in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeypointFileError, match="not found"):
        ReplayDetector(tmp_path / "nope.jsonl")


def test_factory(tmp_path: Path, recording_factory) -> None:
    path = recording_factory("squat", 1).write(tmp_path / "k.jsonl")
    detector = create_detector("replay", str(path))
    assert detector.name == "replay"
    people = detector.detect([np.zeros((4, 4, 3), np.uint8)] * 2, [0.0, 0.1])
    assert len(people) == 2 and people[0][0].track_id == 1
    detector.close()
    with pytest.raises(ValueError, match="known backends: mediapipe, yolo, replay"):
        create_detector("openpose")


def test_writer_skips_absent_joints(tmp_path: Path, recording_factory) -> None:
    rec = recording_factory("squat", 1, drop=0.3, seed=5)
    path = tmp_path / "k.jsonl"
    write_keypoints(path, rec.frames[:3])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 3
    assert any(len(line["people"][0]["keypoints"]) < 21 for line in lines)
