"""Opening videos (and every way that fails), annotation, writing annotated.mp4."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pose_analyzer.keypoints import JOINT_INDEX, NUM_JOINTS, PersonPose
from pose_analyzer.video import (
    CorruptVideoError,
    EmptyVideoError,
    VideoError,
    VideoNotFoundError,
    VideoUnreadableError,
    VideoWriter,
    draw_pose,
    open_video,
)

W, H, N, FPS = 96, 64, 20, 25.0


def _frame(i: int) -> np.ndarray:
    # A flat gray level per frame survives lossy coding well enough to identify the frame.
    return np.full((H, W, 3), 10 * i + 20, dtype=np.uint8)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with VideoWriter(path, FPS, (W, H)) as writer:
        for i in range(N):
            writer.write(_frame(i))
    assert writer.frames_written == N
    return path


def test_open_reports_fps_count_size_and_yields_index_time_frame(clip: Path) -> None:
    with open_video(clip) as src:
        assert (src.fps, src.frame_count, src.size) == (FPS, N, (W, H))
        assert src.duration_s == pytest.approx(N / FPS)
        got = list(src)
    assert [i for i, _, _ in got] == list(range(N))
    assert [t for _, t, _ in got] == pytest.approx([i / FPS for i in range(N)])
    levels = [float(f.mean()) for _, _, f in got]
    np.testing.assert_allclose(levels, [10 * i + 20 for i in range(N)], atol=4.5)  # YUV rounding
    assert src.frames_read == N and not src.truncated


def test_prefetch_yields_the_same_frames(clip: Path) -> None:
    plain = [f for _, _, f in open_video(clip)]
    ahead = [f for _, _, f in open_video(clip, prefetch=4)]
    assert len(ahead) == N
    for a, b in zip(plain, ahead, strict=True):
        np.testing.assert_array_equal(a, b)


def test_prefetch_stops_cleanly_when_the_consumer_breaks_early(clip: Path) -> None:
    src = open_video(clip, prefetch=2)
    frames = iter(src)  # kept alive: close() must stop the reader by itself
    for i, _, _ in frames:
        if i == 3:
            break
    src.close()
    assert src._reader is None
    assert src.decode_s > 0


def test_a_source_iterates_once(clip: Path) -> None:
    src = open_video(clip)
    list(src)
    with pytest.raises(VideoError, match="already iterated"):
        list(src)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.mp4"
    with pytest.raises(VideoNotFoundError, match="not found") as err:
        open_video(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_folder_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(VideoUnreadableError, match="not a file"):
        open_video(tmp_path)


def test_zero_byte_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "zero.mp4"
    path.touch()
    with pytest.raises(EmptyVideoError, match="0 bytes"):
        open_video(path)


def test_container_without_frames_is_empty(tmp_path: Path) -> None:
    # An AVI header with no frames: a valid container that OpenCV opens.
    path = tmp_path / "empty.avi"
    cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H)).release()
    assert path.stat().st_size > 0
    with pytest.raises(EmptyVideoError, match="no frames"):
        open_video(path)


def test_random_bytes_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(CorruptVideoError, match="cannot be decoded"):
        open_video(path)


def test_truncated_mp4_is_corrupt(clip: Path, tmp_path: Path) -> None:
    data = clip.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 2])  # loses the index at the end
    with pytest.raises(CorruptVideoError, match="truncated"):
        open_video(path)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg program")
def test_file_cut_midway_reads_what_is_there_and_says_truncated(clip: Path, tmp_path: Path) -> None:
    # With the index at the front (faststart), a cut file still opens: the frames that
    # survive are read, then iteration stops and `truncated` tells the caller.
    fast = tmp_path / "fast.mp4"
    remux = ["ffmpeg", "-v", "error", "-y", "-i", str(clip), "-c", "copy"]
    subprocess.run([*remux, "-movflags", "+faststart", str(fast)], check=True, timeout=60)
    data = fast.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with open_video(cut) as src:
        assert src.frame_count == N
        got = [i for i, _, _ in src]
    assert 0 < len(got) < N - 1
    assert src.truncated


def test_sample_video_metadata() -> None:
    from pose_analyzer.settings import get_settings

    path = get_settings().data_dir / "samples" / "pose2sim" / "single" / "cam01.mp4"
    if not path.is_file():
        pytest.skip("sample video cam01.mp4 is absent; run `python scripts/fetch_samples.py`")
    with open_video(path) as src:
        assert (src.fps, src.frame_count, src.size) == (60.0, 100, (1080, 1920))
        assert not src.live


def test_every_error_is_a_video_error() -> None:
    for cls in (VideoNotFoundError, VideoUnreadableError, CorruptVideoError, EmptyVideoError):
        assert issubclass(cls, VideoError)


def _person() -> PersonPose:
    kp = np.zeros((NUM_JOINTS, 3), dtype=np.float32)
    kp[:, :2] = np.nan
    joints = {
        "left_shoulder": (100, 60),
        "left_hip": (100, 160),
        "left_knee": (100, 260),
        "left_ankle": (100, 360),
        "right_shoulder": (200, 60),
        "right_hip": (200, 160),
        "right_knee": (200, 260),
        "right_ankle": (200, 360),
    }
    for name, (x, y) in joints.items():
        kp[JOINT_INDEX[name]] = (x, y, 0.9)
    kp[JOINT_INDEX["right_ankle"], 2] = 0.1  # not trusted: its shin is not drawn
    return PersonPose(keypoints=kp, box=(90.0, 50.0, 210.0, 370.0), track_id=7)


def test_draw_pose_draws_trusted_bones_only() -> None:
    frame = np.zeros((480, 320, 3), dtype=np.uint8)
    out = draw_pose(frame, _person())
    assert out is frame
    assert frame[210, 100].any()  # left thigh, hip-knee midpoint
    assert frame[310, 100].any()  # left shin
    assert frame[210, 200].any()  # right thigh
    assert not frame[320, 200].any()  # right shin: the ankle is below confidence


def test_draw_pose_writes_angles_rep_count_and_cues() -> None:
    person = _person()
    bare = draw_pose(np.zeros((480, 320, 3), np.uint8), person)
    nan_angle = draw_pose(
        np.zeros((480, 320, 3), np.uint8), person, {"left_knee_flexion": float("nan")}
    )
    np.testing.assert_array_equal(bare, nan_angle)  # a NaN angle writes nothing
    labelled = draw_pose(
        np.zeros((480, 320, 3), np.uint8),
        person,
        {"left_knee_flexion": 87.0},
        rep_count=3,
        cues=["go deeper"],
    )
    diff = (labelled != bare).any(axis=2)
    assert diff[240:275, 100:150].any()  # the value beside the left knee
    assert diff[:50].any()  # header (track id, reps) and the cue above the box


def test_writer_rejects_a_bad_size_and_an_unwritable_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        VideoWriter(tmp_path / "a.mp4", 30, (0, 10))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises((VideoError, OSError)):
        VideoWriter(blocker / "a.mp4", 30, (W, H))


def test_annotated_video_round_trip_without_ffmpeg(tmp_path: Path) -> None:
    # OpenCV encodes mp4v itself: with no ffmpeg program on PATH the file is still written.
    script = (
        "import sys, numpy as np\n"
        "from pose_analyzer.video import VideoWriter, open_video\n"
        "with VideoWriter(sys.argv[1], 30, (160, 120)) as w:\n"
        "    for i in range(12):\n"
        "        w.write(np.full((120, 160, 3), 8 * i, np.uint8))\n"
        "src = open_video(sys.argv[1])\n"
        "print(src.frame_count, src.size, sum(1 for _ in src))\n"
    )
    out = tmp_path / "annotated.mp4"
    env = {**os.environ, "PATH": str(tmp_path)}
    res = subprocess.run(
        [sys.executable, "-c", script, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["12", "(160,", "120)", "12"]
    with out.open("rb") as f:
        assert f.read(12)[4:8] == b"ftyp"  # an MP4 container
