"""Pose detector backends behind one protocol, created by name.

Backends import lazily: asking for `replay` never loads mediapipe or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from pose_analyzer.keypoints import PoseDetector

BACKENDS: dict[str, tuple[str, str]] = {
    "mediapipe": ("pose_analyzer.detectors.mediapipe_backend", "MediaPipeDetector"),
    "yolo": ("pose_analyzer.detectors.yolo_backend", "YoloDetector"),
    "replay": ("pose_analyzer.detectors.replay", "ReplayDetector"),
}


def create_detector(backend: str, model: str | None = None, **kw: Any) -> PoseDetector:
    """A detector for `backend`; `model` is a model name or path (replay: the keypoint file)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[backend]
    cls = getattr(importlib.import_module(module_name), class_name)
    if model is not None:
        kw = {"model" if backend != "replay" else "path": model, **kw}
    detector: PoseDetector = cls(**kw)
    return detector


__all__ = ["BACKENDS", "create_detector"]
