"""Camera calibrations: one OpenCV pinhole model for every file format people have.

Internally every camera is OpenCV's model: `K` (pixels), distortion
`(k1, k2, p1, p2, k3)`, and the world-to-camera transform `x_cam = R @ X + t`
with the world in metres (camera x right, y down, z forward). Readers convert
into it; nothing downstream knows where a calibration came from.

Formats (docs/multiview.md has the details and the proof of each convention):
- Pose2Sim `Calib*.toml`: one table per camera, `matrix`, `distortions`
  `[k1, k2, p1, p2]`, `rotation` (Rodrigues, world to camera), `translation` (m).
- Qualisys `.qca.txt`: focal length and centre in sensor units (64 per pixel), the camera's
  position in mm and an orientation whose camera looks down its -z with y up;
  converted by taking the rotation as world-to-camera and turning the camera
  by pi about its own x axis (y and z flip) to reach OpenCV's camera axes.
- OpenCV JSON (`{name: {K, dist, rvec|R, tvec, size}}`, optionally under
  `cameras`) and OpenCV FileStorage YAML (EasyMocap's `K_name`, `dist_name`,
  `R_name`|`Rot_name`, `T_name` keys, optionally `names`).
"""

from __future__ import annotations

import json
import math
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the backport
    import tomli as tomllib


class CalibrationError(ValueError):
    """A calibration file that cannot be read, or that does not fit the videos."""


# Qualisys stores intrinsics in sub-pixel sensor units: 64 per pixel.
QUALISYS_SUBPIXELS = 64.0
# Video codecs code frames in 16-pixel macroblocks and crop the last one at the
# right/bottom edge; a decoded frame up to this much smaller than the calibrated
# sensor is the same image with the same pixel coordinates.
CODEC_CROP_PX = 16


def _rx(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


@dataclass(frozen=True)
class Camera:
    """One calibrated camera: OpenCV pinhole with distortion, world to camera in metres."""

    name: str
    size: tuple[int, int]  # width, height in pixels of the calibrated image
    K: np.ndarray  # (3, 3)
    dist: np.ndarray  # (5,) k1, k2, p1, p2, k3
    R: np.ndarray  # (3, 3) world -> camera
    t: np.ndarray  # (3,) metres
    note: str = ""  # how the camera was fitted to its video, when it had to be

    def __post_init__(self) -> None:
        object.__setattr__(self, "K", np.asarray(self.K, dtype=np.float64).reshape(3, 3))
        d = np.zeros(5)
        raw = np.asarray(self.dist, dtype=np.float64).ravel()
        if raw.size > 5:
            raise CalibrationError(
                f"camera {self.name}: {raw.size} distortion coefficients; this model takes "
                "up to 5 (k1, k2, p1, p2, k3)"
            )
        d[: raw.size] = raw
        object.__setattr__(self, "dist", d)
        r: np.ndarray = np.asarray(self.R, dtype=np.float64)
        if r.size == 3:
            r = np.asarray(cv2.Rodrigues(r.reshape(3, 1))[0], dtype=np.float64)
        r = r.reshape(3, 3)
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-5) or np.linalg.det(r) < 0:
            raise CalibrationError(f"camera {self.name}: the rotation is not a proper rotation")
        object.__setattr__(self, "R", r)
        object.__setattr__(self, "t", np.asarray(self.t, dtype=np.float64).reshape(3))
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates (metres)."""
        return np.asarray(-self.R.T @ self.t)

    @property
    def rvec(self) -> np.ndarray:
        return np.asarray(cv2.Rodrigues(self.R)[0]).ravel()

    @property
    def extrinsic(self) -> np.ndarray:
        """[R | t] (3, 4): the projection matrix in normalised (undistorted) coordinates."""
        return np.hstack([self.R, self.t[:, None]])

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) @ self.R.T + self.t

    def project(self, points: np.ndarray) -> np.ndarray:
        """Pixels (..., 2) of world points (..., 3) with distortion; NaN behind the camera."""
        pc = self.to_camera(points)
        z = pc[..., 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            x, y = pc[..., 0] / z, pc[..., 1] / z
        k1, k2, p1, p2, k3 = self.dist
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        K = self.K
        u = K[0, 0] * xd + K[0, 1] * yd + K[0, 2]
        v = K[1, 1] * yd + K[1, 2]
        out = np.stack([u, v], axis=-1)
        out[~(z > 1e-9)] = np.nan
        return out

    def undistort(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised image coordinates (..., 2) of pixels (..., 2): points, never images."""
        px = np.asarray(pixels, dtype=np.float64)
        flat = px.reshape(-1, 1, 2)
        out = np.full(flat.shape, np.nan)
        ok = np.asarray(np.isfinite(flat).all(axis=2))[:, 0]
        if ok.any():
            if np.any(self.dist):
                und = cv2.undistortPoints(
                    flat[ok],
                    self.K,
                    self.dist,
                    criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-12),
                )
            else:
                inv = np.linalg.inv(self.K)
                h = np.concatenate([flat[ok, 0], np.ones((int(ok.sum()), 1))], axis=1) @ inv.T
                und = (h[:, :2] / h[:, 2:])[:, None, :]
            out[ok] = und
        return out.reshape(px.shape)

    def rays(self, pixels: np.ndarray) -> np.ndarray:
        """Unit world directions (..., 3) of the rays through pixels (..., 2)."""
        n = self.undistort(pixels)
        d = np.concatenate([n, np.ones((*n.shape[:-1], 1))], axis=-1) @ self.R
        return np.asarray(d / np.linalg.norm(d, axis=-1, keepdims=True))

    @property
    def focal_px(self) -> float:
        return float((self.K[0, 0] + self.K[1, 1]) / 2)


