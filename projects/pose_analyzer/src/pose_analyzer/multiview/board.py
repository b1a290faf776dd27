"""A calibration computed from checkerboard or ChArUco images, with OpenCV.

Intrinsics per camera from many views of the board (OpenCV's calibrateCamera,
k3 fixed: 4 coefficients like Pose2Sim's toml); extrinsics from one image per
camera of the board at one shared pose (solvePnP): the world frame is the
board's (origin at its first inner corner, x along its columns, y along its
rows, z = x cross y, metres; for a checkerboard, which looks the same turned
by 180 degrees, the first corner is the one on the left of each camera's image,
so cameras facing the board agree). Each camera's reprojection error is reported:
the intrinsic RMS over its board views and the error of its extrinsic view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pose_analyzer.multiview.calibration import CalibrationError, Camera, CameraRig

DETECT_SIDE = 1000
OUTLIER_VIEW_FACTOR = 2.5


@dataclass(frozen=True)
class Board:
    """`cols` x `rows` inner corners, `square_m` apart; ChArUco when `aruco_dict` is set."""

    cols: int
    rows: int
    square_m: float
    aruco_dict: int | None = None  # e.g. cv2.aruco.DICT_4X4_50
    marker_m: float = 0.0

    def object_points(self) -> np.ndarray:
        """(cols*rows, 3) board coordinates of a checkerboard's inner corners, row-major."""
        g = np.zeros((self.rows * self.cols, 3), np.float32)
        g[:, :2] = np.mgrid[0 : self.cols, 0 : self.rows].T.reshape(-1, 2) * self.square_m
        return g

    def _charuco(self) -> cv2.aruco.CharucoBoard:
        dictionary = cv2.aruco.getPredefinedDictionary(int(self.aruco_dict or 0))
        marker = self.marker_m or 0.7 * self.square_m
        return cv2.aruco.CharucoBoard(
            (self.cols + 1, self.rows + 1), self.square_m, marker, dictionary
        )

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(object points (N,3), image points (N,2)) of the corners found, or None."""
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if self.aruco_dict is not None:
            detector = cv2.aruco.CharucoDetector(self._charuco())
            corners, ids, _, _ = detector.detectBoard(gray)
            if ids is None or len(ids) < 6:
                return None
            obj = np.asarray(self._charuco().getChessboardCorners(), np.float32)[ids.ravel()]
            return obj, corners.reshape(-1, 2).astype(np.float64)
        size = (self.cols, self.rows)
        # Corners are found on a copy at most DETECT_SIDE px wide (the search is what
        # costs), then refined to sub-pixel on the full image.
        scale = min(1.0, DETECT_SIDE / max(gray.shape))
        small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, corners = cv2.findChessboardCornersSB(small, size, flags=cv2.CALIB_CB_NORMALIZE_IMAGE)
        refine = scale < 1.0
        if not ok:
            flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
            ok, corners = cv2.findChessboardCorners(small, size, flags=flags)
            if not ok:
                return None
            refine = True
        if refine:  # SB's own corners are sub-pixel already where no resize happened
            corners = (corners.reshape(-1, 1, 2) + 0.5) / scale - 0.5
            win = max(3, round(5 / scale))
            criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-4)
            corners = cv2.cornerSubPix(
                gray, corners.astype(np.float32), (win, win), (-1, -1), criteria
            )
        return self.object_points(), corners.reshape(-1, 2).astype(np.float64)


@dataclass(frozen=True)
class IntrinsicResult:
    K: np.ndarray
    dist: np.ndarray
    rms_px: float
    views_used: int
    views_given: int


def calibrate_intrinsics(
    images: Sequence[np.ndarray], board: Board, *, min_views: int = 4
) -> IntrinsicResult:
    """K and distortion of one camera from several views of the board."""
    if not images:
        raise CalibrationError("no board images given")
    h, w = images[0].shape[:2]
    obj, img = [], []
    for image in images:
        if image.shape[:2] != (h, w):
            raise CalibrationError(
                f"board images of one camera differ in size: {image.shape[1]}x{image.shape[0]} "
                f"vs {w}x{h}"
            )
        found = board.detect(image)
        if found is not None:
            obj.append(found[0].astype(np.float32))
            img.append(found[1].astype(np.float32).reshape(-1, 1, 2))
    if len(obj) < min_views:
        raise CalibrationError(
            f"the board ({board.cols}x{board.rows} inner corners) was found in {len(obj)} of "
            f"{len(images)} images; at least {min_views} are needed. Check the corner count"
        )
    flags = cv2.CALIB_FIX_K3
    rms, K, dist, rvecs, tvecs = cv2.calibrateCamera(obj, img, (w, h), None, None, flags=flags)
    # A view whose corners fit far worse than the others (motion blur, a misdetected
    # corner) is dropped once, if enough views remain.
    per_view = np.array(
        [
            np.sqrt(np.mean((cv2.projectPoints(o, r, t, K, dist)[0] - i).reshape(-1, 2) ** 2) * 2)
            for o, i, r, t in zip(obj, img, rvecs, tvecs, strict=True)
        ]
    )
    keep = per_view <= max(OUTLIER_VIEW_FACTOR * float(np.median(per_view)), 0.5)
    if not keep.all() and keep.sum() >= min_views:
        obj = [o for o, k in zip(obj, keep, strict=True) if k]
        img = [i for i, k in zip(img, keep, strict=True) if k]
        rms, K, dist, _, _ = cv2.calibrateCamera(obj, img, (w, h), None, None, flags=flags)
    return IntrinsicResult(
        np.asarray(K), np.asarray(dist).ravel()[:5], float(rms), len(obj), len(images)
    )


@dataclass(frozen=True)
class RigCalibration:
    rig: CameraRig
    intrinsic_rms_px: dict[str, float]
    extrinsic_error_px: dict[str, float]


def calibrate_rig(
    intrinsic_images: Mapping[str, Sequence[np.ndarray]],
    extrinsic_images: Mapping[str, np.ndarray],
    board: Board,
    *,
    up: tuple[float, float, float] = (0.0, 0.0, 1.0),
) -> RigCalibration:
    """Every camera's intrinsics, then its pose from the one shared board view."""
    missing = set(intrinsic_images) ^ set(extrinsic_images)
    if missing:
        raise CalibrationError(
            f"cameras {sorted(missing)} lack either intrinsic or extrinsic board images"
        )
    cams, rms, ext_err = [], {}, {}
    shared = {}
    for name in sorted(intrinsic_images):  # the quick check first: the shared view
        found = board.detect(extrinsic_images[name])
        if found is None:
            raise CalibrationError(
                f"camera {name}: the board ({board.cols}x{board.rows} inner corners) is not "
                "found in its extrinsic image; every camera must see it at the shared pose"
            )
        shared[name] = found
    for name in sorted(intrinsic_images):
        intr = calibrate_intrinsics(intrinsic_images[name], board)
        image = extrinsic_images[name]
        obj, px = shared[name]
        if board.aruco_dict is None and px[board.cols - 1, 0] < px[0, 0]:
            # A checkerboard looks the same turned by 180 degrees, so the detector may
            # number its corners from either end; every camera facing the board must
            # agree on the world, so the first corner is the one on the image's left.
            px = px[::-1].copy()
        ok, rvec, tvec = cv2.solvePnP(obj, px, intr.K, intr.dist, flags=cv2.SOLVEPNP_ITERATIVE)
        if not ok:
            raise CalibrationError(f"camera {name}: the board pose could not be solved")
        h, w = image.shape[:2]
        cam = Camera(name, (w, h), intr.K, intr.dist, rvec.ravel(), tvec.ravel())
        err = np.linalg.norm(cam.project(obj) - px, axis=1)
        cams.append(cam)
        rms[name] = intr.rms_px
        ext_err[name] = float(np.sqrt(np.mean(err**2)))
    return RigCalibration(CameraRig(tuple(cams), source="board", up=up), rms, ext_err)
