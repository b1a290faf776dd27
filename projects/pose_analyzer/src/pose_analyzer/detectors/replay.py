"""The keypoint JSON Lines format of docs/report.md: reader, writer, replay backend.

One line per frame: {"t", "frame", "width", "height", "people": [{"id",
"keypoints": {joint: [x, y, confidence]}}]}. Values are written with full
float32 precision, so exporting and replaying gives bit-identical poses and
therefore the same report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from pose_analyzer.keypoints import JOINT_INDEX, JOINTS, FramePoses, PersonPose, empty_pose

# What a keypoint file may be called, everywhere (CLI, uploads, live sources).
KEYPOINT_SUFFIXES: tuple[str, ...] = (".jsonl", ".ndjson")


def is_keypoint_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in KEYPOINT_SUFFIXES


class KeypointFileError(ValueError):
    """A keypoint file is missing, unreadable or malformed; the message names file and line."""


def _person(raw: Any, where: str) -> PersonPose:
    if not isinstance(raw, dict) or not isinstance(raw.get("keypoints"), dict):
        raise KeypointFileError(f"{where}: a person needs a 'keypoints' object")
    pose = empty_pose()
    for name, value in raw["keypoints"].items():
        j = JOINT_INDEX.get(name)
        if j is None:
            raise KeypointFileError(f"{where}: unknown joint {name!r} (known: {', '.join(JOINTS)})")
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise KeypointFileError(f"{where}: joint {name!r} must be [x, y, confidence]")
        pose[j] = value
    track_id = raw.get("id")
    if track_id is not None and (not isinstance(track_id, int) or isinstance(track_id, bool)):
        raise KeypointFileError(f"{where}: person id must be an integer, got {track_id!r}")
    return PersonPose(keypoints=pose, score=float(raw.get("score", 1.0)), track_id=track_id)


def parse_line(line: str, where: str) -> FramePoses:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise KeypointFileError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise KeypointFileError(f"{where}: expected a JSON object per line")
    try:
        t = float(raw["t"])
        index = int(raw["frame"])
        width, height = int(raw["width"]), int(raw["height"])
        people_raw = raw.get("people", [])
    except KeyError as exc:
        raise KeypointFileError(f"{where}: missing key {exc.args[0]!r}") from None
    except (TypeError, ValueError):
        raise KeypointFileError(f"{where}: t, frame, width and height must be numbers") from None
    if not isinstance(people_raw, list):
        raise KeypointFileError(f"{where}: 'people' must be a list")
    people = [_person(p, f"{where}: people[{i}]") for i, p in enumerate(people_raw)]
    return FramePoses(index=index, t=t, width=width, height=height, people=people)


def read_keypoints(path: str | Path) -> Iterator[FramePoses]:
    """Frames of a keypoint file, in order; times must strictly increase."""
    path = Path(path)
    try:
        fh = path.open(encoding="utf-8")
    except OSError as exc:
        raise KeypointFileError(f"{path}: cannot open ({exc.strerror})") from None
    last_t = -math.inf
    with fh:
        try:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                frame = parse_line(line, f"{path.name} line {n}")
                if not frame.t > last_t:
                    raise KeypointFileError(
                        f"{path.name} line {n}: t={frame.t} does not increase (previous {last_t})"
                    )
                last_t = frame.t
                yield frame
        except UnicodeDecodeError:
            raise KeypointFileError(f"{path}: not a UTF-8 text file") from None


def frame_to_dict(frame: FramePoses) -> dict[str, Any]:
    people = []
    for i, person in enumerate(frame.people):
        kp = person.keypoints
        ok = np.isfinite(kp[:, :2]).all(axis=1)
        keypoints = {
            JOINTS[j]: [float(kp[j, 0]), float(kp[j, 1]), float(kp[j, 2])]
            for j in np.flatnonzero(ok)
        }
        pid = person.track_id if person.track_id is not None else i + 1
        people.append({"id": int(pid), "keypoints": keypoints})
    return {
        "t": float(frame.t),
        "frame": int(frame.index),
        "width": int(frame.width),
        "height": int(frame.height),
        "people": people,
    }


class KeypointWriter:
    """Writes frames as JSON Lines (`--export-keypoints`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = self.path.open("w", encoding="utf-8")

    def write(self, frame: FramePoses) -> None:
        self._fh.write(json.dumps(frame_to_dict(frame), separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> KeypointWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_keypoints(path: str | Path, frames: Sequence[FramePoses]) -> None:
    with KeypointWriter(path) as writer:
        for frame in frames:
            writer.write(frame)


class ReplayDetector:
    """The `replay` backend: poses come from a keypoint file instead of a model.

    `frames()` yields whole FramePoses (with the file's person ids as track ids);
    `detect()` satisfies the PoseDetector protocol by handing out the next
    file frames, one per image given, ignoring the pixels.
    """

    name = "replay"

    def __init__(self, path: str | Path | None = None, **_: Any) -> None:
        if path is None:
            raise KeypointFileError("the replay backend needs a keypoint file (JSON Lines)")
        self.path = Path(path)
        if not self.path.is_file():
            raise KeypointFileError(f"{self.path}: keypoint file not found")
        self._iter: Iterator[FramePoses] | None = None

    def frames(self) -> Iterator[FramePoses]:
        return read_keypoints(self.path)

    def detect(
        self, frames: Sequence[npt.NDArray[np.uint8]], timestamps: Sequence[float]
    ) -> list[list[PersonPose]]:
        if self._iter is None:
            self._iter = self.frames()
        out = []
        for _ in frames:
            frame = next(self._iter, None)
            out.append(frame.people if frame is not None else [])
        return out

    def close(self) -> None:
        self._iter = None
