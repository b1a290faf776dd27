"""Pose detector backends behind one protocol, created by name.

Backends import lazily: asking for `replay` never loads mediapipe or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from pose_analyzer.keypoints import PoseDetector

# backend -> (module, class, the constructor argument that `model` goes to)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "mediapipe": ("pose_analyzer.detectors.mediapipe_backend", "MediaPipeDetector", "model"),
    "yolo": ("pose_analyzer.detectors.yolo_backend", "YoloDetector", "weights"),
    "replay": ("pose_analyzer.detectors.replay", "ReplayDetector", "path"),
}


def create_detector(backend: str, model: str | None = None, **kw: Any) -> PoseDetector:
    """A detector for `backend`; `model` is a model name or path (replay: the keypoint file).

    mediapipe: lite|full|heavy (from the models directory) or a .task path;
    yolo: a weights path (default: the models directory's yolo11n-pose.pt), or an
    Ultralytics model yaml (yolo11n-pose.yaml) for the architecture with random weights.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    module_name, class_name, model_arg = BACKENDS[backend]
    cls = getattr(importlib.import_module(module_name), class_name)
    if backend == "yolo" and model is not None and model.endswith((".yaml", ".yml")):
        # An Ultralytics model yaml: the real architecture with random weights (no
        # detections, real cost), for benchmarks and machines without trained weights.
        kw.pop("models_dir", None)
        architecture: PoseDetector = cls.from_architecture(model, **kw)
        return architecture
    if model is not None:
        kw = {model_arg: model, **kw}
    detector: PoseDetector = cls(**kw)
    return detector


__all__ = ["BACKENDS", "create_detector"]
