"""Calibration readers, writers and the board calibration, against ground truth.

- The Qualisys reader is proven by reprojection on real detections of the demo:
  its convention gives single-digit pixel errors, every other plausible reading
  of the file (no pi turn, transposed rotation, distortion divided by 64 as
  Pose2Sim 0.10 does) gives far larger ones.
- The board calibration recovers cameras a ChArUco recording was rendered with,
  and on the demo's own checkerboard images finds the intrinsics of the .qca.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from multiview_helpers import DEMO_CALIB, REPO, TEST_DATA, demo_rig

from pose_analyzer.cli import main
from pose_analyzer.detectors.replay import read_keypoints
from pose_analyzer.multiview.board import Board, calibrate_intrinsics, calibrate_rig
from pose_analyzer.multiview.calibration import (
    CalibrationError,
    Camera,
    CameraRig,
    _rx,
    load_calibration,
    match_videos,
    write_opencv_json,
    write_pose2sim_toml,
)
from pose_analyzer.multiview.triangulation import triangulate

INTRINSIC_IMAGES = REPO / "data" / "samples" / "pose2sim" / "single" / "calibration" / "intrinsics"


def _same(a: CameraRig, b: CameraRig, tol: float = 1e-6) -> None:
    assert a.names == b.names
    for x, y in zip(a, b, strict=True):
        assert x.size == y.size
        np.testing.assert_allclose(x.K, y.K, atol=tol, rtol=0)
        np.testing.assert_allclose(x.dist, y.dist, atol=tol, rtol=0)
        np.testing.assert_allclose(x.R, y.R, atol=tol, rtol=0)
        np.testing.assert_allclose(x.t, y.t, atol=tol, rtol=0)


def test_qca_values_by_hand() -> None:
    rig = demo_rig()
    cam = rig[0]
    assert rig.names == ["cam01", "cam02", "cam03", "cam04"]
    assert cam.size == (1088, 1920)  # fov_video right 1087, bottom 1919
    assert cam.K[0, 0] == pytest.approx(107599.671875 / 64)
    assert cam.K[1, 2] == pytest.approx(60680.792969 / 64)
    assert cam.dist[0] == pytest.approx(-0.046183)
    # The camera sits where the file puts it (mm -> m) and looks down at the scene.
    np.testing.assert_allclose(cam.center, [1.4602323709, -1.9091590482, 1.8965058524], atol=1e-9)
    assert (cam.R @ (np.zeros(3) - cam.center))[2] > 0


def test_qca_and_the_toml_written_from_it_agree(tmp_path: Path) -> None:
    rig = demo_rig()
    toml = write_pose2sim_toml(rig, tmp_path / "Calib.toml")
    _same(rig, load_calibration(toml))
    js = write_opencv_json(rig, tmp_path / "calib.json")
    _same(rig, load_calibration(js))


def test_opencv_yaml_is_read(tmp_path: Path) -> None:
    rig = demo_rig()
    fs = cv2.FileStorage(str(tmp_path / "intri.yml"), cv2.FILE_STORAGE_WRITE)
    fs.write("names", rig.names)
    for c in rig:
        fs.write(f"K_{c.name}", c.K)
        fs.write(f"dist_{c.name}", c.dist.reshape(1, 5))
    fs.release()
    fs = cv2.FileStorage(str(tmp_path / "extri.yml"), cv2.FILE_STORAGE_WRITE)
    for c in rig:
        fs.write(f"R_{c.name}", c.rvec.reshape(3, 1))
        fs.write(f"Rot_{c.name}", c.R)
        fs.write(f"T_{c.name}", c.t.reshape(3, 1))
    fs.release()
    back = load_calibration(tmp_path / "intri.yml")
    for x, y in zip(rig, back, strict=True):
        np.testing.assert_allclose(x.K, y.K, atol=1e-9)
        np.testing.assert_allclose(x.R, y.R, atol=1e-9)
        np.testing.assert_allclose(x.t, y.t, atol=1e-9)


def _demo_detections() -> tuple[np.ndarray, np.ndarray]:
    px = np.full((4, 100, 21, 2), np.nan)
    conf = np.zeros((4, 100, 21))
    for v in range(4):
        for f, frame in enumerate(read_keypoints(TEST_DATA / "single" / f"cam0{v + 1}.jsonl")):
            if frame.people:
                best = max(frame.people, key=lambda p: float(np.nansum(p.keypoints[:, 2])))
                px[v, f] = best.keypoints[:, :2]
                conf[v, f] = best.keypoints[:, 2]
    return px, conf


def _median_error(rig: CameraRig, px: np.ndarray, conf: np.ndarray) -> float:
    tri = triangulate(rig, px, conf, max_error_px=15.0)
    return float(np.nanmedian(tri.view_error_px))


def test_qca_convention_is_proven_by_reprojection_on_real_detections() -> None:
    rig = demo_rig()
    px, conf = _demo_detections()
    ours = _median_error(rig, px, conf)
    assert ours < 10.0
    transposed = CameraRig(
        tuple(
            replace(
                c,
                R=(_rx(np.pi) @ (_rx(np.pi) @ c.R).T),
                t=-(_rx(np.pi) @ (_rx(np.pi) @ c.R).T) @ c.center,
            )
            for c in rig
        )
    )
    assert _median_error(transposed, px, conf) > 5 * ours
    # Without the turn by pi the cameras look away from the scene: nothing triangulates.
    unturned = CameraRig(tuple(replace(c, R=_rx(np.pi) @ c.R, t=_rx(np.pi) @ c.t) for c in rig))
    tri = triangulate(unturned, px, conf)
    assert np.isnan(tri.points).mean() > 0.5 or np.nanmedian(tri.view_error_px) > 5 * ours
    # Pose2Sim 0.10 also divides the distortion by 64: worse, not better.
    pose2sim = CameraRig(tuple(replace(c, dist=c.dist / 64) for c in rig))
    assert _median_error(pose2sim, px, conf) > ours


@pytest.mark.slow
def test_demo_checkerboard_images_give_the_qca_intrinsics() -> None:
    """The real checkerboard images Pose2Sim's calibration came from (4 x 7 corners, 60 mm)."""
    if not INTRINSIC_IMAGES.exists():
        pytest.skip("Pose2Sim samples missing: run `make fetch-samples`")
    board = Board(4, 7, 0.060)
    rig = demo_rig()
    for cam in rig:
        files = sorted(INTRINSIC_IMAGES.glob(f"{cam.name}_*_int.jpg"))
        images = [cv2.imread(str(f)) for f in files]
        result = calibrate_intrinsics(images, board)
        assert result.rms_px < 1.0
        assert result.K[0, 0] == pytest.approx(cam.K[0, 0], rel=0.01)
        # k1 is about -0.05 as the .qca states it, not -0.0007 (the value divided by 64).
        assert result.dist[0] == pytest.approx(cam.dist[0], abs=0.02)
        assert abs(result.dist[0]) > 10 * abs(cam.dist[0] / 64)


