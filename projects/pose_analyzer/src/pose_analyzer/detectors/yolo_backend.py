"""Ultralytics YOLO11-pose behind the PoseDetector protocol, batched.

YOLO-pose predicts the 17 COCO keypoints, which are the first 17 canonical
joints in the same order; heels and foot tips do not exist for it and stay
absent (NaN, confidence 0). One `detect` call runs its frames, from one stream
or many, as batches of `batch_size` through one forward pass each.

Nothing is ever downloaded: weights are a local file checked before
Ultralytics sees it (Ultralytics fetches a missing `*.pt` from GitHub by
itself), and `YOLO_OFFLINE=1` is set unless the user set it, which stops
Ultralytics' connectivity probe, update check and telemetry.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

COCO17: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
_COCO_DST = np.array([JOINT_INDEX[name] for name in COCO17], dtype=np.intp)
DEFAULT_WEIGHTS = "yolo11n-pose.pt"


def _import_yolo() -> Any:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    return YOLO


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def coco17_to_canonical(keypoints: npt.ArrayLike) -> FloatArray:
    """(N, 17, 3) COCO x, y, confidence -> (N, NUM_JOINTS, 3); joints COCO lacks are absent."""
    kp = np.asarray(keypoints, dtype=np.float32)
    if kp.ndim != 3 or kp.shape[1:] != (17, 3):
        raise ValueError(f"expected COCO keypoints of shape (N, 17, 3), got {kp.shape}")
    out = np.zeros((kp.shape[0], NUM_JOINTS, 3), dtype=np.float32)
    out[:, :, :2] = np.nan
    out[:, _COCO_DST] = kp
    out[:, _COCO_DST, 2] = np.clip(kp[:, :, 2], 0.0, 1.0)
    return out


def results_to_people(result: Any) -> list[PersonPose]:
    """One Ultralytics `Results` (or anything shaped like it) -> people in canonical joints.

    Uses `result.boxes.xyxy`, `result.boxes.conf` and `result.keypoints.data`
    (tensors or arrays), all in original-image pixels.
    """
    if result.keypoints is None:
        raise ValueError("the model returned no keypoints: is it a pose model (*-pose.pt)?")
    kp = _numpy(result.keypoints.data)
    if kp.size == 0:
        return []
    boxes = _numpy(result.boxes.xyxy).reshape(-1, 4)
    scores = _numpy(result.boxes.conf).reshape(-1)
    poses = coco17_to_canonical(kp)
    return [
        PersonPose(
            keypoints=poses[i],
            score=float(scores[i]),
            box=(float(boxes[i, 0]), float(boxes[i, 1]), float(boxes[i, 2]), float(boxes[i, 3])),
        )
        for i in range(poses.shape[0])
    ]


def common_shape_batch(
    frames: Sequence[np.ndarray], imgsz: int
) -> tuple[list[np.ndarray], list[float]]:
    """Frames of different sizes -> frames of one size, and the scale applied to each.

    Ultralytics letterboxes a batch of mixed sizes to a square imgsz x imgsz
    (its minimal-padding mode needs one shape). Views of 1080x1920 and 1088x1920
    would then cost 640x640 instead of 384x640 each: 1.7x the compute. Each frame
    is resized so its long side is imgsz and padded at the right and bottom (so
    pixel coordinates are unchanged up to the scale) to the batch's largest size.
    """
    if len({f.shape for f in frames}) <= 1:
        return list(frames), [1.0] * len(frames)
    scales = [min(1.0, imgsz / max(f.shape[:2])) for f in frames]
    resized = [
        f if s == 1.0 else cv2.resize(f, (round(f.shape[1] * s), round(f.shape[0] * s)))
        for f, s in zip(frames, scales, strict=True)
    ]
    h = max(f.shape[0] for f in resized)
    w = max(f.shape[1] for f in resized)
    padded = [
        cv2.copyMakeBorder(
            f, 0, h - f.shape[0], 0, w - f.shape[1], cv2.BORDER_CONSTANT, value=(114, 114, 114)
        )
        for f in resized
    ]
    return padded, scales


def _rescale(people: list[PersonPose], scale: float, width: int, height: int) -> None:
    """Back from a resized, padded frame to the original frame's pixels, in place."""
    for p in people:
        kp = p.keypoints
        kp[:, :2] /= scale
        np.clip(kp[:, 0], 0, width, out=kp[:, 0])
        np.clip(kp[:, 1], 0, height, out=kp[:, 1])
        if p.box is not None:
            x1, y1, x2, y2 = (v / scale for v in p.box)
            p.box = (min(x1, width), min(y1, height), min(x2, width), min(y2, height))


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


