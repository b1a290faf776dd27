"""MediaPipe Pose Landmarker (Tasks API) behind the PoseDetector protocol.

Confidence of a joint is the landmark's *visibility*: the model's probability
that the joint is in the image and not occluded. Presence only says the joint
is inside the image, so an occluded knee behind the other leg keeps a high
presence while its position is a guess; angles must not trust such a joint, so
visibility is what gates them downstream.

In video mode the landmarker tracks people between calls, so one detector
serves one stream, with timestamps that increase strictly.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import tempfile
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from pose_analyzer.keypoints import (
    JOINT_INDEX,
    NUM_JOINTS,
    FloatArray,
    ModelNotFoundError,
    PersonPose,
)

MODEL_NAMES = ("lite", "full", "heavy")

# BlazePose's 33 landmarks -> canonical joints (the hands and mouth are dropped).
BLAZEPOSE_TO_CANONICAL: dict[int, str] = {
    0: "nose",
    2: "left_eye",
    5: "right_eye",
    7: "left_ear",
    8: "right_ear",
    11: "left_shoulder",
    12: "right_shoulder",
    13: "left_elbow",
    14: "right_elbow",
    15: "left_wrist",
    16: "right_wrist",
    23: "left_hip",
    24: "right_hip",
    25: "left_knee",
    26: "right_knee",
    27: "left_ankle",
    28: "right_ankle",
    29: "left_heel",
    30: "right_heel",
    31: "left_foot_index",
    32: "right_foot_index",
}
_SRC = np.array(list(BLAZEPOSE_TO_CANONICAL), dtype=np.intp)
_DST = np.array([JOINT_INDEX[n] for n in BLAZEPOSE_TO_CANONICAL.values()], dtype=np.intp)
if sorted(_DST.tolist()) != list(range(NUM_JOINTS)):  # every canonical joint exactly once
    raise RuntimeError("BlazePose mapping does not cover the canonical joints")


# Parts of the mediapipe package the pose landmarker never uses but the package imports
# eagerly (python -X importtime on this machine): the vision drawing helpers, which
# import matplotlib.pyplot at module level (~1.9 s of the package's 2.2 s), and the
# audio recorder, which imports sounddevice (~0.2 s).
_UNUSED_MEDIAPIPE = (
    "mediapipe.tasks.python.vision.drawing_utils",
    "mediapipe.tasks.python.vision.drawing_styles",
    "mediapipe.tasks.python.audio.core.audio_record",
)


class _Deferred(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of the `_UNUSED_MEDIAPIPE` modules give a stand-in that imports the real
    module on first attribute use (PEP 562 module __getattr__): nothing changes for a
    caller that does use one, it only pays then."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = set(names)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in self.names:
            return None
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec: Any) -> types.ModuleType:
        name = spec.name
        stub = types.ModuleType(name)

        def load(attr: str) -> Any:
            if attr.startswith("__"):
                raise AttributeError(attr)
            self.names.discard(name)
            if sys.modules.get(name) is stub:
                del sys.modules[name]
            real = importlib.import_module(name)
            parent, _, child = name.rpartition(".")
            if parent in sys.modules:
                setattr(sys.modules[parent], child, real)
            return getattr(real, attr)

        stub.__getattr__ = load  # type: ignore[method-assign]
        return stub

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def import_mediapipe() -> tuple[Any, Any, Any]:
    """(mediapipe, BaseOptions, vision), without paying for the parts of the package the
    pose landmarker does not use (`_UNUSED_MEDIAPIPE`): they are deferred, i.e. really
    imported only if something touches them."""
    if "mediapipe" not in sys.modules:
        finder = _Deferred(_UNUSED_MEDIAPIPE)
        sys.meta_path.insert(0, finder)
        try:
            import mediapipe as mp
        finally:
            sys.meta_path.remove(finder)
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    return mp, BaseOptions, vision


def resolve_model_path(model: str | Path, models_dir: Path | None = None) -> Path:
    """`lite|full|heavy` -> `<models_dir>/pose_landmarker_{model}.task`; anything else is a path."""
    if isinstance(model, str) and model in MODEL_NAMES:
        if models_dir is None:
            from pose_analyzer.settings import get_settings

            models_dir = get_settings().models_dir
        path = Path(models_dir) / f"pose_landmarker_{model}.task"
    else:
        path = Path(model).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(path, f"MediaPipe pose landmarker model {str(model)!r}")
    return path


def blazepose_to_canonical(
    landmarks: npt.ArrayLike, width: int, height: int
) -> tuple[FloatArray, tuple[float, float, float, float]]:
    """(33, 3) normalized x, y, confidence -> canonical (NUM_JOINTS, 3) in pixels, and a box.

    The box spans all 33 landmarks (hands and mouth included), clipped to the image.
    """
    lm = np.asarray(landmarks, dtype=np.float32)
    if lm.shape != (33, 3):
        raise ValueError(f"expected 33 BlazePose landmarks with (x, y, conf), got {lm.shape}")
    scale = np.array([width, height], dtype=np.float32)
    pose = np.empty((NUM_JOINTS, 3), dtype=np.float32)
    pose[_DST, :2] = lm[_SRC, :2] * scale
    pose[_DST, 2] = np.clip(lm[_SRC, 2], 0.0, 1.0)
    xy = lm[:, :2] * scale
    x1, y1 = np.clip(xy.min(axis=0), 0, scale)
    x2, y2 = np.clip(xy.max(axis=0), 0, scale)
    return pose, (float(x1), float(y1), float(x2), float(y2))


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """OpenCV's BGR (or gray, or BGRA) -> contiguous RGB, as MediaPipe expects."""
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    raise ValueError(f"expected a BGR image of shape (H, W, 3), got {frame.shape}")