def _render(
    texture: np.ndarray,
    px_per_m: float,
    origin: float,
    cam: Camera,
    pose: tuple[np.ndarray, np.ndarray],
    rays: np.ndarray,
) -> np.ndarray:
    """What `cam` sees of a board (texture) at pose (R, t: board -> camera), lens included."""
    R, t = pose
    w, h = cam.size
    d = rays @ R  # ray directions in board coordinates, (H*W, 3)
    o = -R.T @ t  # camera centre in board coordinates
    lam = -o[2] / d[:, 2]
    xy = o[:2] + lam[:, None] * d[:, :2]
    map_xy = (xy * px_per_m + origin - 0.5).astype(np.float32).reshape(h, w, 2)
    bad = (lam <= 0).reshape(h, w)
    map_xy[bad] = -1
    return cv2.remap(
        texture, map_xy[..., 0], map_xy[..., 1], cv2.INTER_LINEAR, borderValue=(128, 128, 128)
    )


def _look_at(centre: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World -> camera looking from `centre` at `target`, image y along the board's +y."""
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ centre


def _rot(ax: float, ay: float, az: float) -> np.ndarray:
    r = [cv2.Rodrigues(np.radians(v) * np.eye(3)[i])[0] for i, v in enumerate((ax, ay, az))]
    return np.asarray(r[0] @ r[1] @ r[2])


def _board_texture(board: Board, squares: tuple[int, int], px: int) -> tuple[np.ndarray, float]:
    """The printed board and the texture x of board coordinate 0 (its corner origin)."""
    if board.aruco_dict is not None:
        image = board._charuco().generateImage((squares[0] * px, squares[1] * px))
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), 0.0
    # A checkerboard on white paper one square wider all round; origin: first inner corner.
    cols, rows = squares[0] + 2, squares[1] + 2
    yy, xx = np.mgrid[0 : rows * px, 0 : cols * px] // px
    image = np.where((xx + yy) % 2 == 0, 20, 235).astype(np.uint8)
    image[:px], image[-px:], image[:, :px], image[:, -px:] = 255, 255, 255, 255
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), 2.0 * px


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "focal_rel", "centre_m"), [("checkerboard", 0.005, 0.005), ("charuco", 0.005, 0.01)]
)
def test_synthetic_board_recording_recovers_the_cameras(
    kind: str,
    focal_rel: float,
    centre_m: float,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Three cameras with known K, distortion and pose film a board; calibrate_rig finds them.

    The checkerboard meets the issue's bounds (focal 0.5 %, centres 5 mm). ChArUco
    corners, interpolated from markers, are less precise (0.25-0.3 px RMS on these
    renders against 0.1 px), so its centres are held to 1 cm.
    """
    squares, square = (10, 7), 0.08
    aruco = cv2.aruco.DICT_4X4_50 if kind == "charuco" else None
    board = Board(squares[0] - 1, squares[1] - 1, square, aruco, 0.06)
    px_per_square = 100
    px_per_m = px_per_square / square
    texture, origin = _board_texture(board, squares, px_per_square)
    size = (800, 600)
    rng = np.random.default_rng(5)
    # The world is the board's frame (the board standing upright), cameras in front of it.
    if kind == "charuco":
        middle = np.array([squares[0] * square / 2, squares[1] * square / 2, 0.0])
    else:
        middle = np.array([(squares[0] - 2) * square / 2, (squares[1] - 2) * square / 2, 0.0])
    truth = []
    for k, (ang, dist) in enumerate(((-35, 1.6), (10, 1.8), (30, 1.5))):
        a = np.radians(ang)
        c = middle + dist * np.array([np.sin(a), 0.25, -np.cos(a)])
        R, t = _look_at(c, middle)
        f = 700.0 + 40 * k
        K = np.array([[f, 0, 400 + 6 * k], [0, f, 300 - 5 * k], [0, 0, 1]])
        truth.append(Camera(f"cam{k + 1:02d}", size, K, [-0.08, 0.05, 0, 0], R, t))
    grid = np.stack(np.meshgrid(np.arange(size[0]), np.arange(size[1])), axis=-1).reshape(-1, 2)
    intrinsic, extrinsic = {}, {}
    (tmp_path / "int").mkdir()
    (tmp_path / "ext").mkdir()
    for cam in truth:
        n = cam.undistort(grid.astype(np.float64))
        rays = np.concatenate([n, np.ones((n.shape[0], 1))], axis=1)
        images = []
        for _ in range(6):
            R = _rot(rng.uniform(-35, 35), rng.uniform(-35, 35), rng.uniform(-10, 10))
            ahead = [rng.uniform(-0.15, 0.15), rng.uniform(-0.1, 0.1), rng.uniform(1.0, 1.4)]
            t = np.array(ahead) - R @ middle
            images.append(_render(texture, px_per_m, origin, cam, (R, t), rays))
        intrinsic[cam.name] = images
        extrinsic[cam.name] = _render(texture, px_per_m, origin, cam, (cam.R, cam.t), rays)
    if kind == "checkerboard":  # through the command line: image files in, Calib.toml out
        for name, images in intrinsic.items():
            for i, image in enumerate(images):
                assert cv2.imwrite(str(tmp_path / "int" / f"{name}_{i:02d}.png"), image)
            cv2.imwrite(str(tmp_path / "ext" / f"{name}_ext.png"), extrinsic[name])
        code = main(
            [
                "calibrate-rig",
                *("--board", "9x6", "--square-mm", "80"),
                *("--intrinsics", str(tmp_path / "int"), "--extrinsics", str(tmp_path / "ext")),
                *("--out", str(tmp_path / "Calib.toml")),
            ]
        )
        assert code == 0
        printed = capsys.readouterr().out.splitlines()
        rms = [float(line.split("intrinsic RMS ")[1].split()[0]) for line in printed[:3]]
        ext = [float(line.split("extrinsic view ")[1].split()[0]) for line in printed[:3]]
        rig = load_calibration(tmp_path / "Calib.toml")
    else:
        result = calibrate_rig(intrinsic, extrinsic, board)
        rig = result.rig
        rms = [result.intrinsic_rms_px[n] for n in rig.names]
        ext = [result.extrinsic_error_px[n] for n in rig.names]
    assert rig.names == [c.name for c in truth]
    for got, want in zip(rig, truth, strict=True):
        assert got.K[0, 0] == pytest.approx(want.K[0, 0], rel=focal_rel)
        assert got.K[1, 1] == pytest.approx(want.K[1, 1], rel=focal_rel)
        assert np.linalg.norm(got.center - want.center) < centre_m
    assert max(rms) < 0.5 and max(ext) < 0.5


def test_mismatched_calibrations_are_clear_errors() -> None:
    rig = demo_rig()
    sizes = [(f"cam0{i}", (1088, 1920)) for i in range(1, 5)]
    assert match_videos(rig, sizes).names == rig.names
    with pytest.raises(CalibrationError, match="at least two"):
        match_videos(rig, sizes[:1])
    with pytest.raises(CalibrationError, match="5 videos but the calibration"):
        match_videos(rig, [*sizes, ("cam05", (1088, 1920))])
    with pytest.raises(CalibrationError, match="matches no camera name"):
        match_videos(rig, [("front", (1088, 1920)), *sizes[1:]])
    with pytest.raises(CalibrationError, match="calibrated at 1088x1920"):
        match_videos(rig, [("cam01", (1920, 1080)), *sizes[1:]])  # rotated
    with pytest.raises(CalibrationError, match="calibrated at 1088x1920"):
        match_videos(rig, [("cam01", (1280, 720)), *sizes[1:]])
    by_order = match_videos(rig, [(f"v{i}", s) for i, (_, s) in enumerate(sizes)], by_order=True)
    assert by_order.names == rig.names


def test_a_video_one_macroblock_smaller_keeps_its_intrinsics() -> None:
    """cam01/cam02 of the demo decode at 1080x1920; the calibration says 1088x1920."""
    rig = demo_rig()
    fitted = match_videos(rig, [("cam01", (1080, 1920)), ("cam02", (1088, 1920))])
    np.testing.assert_array_equal(fitted[0].K, rig[0].K)
    assert fitted[0].size == (1080, 1920)
    assert "cropped" in fitted.notes[0]
    half = match_videos(rig, [("cam01", (544, 960)), ("cam02", (1088, 1920))])
    assert half[0].K[0, 0] == pytest.approx(rig[0].K[0, 0] / 2)


def test_calibrate_rig_says_when_the_board_is_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The demo's extrinsic images show the lab, not the board: a clear error, quickly."""
    folder = INTRINSIC_IMAGES.parent
    if not folder.exists():
        pytest.skip("Pose2Sim samples missing: run `make fetch-samples`")
    code = main(
        [
            "calibrate-rig",
            *("--board", "4x7", "--square-mm", "60"),
            *("--intrinsics", str(folder / "intrinsics")),
            *("--extrinsics", str(folder / "extrinsics")),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "board (4x7 inner corners) is not found in its extrinsic image" in err


def test_unreadable_calibrations_say_why(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="not found"):
        load_calibration(tmp_path / "missing.toml")
    bad = tmp_path / "Calib.toml"
    bad.write_text("[cam01\nname=", encoding="utf-8")
    with pytest.raises(CalibrationError, match="not valid TOML"):
        load_calibration(bad)
    other = tmp_path / "calib.txt"
    other.write_text("hello", encoding="utf-8")
    with pytest.raises(CalibrationError, match="unknown calibration format"):
        load_calibration(other)
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"cam01": {"K": np.eye(3).tolist()}}), encoding="utf-8")
    with pytest.raises(CalibrationError, match="has none of"):
        load_calibration(js)
    assert DEMO_CALIB.name == "Calib.qca.txt"
