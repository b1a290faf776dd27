"""Pose detector backends behind one protocol, created by name.

Backends import lazily: asking for `replay` never loads mediapipe or torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from pose_analyzer.keypoints import PoseDetector

# backend -> (module, class, the constructor argument that `model` goes to)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "mediapipe": ("pose_analyzer.detectors.mediapipe_backend", "MediaPipeDetector", "model"),
    "yolo": ("pose_analyzer.detectors.yolo_backend", "YoloDetector", "weights"),
    "replay": ("pose_analyzer.detectors.replay", "ReplayDetector", "path"),
}


OFFLINE_SCAN_S = 0.5  # refine=True: tiles searched for unseen people this often

# The live mode of the re-detection search (live MediaPipe streams; measured in
# bench/bench_refine.py --only live, docs/identity.md "Live search"): crops around
# people lost in the last `lost_s`, tiles when the frame is empty, no scan for people
# never picked up (once found, someone the detector never sees costs a crop on every
# frame), at most `max_searches` landmarker calls per frame (a tile pass spreads over
# frames), someone who stays lost searched again every `retry_s`, the crop model loaded
# in the background when the stream starts.
LIVE_REFINE: dict[str, Any] = {
    "scan_every_s": None,
    "budget_ms": 30.0,
    "max_searches": 1,
    "retry_s": 0.5,
    "lost_s": 3.0,
    "tile_every_s": 1.0,
    "prefetch": True,
}


def create_detector(
    backend: str,
    model: str | None = None,
    *,
    refine: bool = False,
    refine_options: Mapping[str, Any] | None = None,
    **kw: Any,
) -> PoseDetector:
    """A detector for `backend`; `model` is a model name or path (replay: the keypoint file).

    refine=True wraps it in `refine.RefiningDetector` (a higher-resolution search where
    it finds nobody or loses someone); `refine_options` are that class's keyword options
    (budget_ms, lost_s, crop_size, tiles, scan_every_s, ...; scan_every_s defaults to
    OFFLINE_SCAN_S). Its crop detector is a MediaPipe image-mode landmarker of the same
    model when the backend is mediapipe, else of the full model.

    mediapipe: lite|full|heavy (from the models directory) or a .task path;
    yolo: a weights path (default: the models directory's yolo11n-pose.pt), or an
    Ultralytics model yaml (yolo11n-pose.yaml) for the architecture with random weights.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    detector = _create(backend, model, **kw)
    if not refine:
        return detector
    from pose_analyzer.detectors.refine import RefiningDetector

    options = dict(refine_options or {})
    # Offline (the only caller of refine=True so far) also scans for people the
    # detector never picked up, every half second; refine_options can turn it off (None).
    options.setdefault("scan_every_s", OFFLINE_SCAN_S)
    if backend == "mediapipe" and model is not None:
        options.setdefault("crop_model", model)
    if kw.get("models_dir") is not None:
        options.setdefault("models_dir", kw["models_dir"])
    return RefiningDetector(detector, **options)


def _create(backend: str, model: str | None, **kw: Any) -> PoseDetector:
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


__all__ = ["BACKENDS", "LIVE_REFINE", "OFFLINE_SCAN_S", "create_detector"]
