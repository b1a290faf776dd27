"""The Pose2Sim demos (real footage, 4 calibrated views) through analyze-multiview.

Detections are the cached MediaPipe keypoint files (tests/data/multiview/README.md
says how they were made and how the multi-person labels were read off frames).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from multiview_helpers import DEMO_CALIB, REPO, TEST_DATA, demo_rig

from pose_analyzer.cli import main
from pose_analyzer.keypoints import JOINT_INDEX, JOINTS
from pose_analyzer.multiview.recordings import analyze_multiview
from pose_analyzer.multiview.trc import read_trc

VIEWS = [f"cam0{i}" for i in range(1, 5)]
# Mid-hip of each person in cam01 at frames 0, 50, 99 (labelled by eye, +-60 px).
LABELS = {
    0: ((412, 700), (750, 1300)),
    50: ((412, 800), (662, 1350)),
    99: ((600, 825), (762, 1350)),
}


def _inputs(demo: str) -> list[Path]:
    demo_rig()  # skips without the samples (the calibration comes with them)
    return [TEST_DATA / demo / f"{v}.jsonl" for v in VIEWS]


def test_single_person_demo_one_track_and_small_reprojection_error() -> None:
    result = analyze_multiview(DEMO_CALIB, _inputs("single"), "squat")
    assert result.report.frames == 100
    assert [p.report.id for p in result.people] == [1]
    person = result.people[0]
    assert person.report.frames_seen == 100  # one person, one 3D track, every instant
    per_view = result.per_view_median_error()
    assert set(per_view) == set(VIEWS)
    assert all(v is not None and v <= 10.0 for v in per_view.values()), per_view
    per_joint = result.per_joint_median_error()
    body = ["left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]
    assert all(per_joint[j] is not None and per_joint[j] <= 10.0 for j in body), per_joint
    # Metric and rigid: an adult's thigh is 0.35-0.50 m and does not change length
    # as he moves (median and spread over the 100 instants).
    pts = person.points
    for side in ("left", "right"):
        thigh = np.linalg.norm(
            pts[:, JOINT_INDEX[f"{side}_hip"]] - pts[:, JOINT_INDEX[f"{side}_knee"]], axis=1
        )
        assert 0.35 < np.nanmedian(thigh) < 0.50
        assert np.nanpercentile(thigh, 75) - np.nanpercentile(thigh, 25) < 0.03


def test_multi_person_demo_two_people_stay_two_tracks() -> None:
    rig = demo_rig()
    result = analyze_multiview(DEMO_CALIB, _inputs("multi"), "squat")
    assert len(result.people) == 2, [(p.report.id, p.report.frames_seen) for p in result.people]
    assert all(p.report.frames_seen >= 70 for p in result.people)
    cam01 = rig[0]
    who: dict[int, int] = {}
    for frame, (man, woman) in LABELS.items():
        t = frame / 60.0
        for person in result.people:
            k = np.flatnonzero(np.isclose(person.t, t))
            if k.size == 0:
                continue
            hips = person.points[k[0], [JOINT_INDEX["left_hip"], JOINT_INDEX["right_hip"]]]
            uv = cam01.project(np.nanmean(hips, axis=0))
            d = [np.hypot(*(uv - np.array(man))), np.hypot(*(uv - np.array(woman)))]
            label = int(np.argmin(d))
            assert min(d) < 150, f"frame {frame}: track {person.report.id} is at {uv}, nobody there"
            assert who.setdefault(person.report.id, label) == label, "a track swapped people"
    assert sorted(who.values()) == [0, 1]


def test_cli_writes_every_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    views = []
    for src in _inputs("single"):
        dst = tmp_path / "in" / src.name
        dst.parent.mkdir(exist_ok=True)
        shutil.copy(src, dst)
        views.append(str(dst))
    out = tmp_path / "out"
    code = main(
        [
            "analyze-multiview",
            "--calibration",
            str(DEMO_CALIB),
            *views,
            "--exercise",
            "squat",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "cropped" in printed  # cam01/cam02 are 1080 wide, the calibration 1088
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"input", "exercise", "backend", "fps", "frames", "people"}
    assert report["frames"] == 100 and report["fps"] == 60.0
    (person,) = report["people"]
    assert set(person) >= {"id", "frames_seen", "rep_count", "reps", "anomalies"}
    assert 0 < person["mean_reprojection_error_px"] < 10
    # TRC: readable back, metres, the same joints the report's person has.
    names, t, pts, rate = read_trc(out / "points3d.trc")
    assert names == list(JOINTS) and rate == 60.0 and pts.shape == (100, len(JOINTS), 3)
    assert np.allclose(t, np.arange(100) / 60.0, atol=1e-6)
    assert 1.0 < np.nanmedian(pts[:, JOINT_INDEX["nose"], 2]) < 2.5  # a head height in m
    header = (out / "points3d.trc").read_text().splitlines()[2].split("\t")
    assert header[4] == "m"
    angles = (out / "angles.csv").read_text().splitlines()
    assert angles[0].startswith("time_s,person_id,left_knee_flexion")
    assert len(angles) == 101
    rep = (out / "reprojection.csv").read_text().splitlines()
    assert rep[0] == "time_s,person_id,joint,views_used,error_px,cam01,cam02,cam03,cam04"
    assert len(rep) > 100 * 15


def test_trc_round_trip(tmp_path: Path) -> None:
    from pose_analyzer.multiview.trc import write_trc

    pts = np.random.default_rng(0).normal(size=(5, 3, 3))
    pts[2, 1] = np.nan
    write_trc(tmp_path / "a.trc", np.arange(5) / 30, pts, ["a", "b", "c"], 30.0)
    names, _, back, rate = read_trc(tmp_path / "a.trc")
    assert names == ["a", "b", "c"] and rate == 30.0
    np.testing.assert_allclose(back, pts, atol=1e-6)
    # OpenSim's Y is the world's Z (up): the file's second column of a marker is z.
    row = (tmp_path / "a.trc").read_text().splitlines()[6].split("\t")
    assert float(row[3]) == pytest.approx(pts[0, 0, 2], abs=1e-6)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["analyze-multiview", *args, "--exercise", "squat", "--no-video"])
    return code, capsys.readouterr().err


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    views = [str(p) for p in _inputs("single")]
    calib = str(DEMO_CALIB)
    out = ["--out", str(tmp_path / "o")]
    code, err = _run(["--calibration", calib, views[0], *out], capsys)
    assert code == 2 and "at least two calibrated views" in err
    # Videos of different lengths.
    short = tmp_path / "cam04.jsonl"
    short.write_text("".join(Path(views[3]).read_text().splitlines(True)[:80]))
    code, err = _run(["--calibration", calib, *views[:3], str(short), *out], capsys)
    assert code == 2 and "different lengths" in err and "cam04: 80 frames" in err
    # A calibration for other cameras: wrong names, wrong sizes, wrong count.
    renamed = tmp_path / "front.jsonl"
    renamed.write_text(Path(views[0]).read_text())
    code, err = _run(["--calibration", calib, str(renamed), *views[1:], *out], capsys)
    assert code == 2 and "'front' matches no camera name" in err
    toml = tmp_path / "Calib.toml"
    from pose_analyzer.multiview.calibration import write_pose2sim_toml

    rig = demo_rig()
    write_pose2sim_toml(rig.subset(["cam01", "cam02", "cam03"]), toml)
    code, err = _run(["--calibration", str(toml), *views, *out], capsys)
    assert code == 2 and "4 videos but the calibration" in err
    text = (tmp_path / "Calib.toml").read_text().replace("[ 1088.0, 1920.0]", "[ 1920.0, 1080.0]")
    (tmp_path / "Calib.toml").write_text(text)
    code, err = _run(["--calibration", str(toml), *views[:3], *out], capsys)
    assert code == 2 and "calibrated at 1920x1080" in err
    code, err = _run(["--calibration", str(tmp_path / "none.toml"), *views, *out], capsys)
    assert code == 2 and "calibration file not found" in err
    assert not (tmp_path / "o" / "report.json").exists()


def test_real_videos_are_checked_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    videos = REPO / "data" / "samples" / "pose2sim" / "single"
    if not (videos / "cam01.mp4").exists():
        pytest.skip("Pose2Sim samples missing: run `make fetch-samples`")
    toml = tmp_path / "Calib.toml"
    from pose_analyzer.multiview.calibration import write_pose2sim_toml

    write_pose2sim_toml(demo_rig(), toml)
    text = toml.read_text().replace("[ 1088.0, 1920.0]", "[ 1280.0, 720.0]")
    toml.write_text(text)
    vids = [str(videos / f"{v}.mp4") for v in VIEWS]
    code, err = _run(["--calibration", str(toml), *vids, "--model", "no-such.task"], capsys)
    assert code == 2 and "calibrated at 1280x720" in err


@pytest.mark.slow
def test_annotated_view_shows_the_reprojected_skeleton(tmp_path: Path) -> None:
    """cam03's video with the fused 3D skeleton drawn where the rig reprojects it."""
    import cv2

    from pose_analyzer.exercises import get_exercise
    from pose_analyzer.multiview.recordings import _annotate

    video = REPO / "data" / "samples" / "pose2sim" / "single" / "cam03.mp4"
    if not video.exists():
        pytest.skip("Pose2Sim samples missing: run `make fetch-samples`")
    result = analyze_multiview(DEMO_CALIB, _inputs("single"), "squat")
    view = result.views[2]
    view.path, view.keypoints = video, False
    paths = _annotate(result, get_exercise("squat"), tmp_path)
    assert list(paths) == ["video_cam03"]
    drawn, plain = cv2.VideoCapture(str(paths["video_cam03"])), cv2.VideoCapture(str(video))
    assert int(drawn.get(cv2.CAP_PROP_FRAME_COUNT)) == 100
    for _ in range(51):
        ok1, a = drawn.read()
        ok2, b = plain.read()
    assert ok1 and ok2
    person = result.people[0]
    u, v = np.round(result.rig[2].project(person.points[50, JOINT_INDEX["left_knee"]])).astype(int)
    patch = (slice(v - 3, v + 4), slice(u - 3, u + 4))
    # The joint marker is white and solid; the video there is not.
    assert a[patch].mean() > 200 and abs(a[patch].astype(int) - b[patch]).mean() > 20


def test_videos_of_different_lengths_are_refused_before_detection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2

    demo_rig()
    paths = []
    for i, frames in enumerate((6, 6, 6, 3)):
        path = tmp_path / f"cam0{i + 1}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 60.0, (1088, 1920))
        for _ in range(frames):
            writer.write(np.full((1920, 1088, 3), 80, np.uint8))
        writer.release()
        paths.append(str(path))
    code, err = _run(["--calibration", str(DEMO_CALIB), *paths, "--model", "no-such.task"], capsys)
    assert code == 2 and "different lengths" in err and "cam04: 3 frames" in err