class YoloDetector:
    """YOLO11-pose detector over batches of frames (one or many streams)."""

    name = "yolo"

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        device: str = "auto",
        imgsz: int = 640,
        conf: float = 0.25,
        batch_size: int | None = None,
        models_dir: Path | None = None,
    ) -> None:
        self._configure(device, imgsz, conf, batch_size)
        if weights is None:
            if models_dir is None:
                from pose_analyzer.settings import get_settings

                models_dir = get_settings().models_dir
            weights = Path(models_dir) / DEFAULT_WEIGHTS
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(path, "YOLO pose weights")
        self.weights: Path | None = path.resolve()
        yolo = _import_yolo()
        try:
            self._model: Any = yolo(str(self.weights), task="pose")
        except Exception as exc:  # torch/pickle/ultralytics each raise their own kind
            raise RuntimeError(
                f"cannot load YOLO pose weights {self.weights}: {exc}. The file is not an "
                "Ultralytics checkpoint or is damaged; run `make download-models` again."
            ) from exc

    def _configure(self, device: str, imgsz: int, conf: float, batch_size: int | None) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(
                f"batch_size must be >= 1 or None (one batch per call), got {batch_size}"
            )
        self.device = resolve_device(device)
        self.imgsz = imgsz
        self.conf = conf
        self.batch_size = batch_size

    @classmethod
    def from_architecture(
        cls,
        cfg: str = "yolo11n-pose.yaml",
        *,
        seed: int = 0,
        device: str = "auto",
        imgsz: int = 640,
        conf: float = 0.25,
        batch_size: int | None = None,
    ) -> YoloDetector:
        """The real network from an Ultralytics model yaml, with random weights.

        Finds nobody, but runs the full compute path at the real cost: for tests
        and benchmarks where trained weights cannot be had.
        """
        import torch

        self = cls.__new__(cls)
        self._configure(device, imgsz, conf, batch_size)
        torch.manual_seed(seed)
        self.weights = None
        self._model = _import_yolo()(cfg, task="pose")
        return self

    def warmup(self, size: tuple[int, int] = (640, 480)) -> None:
        """One throwaway batch: Ultralytics sets its predictor up on the first call."""
        frame = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        self.detect([frame], [0.0])

    def detect(
        self, frames: Sequence[npt.NDArray[np.uint8]], timestamps: Sequence[float]
    ) -> list[list[PersonPose]]:
        if len(frames) != len(timestamps):
            raise ValueError(f"{len(frames)} frames but {len(timestamps)} timestamps")
        if not frames:
            return []
        step = self.batch_size or len(frames)
        out: list[list[PersonPose]] = []
        for start in range(0, len(frames), step):
            originals = frames[start : start + step]
            batch, scales = common_shape_batch(originals, self.imgsz)
            results = self._model.predict(
                batch,
                imgsz=self.imgsz,
                conf=self.conf,
                device=self.device,
                quantize=16 if self.device.startswith("cuda") else None,
                batch=len(batch),
                verbose=False,
            )
            for result, scale, frame in zip(results, scales, originals, strict=True):
                people = results_to_people(result)
                if scale != 1.0:
                    _rescale(people, scale, frame.shape[1], frame.shape[0])
                out.append(people)
        return out

    def close(self) -> None:
        self._model = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def __enter__(self) -> YoloDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