class _Captured:
    text = ""


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[_Captured]:
    """Keep MediaPipe's native start-up chatter (~50 glog/TFLite lines per detector,
    which GLOG_minloglevel does not silence) out of the terminal; the text is kept
    for the error message if loading fails. Python's own stderr is untouched."""
    captured = _Captured()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters)
        yield captured
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode(errors="replace")


class MediaPipeDetector:
    """Several people per frame from MediaPipe's BlazePose landmarker."""

    name = "mediapipe"

    def __init__(
        self,
        model: str | Path = "full",
        *,
        mode: Literal["image", "video"] = "video",
        num_poses: int = 4,
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        models_dir: Path | None = None,
    ) -> None:
        if mode not in ("image", "video"):
            raise ValueError(f"mode must be 'image' or 'video', got {mode!r}")
        if num_poses < 1:
            raise ValueError(f"num_poses must be >= 1, got {num_poses}")
        self.model_path = resolve_model_path(model, models_dir)
        self.mode = mode
        self.num_poses = num_poses

        mp, BaseOptions, vision = import_mediapipe()

        self._mp = mp
        options = vision.PoseLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path)),
            running_mode=(
                vision.RunningMode.VIDEO if mode == "video" else vision.RunningMode.IMAGE
            ),
            num_poses=num_poses,
            min_pose_detection_confidence=min_detection_confidence,
            min_pose_presence_confidence=min_presence_confidence,
            min_tracking_confidence=min_tracking_confidence,
            output_segmentation_masks=False,
        )
        try:
            with native_stderr_captured() as native_log:
                self._landmarker = vision.PoseLandmarker.create_from_options(options)
        except RuntimeError as exc:
            detail = native_log.text.strip().splitlines()[-3:]
            raise RuntimeError(
                f"cannot load the MediaPipe pose model {self.model_path}: {exc}. The file is "
                "not a pose landmarker .task bundle or is damaged; run `make download-models` "
                "to provision it again."
                + (f" (MediaPipe said: {' | '.join(detail)})" if detail else "")
            ) from exc
        self._last_ms = -1

    def _timestamp_ms(self, t: float) -> int:
        ms = round(t * 1000.0)
        if ms <= self._last_ms:
            # Frames closer than 1 ms (or a clock that stepped back): keep MediaPipe's
            # strictly increasing requirement rather than failing the stream.
            ms = self._last_ms + 1
        self._last_ms = ms
        return ms

    def detect_one(self, frame: npt.NDArray[np.uint8], t: float = 0.0) -> list[PersonPose]:
        height, width = frame.shape[:2]
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=to_rgb(frame))
        if self.mode == "video":
            result = self._landmarker.detect_for_video(image, self._timestamp_ms(t))
        else:
            result = self._landmarker.detect(image)
        people = []
        for landmarks in result.pose_landmarks:
            raw = np.array(
                [(lm.x, lm.y, lm.visibility or 0.0, lm.presence or 0.0) for lm in landmarks],
                dtype=np.float32,
            )
            pose, box = blazepose_to_canonical(raw[:, :3], width, height)
            people.append(PersonPose(keypoints=pose, score=float(raw[:, 3].mean()), box=box))
        return people

    def detect(
        self, frames: Sequence[npt.NDArray[np.uint8]], timestamps: Sequence[float]
    ) -> list[list[PersonPose]]:
        if len(frames) != len(timestamps):
            raise ValueError(f"{len(frames)} frames but {len(timestamps)} timestamps")
        return [self.detect_one(f, t) for f, t in zip(frames, timestamps, strict=True)]

    def close(self) -> None:
        if self._landmarker is not None:
            with native_stderr_captured():
                self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> MediaPipeDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