@dataclass(frozen=True)
class CameraRig:
    """The calibrated cameras of one recording, in a fixed order."""

    cameras: tuple[Camera, ...]
    source: str = ""
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)  # world vertical (Pose2Sim/Qualisys: +z)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise CalibrationError(f"camera names repeat in the calibration: {names}")

    def __len__(self) -> int:
        return len(self.cameras)

    def __iter__(self) -> Iterator[Camera]:
        return iter(self.cameras)

    def __getitem__(self, i: int) -> Camera:
        return self.cameras[i]

    @cached_property
    def names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def extrinsics(self) -> np.ndarray:
        """(V, 3, 4) stacked [R | t] of every camera."""
        return self._stacked_extrinsics

    @cached_property
    def _stacked_extrinsics(self) -> np.ndarray:
        return np.stack([c.extrinsic for c in self.cameras])

    @cached_property
    def _stacked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.stack([c.R for c in self.cameras]),
            np.stack([c.t for c in self.cameras]),
            np.stack([c.K for c in self.cameras]),
            np.stack([c.dist for c in self.cameras])[:, None, :],
        )

    def project(self, points: np.ndarray) -> np.ndarray:
        """Pixels (V, ..., 2) of world points (..., 3) in every camera."""
        return np.stack([c.project(points) for c in self.cameras])

    def project_each(self, points: np.ndarray) -> np.ndarray:
        """Pixels (V, N, 2): camera v's projection of its own points (V, N, 3), in one pass."""
        R, t, K, d = self._stacked
        pc = np.matmul(points, R.transpose(0, 2, 1)) + t[:, None, :]
        z = pc[..., 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            x, y = pc[..., 0] / z, pc[..., 1] / z
        r2 = x * x + y * y
        radial = 1 + r2 * (d[..., 0] + r2 * (d[..., 1] + r2 * d[..., 4]))
        xy = 2 * x * y
        xd = x * radial + d[..., 2] * xy + d[..., 3] * (r2 + 2 * x * x)
        yd = y * radial + d[..., 2] * (r2 + 2 * y * y) + d[..., 3] * xy
        u = K[:, None, 0, 0] * xd + K[:, None, 0, 1] * yd + K[:, None, 0, 2]
        v = K[:, None, 1, 1] * yd + K[:, None, 1, 2]
        out = np.stack([u, v], axis=-1)
        out[~(z > 1e-9)] = np.nan
        return out

    def subset(self, names: Sequence[str]) -> CameraRig:
        by = {c.name: c for c in self.cameras}
        return replace(self, cameras=tuple(by[n] for n in names))


def natural_key(s: str) -> list[Any]:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", s)]


# --- readers -------------------------------------------------------------------------


def read_qualisys(path: str | Path, binning: int = 1) -> CameraRig:
    """A Qualisys `.qca.txt` (QTM XML export)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise CalibrationError(f"{path} is not a Qualisys .qca.txt XML file: {exc}") from exc
    cams = []
    for i, tag in enumerate(root.findall("cameras/camera")):
        name = tag.get("serial") or f"cam{i + 1:02d}"
        if tag.get("active", "1") == "0":
            continue
        fov = tag.find("fov_video")
        intr = tag.find("intrinsic")
        tr = tag.find("transform")
        if fov is None or intr is None or tr is None:
            raise CalibrationError(
                f"{path}: camera {name} lacks fov_video, intrinsic or transform; "
                "export the calibration again from QTM"
            )

        def f(el: ET.Element, key: str, name: str = name) -> float:
            value = el.get(key)
            if value is None:
                raise CalibrationError(f"{path}: camera {name}: attribute {key} missing")
            return float(value)

        left, top = f(fov, "left"), f(fov, "top")
        w = (f(fov, "right") - left + 1) / binning
        h = (f(fov, "bottom") - top + 1) / binning
        unit = QUALISYS_SUBPIXELS * binning
        K = np.array(
            [
                [f(intr, "focalLengthU") / unit, 0.0, f(intr, "centerPointU") / unit - left],
                [0.0, f(intr, "focalLengthV") / unit, f(intr, "centerPointV") / unit - top],
                [0.0, 0.0, 1.0],
            ]
        )
        # Distortion coefficients are dimensionless (normalised image coordinates): not
        # in sensor units. Pose2Sim 0.10 divides them by 64 as well; OpenCV's calibration
        # of the demo's own checkerboard images gives k1 -0.05, k2 0.15 for these
        # cameras, i.e. the file's values as they stand (docs/multiview.md).
        dist = [
            f(intr, "radialDistortion1"),
            f(intr, "radialDistortion2"),
            f(intr, "tangentalDistortion1"),
            f(intr, "tangentalDistortion2"),
            f(intr, "radialDistortion3") if intr.get("radialDistortion3") else 0.0,
        ]
        m = np.array([[f(tr, f"r{r}{c}") for c in (1, 2, 3)] for r in (1, 2, 3)])
        position = np.array([f(tr, "x"), f(tr, "y"), f(tr, "z")]) / 1000.0
        # `m` maps world to the camera's own (y up, looking down -z) axes; turning the
        # camera by pi about its x axis gives OpenCV's (y down, looking down +z).
        R = _rx(math.pi) @ m
        cams.append(Camera(name, (round(w), round(h)), K, np.array(dist), R, -R @ position))
    if not cams:
        raise CalibrationError(f"{path} holds no active camera")
    cams.sort(key=lambda c: natural_key(c.name))
    return CameraRig(tuple(cams), source=str(path))


def _camera_from_mapping(name: str, d: dict[str, Any], where: str, scale: float) -> Camera:
    def pick(*keys: str) -> Any:
        for k in keys:
            if k in d:
                return d[k]
        raise CalibrationError(f"{where}: camera {name} has none of {', '.join(keys)}")

    K = np.asarray(pick("matrix", "K", "camera_matrix", "intrinsics"), dtype=np.float64)
    dist = np.asarray(pick("distortions", "dist", "distortion", "dist_coeffs"), dtype=np.float64)
    rot = np.asarray(pick("rotation", "rvec", "R", "Rot"), dtype=np.float64)
    t = np.asarray(pick("translation", "tvec", "t", "T"), dtype=np.float64).ravel() * scale
    size = d.get("size") or d.get("image_size")
    if size is None and "width" in d and "height" in d:
        size = (d["width"], d["height"])
    if size is None:
        # No image size: the principal point is about the image centre.
        size = (round(2 * K.reshape(3, 3)[0, 2]), round(2 * K.reshape(3, 3)[1, 2]))
    if bool(d.get("fisheye", False)):
        raise CalibrationError(
            f"{where}: camera {name} is a fisheye model; only the pinhole model is supported"
        )
    try:
        return Camera(str(d.get("name", name)), (int(size[0]), int(size[1])), K, dist, rot, t)
    except (ValueError, TypeError) as exc:
        raise CalibrationError(f"{where}: camera {name}: {exc}") from exc


def read_pose2sim_toml(path: str | Path) -> CameraRig:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise CalibrationError(f"{path} is not valid TOML: {exc}") from exc
    cams = [
        _camera_from_mapping(key, value, str(path), 1.0)
        for key, value in data.items()
        if key != "metadata" and isinstance(value, dict)
    ]
    if not cams:
        raise CalibrationError(f"{path} holds no camera table")
    return CameraRig(tuple(cams), source=str(path))


def read_opencv_json(path: str | Path) -> CameraRig:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CalibrationError(f"{path}: expected an object of cameras")
    scale = {"m": 1.0, "mm": 0.001, "cm": 0.01}.get(str(data.get("units", "m")))
    if scale is None:
        raise CalibrationError(f"{path}: units must be m, cm or mm, got {data.get('units')!r}")
    cameras = data.get("cameras", data)
    if isinstance(cameras, list):
        items = [(str(c.get("name", f"cam{i + 1:02d}")), c) for i, c in enumerate(cameras)]
    else:
        items = [(k, v) for k, v in cameras.items() if isinstance(v, dict)]
    cams = [_camera_from_mapping(k, v, str(path), scale) for k, v in items]
    if not cams:
        raise CalibrationError(f"{path} holds no camera")
    return CameraRig(tuple(cams), source=str(path))


def read_opencv_yaml(path: str | Path) -> CameraRig:
    """OpenCV FileStorage YAML/XML; EasyMocap's intri.yml + extri.yml pair is read together."""
    path = Path(path)
    nodes: dict[str, Any] = {}
    names: list[str] = []
    files = [path]
    sibling = {"intri": "extri", "extri": "intri"}.get(path.stem)
    if sibling is not None and (path.parent / f"{sibling}{path.suffix}").exists():
        files.append(path.parent / f"{sibling}{path.suffix}")
    for file in files:
        fs = cv2.FileStorage(str(file), cv2.FILE_STORAGE_READ)
        if not fs.isOpened():
            raise CalibrationError(f"{file} cannot be read as an OpenCV FileStorage file")
        root = fs.root()
        for key in root.keys():  # noqa: SIM118 (a FileNode, not a dict)
            node = root.getNode(key)
            if key == "names":
                names = [node.at(i).string() for i in range(node.size())]
            elif node.isMap() or node.isSeq():
                mat = node.mat()
                nodes[key] = mat if mat is not None else None
            else:
                nodes[key] = node.real()
        fs.release()
    if not names:
        names = sorted({k[2:] for k in nodes if k.startswith("K_")}, key=natural_key)
    if not names:
        raise CalibrationError(f"{path}: no K_<camera> matrices found")
    cams = []
    for name in names:
        d: dict[str, Any] = {}
        for key, alias in (
            ("K", "K"),
            ("dist", "dist"),
            ("D", "dist"),
            ("Rot", "R"),
            ("R", "rvec"),
            ("T", "t"),
        ):
            value = nodes.get(f"{key}_{name}")
            if value is not None and alias not in d:
                d[alias] = value
        if "R" in d:
            d.pop("rvec", None)
        if "W" in nodes or f"W_{name}" in nodes:
            d["size"] = (nodes.get(f"W_{name}", nodes.get("W")), nodes.get(f"H_{name}"))
        cams.append(_camera_from_mapping(name, d, str(path), 1.0))
    return CameraRig(tuple(cams), source=str(path))


def load_calibration(path: str | Path) -> CameraRig:
    """Read any supported calibration file, chosen by its name."""
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration file not found: {path}")
    if not path.is_file():
        raise CalibrationError(f"{path} is not a file; pass a calibration file")
    name = path.name.lower()
    if name.endswith((".qca.txt", ".qca")):
        return read_qualisys(path)
    if name.endswith(".toml"):
        return read_pose2sim_toml(path)
    if name.endswith(".json"):
        return read_opencv_json(path)
    if name.endswith((".yml", ".yaml", ".xml")):
        return read_opencv_yaml(path)
    raise CalibrationError(
        f"{path}: unknown calibration format; expected a Pose2Sim .toml, a Qualisys .qca.txt, "
        "or an OpenCV .json/.yml"
    )


# --- writers -------------------------------------------------------------------------


def _floats(values: Sequence[float] | np.ndarray) -> str:
    return "[ " + ", ".join(repr(float(v)) for v in values) + "]"


def write_pose2sim_toml(rig: CameraRig, path: str | Path, error_px: float = 0.0) -> Path:
    """Pose2Sim's Calib.toml: Pose2Sim, Sports2D and this package read it back."""
    lines = []
    for cam in rig.cameras:
        K = cam.K
        lines += [
            f"[{cam.name}]",
            f'name = "{cam.name}"',
            f"size = {_floats(cam.size)}",
            f"matrix = [ {_floats(K[0])}, {_floats(K[1])}, {_floats(K[2])}]",
            f"distortions = {_floats(cam.dist[:4])}",
            f"rotation = {_floats(cam.rvec)}",
            f"translation = {_floats(cam.t)}",
            "fisheye = false",
            "",
        ]
    lines += ["[metadata]", "adjusted = false", f"error = {float(error_px)!r}", ""]
    out = Path(path)
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def write_opencv_json(rig: CameraRig, path: str | Path) -> Path:
    data = {
        "units": "m",
        "cameras": {
            c.name: {
                "size": list(c.size),
                "K": c.K.tolist(),
                "dist": c.dist.tolist(),
                "rvec": c.rvec.tolist(),
                "tvec": c.t.tolist(),
            }
            for c in rig.cameras
        },
    }
    out = Path(path)
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return out


# --- matching a calibration to videos ------------------------------------------------


def match_videos(
    rig: CameraRig,
    videos: Sequence[tuple[str, tuple[int, int]]],
    *,
    by_order: bool = False,
) -> CameraRig:
    """The rig's cameras in the order of `videos` (name, (width, height)), checked.

    Cameras are matched to videos by name (the video's file stem equals or
    contains the camera name), or by position with `by_order`. Image sizes must
    agree; a video up to one codec macroblock (16 px) narrower or shorter than the
    calibrated image is the same picture cropped at the right/bottom edge, so
    pixel coordinates and intrinsics are unchanged (a note says so). A video of
    the same aspect ratio at a different resolution gets scaled intrinsics.
    """
    if len(videos) < 2:
        raise CalibrationError(
            f"{len(videos)} video given: triangulation needs at least two calibrated views"
        )
    if len(videos) > len(rig):
        raise CalibrationError(
            f"{len(videos)} videos but the calibration {rig.source or ''} has {len(rig)} "
            f"cameras ({', '.join(rig.names)}); pass one video per calibrated camera"
        )
    by_name = {c.name: c for c in rig.cameras}
    chosen: list[Camera] = []
    if by_order:
        if len(videos) != len(rig):
            raise CalibrationError(
                f"--by-order needs one video per camera: {len(videos)} videos, {len(rig)} cameras"
            )
        chosen = list(rig.cameras)
    else:
        for stem, _ in videos:
            hits = [n for n in by_name if n == stem] or [
                n for n in by_name if n.lower() in stem.lower()
            ]
            if len(hits) != 1:
                raise CalibrationError(
                    f"video {stem!r} matches {'no' if not hits else 'several'} camera name of "
                    f"the calibration ({', '.join(rig.names)}); name each video after its "
                    "camera (cam01.mp4 ...) or pass --by-order to pair them in order"
                )
            chosen.append(by_name[hits[0]])
        if len({c.name for c in chosen}) != len(chosen):
            raise CalibrationError(f"two videos match the same camera: {[c.name for c in chosen]}")
    notes = list(rig.notes)
    fitted = []
    for cam, (stem, (w, h)) in zip(chosen, videos, strict=True):
        cw, ch = cam.size
        if (w, h) == (cw, ch):
            fitted.append(cam)
        elif 0 <= cw - w < CODEC_CROP_PX and 0 <= ch - h < CODEC_CROP_PX:
            note = (
                f"{stem}: video {w}x{h}, calibration {cw}x{ch}: taken as the same image "
                "cropped at the right/bottom edge (codec macroblock padding); intrinsics kept"
            )
            notes.append(note)
            fitted.append(replace(cam, size=(w, h), note=note))
        elif (w, h) == (ch, cw):
            raise CalibrationError(
                f"video {stem} is {w}x{h} but camera {cam.name} was calibrated at {cw}x{ch}: "
                "the video is rotated by 90 degrees; rotate it back or recalibrate"
            )
        elif abs(w / cw - h / ch) < 1e-3:
            s = w / cw
            K = cam.K.copy()
            K[:2] *= s
            note = f"{stem}: video {w}x{h}, calibration {cw}x{ch}: intrinsics scaled by {s:.4f}"
            notes.append(note)
            fitted.append(replace(cam, size=(w, h), K=K, note=note))
        else:
            raise CalibrationError(
                f"video {stem} is {w}x{h} but camera {cam.name} was calibrated at {cw}x{ch}; "
                "use the calibration made for these videos"
            )
    return CameraRig(tuple(fitted), source=rig.source, up=rig.up, notes=tuple(notes))
