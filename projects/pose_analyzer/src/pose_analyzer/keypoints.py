"""Canonical keypoints shared by every detector backend and every consumer.

A pose is a float32 array of shape (len(JOINTS), 3): x and y in pixels and a
confidence in [0, 1]. A joint that a backend does not provide is absent: its
x and y are NaN and its confidence is 0. Nothing is ever invented for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

JOINTS: tuple[str, ...] = (
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
    "left_heel",
    "right_heel",
    "left_foot_index",
    "right_foot_index",
)
JOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(JOINTS)}
NUM_JOINTS = len(JOINTS)

FloatArray = npt.NDArray[np.float32]


def empty_pose() -> FloatArray:
    """A pose with every joint absent."""
    pose = np.zeros((NUM_JOINTS, 3), dtype=np.float32)
    pose[:, :2] = np.nan
    return pose


@dataclass
class PersonPose:
    """One detected person in one frame."""

    keypoints: FloatArray  # (NUM_JOINTS, 3): x px, y px, confidence
    score: float = 1.0  # detector's person confidence
    box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 in pixels
    track_id: int | None = None  # set by the tracker, never by a detector


@dataclass
class FramePoses:
    """Everything detected in one frame."""

    index: int
    t: float  # seconds since the start of the stream
    width: int
    height: int
    people: list[PersonPose] = field(default_factory=list)


class PoseDetector(Protocol):
    """What every backend (mediapipe, yolo, replay) provides.

    Frames are BGR uint8 arrays (OpenCV's layout). A backend that batches
    (YOLO) runs the whole sequence at once; the others loop. Timestamps are
    seconds and strictly increasing per stream (MediaPipe's video mode needs it).
    """

    name: str

    def detect(
        self, frames: Sequence[npt.NDArray[np.uint8]], timestamps: Sequence[float]
    ) -> list[list[PersonPose]]: ...

    def close(self) -> None: ...


class ModelNotFoundError(FileNotFoundError):
    """A detector's model file is not on disk; the message says how to get it."""

    def __init__(self, path: object, what: str) -> None:
        super().__init__(
            f"{what} not found at {path}. Run `make download-models` to provision the "
            "models, or pass the path of an existing model file."
        )
        self.path = path
