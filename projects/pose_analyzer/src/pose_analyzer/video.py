"""Reading videos and cameras robustly, and writing annotated videos.

`open_video` checks a source before any analysis starts and turns OpenCV's
silent failures (an unopened capture, a first read that returns nothing) into
one exception per cause, all subclasses of `VideoError`, each saying what was
wrong and what to do. Frames are BGR uint8, as everywhere in this package.

Writing uses OpenCV's own MPEG-4 Part 2 encoder (fourcc `mp4v`), which is
built into the OpenCV wheel: no ffmpeg program is needed.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from pose_analyzer.keypoints import JOINT_INDEX, PersonPose

log = logging.getLogger(__name__)

Frame = np.ndarray  # BGR uint8 (H, W, 3); OpenCV's own typing is not narrower
DEFAULT_FPS = 30.0


class VideoError(Exception):
    """A video source cannot be used; the message says why and what to do."""


class VideoNotFoundError(VideoError, FileNotFoundError):
    """No file at the given path."""


class VideoUnreadableError(VideoError, PermissionError):
    """The path exists but cannot be read (a folder, no permission, a camera in use)."""


class CorruptVideoError(VideoError):
    """The file exists and is not empty, but no frame can be decoded from it."""


class EmptyVideoError(VideoError):
    """The file is empty or a valid container that holds no frames."""


def _is_stream_url(source: str) -> bool:
    return source.split("://", 1)[0].lower() in {"rtsp", "rtsps", "http", "https", "udp", "tcp"}


class VideoSource:
    """An opened, verified source. Iterating yields (index, t seconds, BGR frame).

    For files, t = index / fps (the container's clock, reproducible); for cameras
    and network streams, t is the wall-clock time since the first frame.
    """

    def __init__(
        self,
        capture: cv2.VideoCapture,
        first: Frame,
        *,
        name: str,
        live: bool,
        prefetch: int = 0,
    ) -> None:
        self._cap: cv2.VideoCapture | None = capture
        self._first: Frame | None = first
        self.name = name
        self.live = live
        self.prefetch = prefetch
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if not math.isfinite(fps) or fps <= 0 or fps > 1000:
            log.warning("%s reports fps=%r; assuming %.0f", name, fps, DEFAULT_FPS)
            fps = DEFAULT_FPS
        self.fps = fps
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count: int | None = None if live or count <= 0 else count
        self.height, self.width = first.shape[:2]
        self.frames_read = 0
        # Set when iteration ends well before the frame count the file announced.
        self.truncated = False
        # Seconds spent waiting on the decoder (on whichever thread reads), for stage
        # metrics. Wall time: FFmpeg decodes on threads of its own.
        self.decode_s = 0.0
        self._started = False
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.width, self.height

    @property
    def duration_s(self) -> float | None:
        return None if self.frame_count is None else self.frame_count / self.fps

    def _take_first(self) -> Frame | None:
        """Start the one pass over the source: the frame read at open time, if any."""
        if self._started:
            raise VideoError(f"{self.name} was already iterated; open it again to re-read it")
        self._started = True
        first, self._first = self._first, None
        return first

    def _raw_frames(self) -> Iterator[Frame]:
        first = self._take_first()
        if first is not None:
            yield first
        while self._cap is not None:
            t0 = time.perf_counter()
            ok, frame = self._cap.read()
            self.decode_s += time.perf_counter() - t0
            if not ok or frame is None:
                break
            yield frame

    def lazy_frames(self) -> Iterator[tuple[int, Callable[[], Frame | None]]]:
        """(index, convert) per frame: each frame is demuxed and decoded, but turned into
        a BGR image only when `convert()` is called before the next step. A live reader
        that drops most frames skips their colour conversion (about 2 ms a 1080p frame).
        """
        first = self._take_first()
        index = 0
        if first is not None:
            yield index, lambda: first
            index += 1
        while self._cap is not None:
            cap = self._cap
            t0 = time.perf_counter()
            ok = cap.grab()
            self.decode_s += time.perf_counter() - t0
            if not ok:
                break

            def convert(cap: cv2.VideoCapture = cap) -> Frame | None:
                ok, frame = cap.retrieve()
                return frame if ok and frame is not None else None

            self.frames_read = index + 1
            yield index, convert
            index += 1

    def _prefetched(self, depth: int) -> Iterator[Frame]:
        # Decoding in OpenCV releases the GIL: a reader thread overlaps it with detection.
        q: queue.Queue[Frame | None] = queue.Queue(maxsize=depth)
        stop = self._stop

        errors: list[BaseException] = []

        def put(item: Frame | None) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def reader() -> None:
            try:
                for frame in self._raw_frames():
                    if not put(frame):
                        return
            except BaseException as exc:  # handed to the consumer below
                errors.append(exc)
            put(None)

        thread = threading.Thread(target=reader, name=f"decode-{self.name}", daemon=True)
        self._reader = thread
        thread.start()
        try:
            while (frame := q.get()) is not None:
                yield frame
            if errors:
                raise errors[0]
        finally:
            self._stop_reader()

    def _stop_reader(self) -> None:
        self._stop.set()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join()
            self._reader = None

    def __iter__(self) -> Iterator[tuple[int, float, Frame]]:
        frames = self._prefetched(self.prefetch) if self.prefetch > 0 else self._raw_frames()
        t0 = time.monotonic()
        for index, frame in enumerate(frames):
            self.frames_read = index + 1
            t = time.monotonic() - t0 if self.live else index / self.fps
            yield index, t, frame
        if (
            self.frame_count is not None
            and not self.live
            and self.frames_read < self.frame_count - 1
        ):
            self.truncated = True
            log.warning(
                "%s ended after %d of %d frames: the file is truncated or damaged",
                self.name,
                self.frames_read,
                self.frame_count,
            )
        self.close()

    def close(self) -> None:
        self._stop_reader()  # never release the capture under a reading thread
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_video(source: str | Path | int, *, prefetch: int = 0) -> VideoSource:
    """Open a file, a camera index (int or digit string) or an rtsp/http/udp/tcp URL.

    Reads the first frame now, so every failure surfaces here as a `VideoError`.
    `prefetch` > 0 decodes that many frames ahead on a background thread.
    """
    live = False
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        index = int(source)
        name = f"camera {index}"
        cap = cv2.VideoCapture(index)
        if not cap.isOpened():
            raise VideoUnreadableError(
                f"cannot open {name}: no such camera, or it is in use by another program"
            )
        live = True
    elif isinstance(source, str) and _is_stream_url(source):
        name = source
        cap = cv2.VideoCapture(source)
        if not cap.isOpened():
            raise VideoUnreadableError(
                f"cannot open stream {source}: check the URL and that the server is reachable"
            )
        live = True
    else:
        path = Path(source).expanduser()
        name = str(path)
        if not path.exists():
            raise VideoNotFoundError(f"video file not found: {path}")
        if not path.is_file():
            raise VideoUnreadableError(f"{path} is not a file (a folder?); pass a video file")
        if not os.access(path, os.R_OK):
            raise VideoUnreadableError(f"no permission to read {path}")
        size = path.stat().st_size
        if size == 0:
            raise EmptyVideoError(f"{path} is empty (0 bytes); it holds no video")
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            cap.release()
            raise CorruptVideoError(
                f"{path} ({size} bytes) cannot be decoded as a video: it is not a video "
                "file, or it is damaged or truncated (an MP4 cut before its index). "
                "Re-export or re-copy it."
            )
    ok, first = cap.read()
    if not ok or first is None:
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        cap.release()
        if live:
            raise VideoUnreadableError(f"{name} opened but delivered no frame")
        if count <= 0:
            raise EmptyVideoError(f"{name} is a valid video container with no frames")
        raise CorruptVideoError(
            f"{name} announces {count} frames but the first one cannot be decoded: "
            "the file is damaged or uses a codec this OpenCV build lacks"
        )
    return VideoSource(cap, first, name=name, live=live, prefetch=prefetch)


# --- annotation -----------------------------------------------------------------

SKELETON: tuple[tuple[str, str], ...] = (
    ("left_shoulder", "right_shoulder"),
    ("left_hip", "right_hip"),
    ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"),
    ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_wrist"),
    ("left_hip", "left_knee"),
    ("left_knee", "left_ankle"),
    ("right_hip", "right_knee"),
    ("right_knee", "right_ankle"),
    ("left_ankle", "left_heel"),
    ("left_heel", "left_foot_index"),
    ("left_ankle", "left_foot_index"),
    ("right_ankle", "right_heel"),
    ("right_heel", "right_foot_index"),
    ("right_ankle", "right_foot_index"),
    ("nose", "left_eye"),
    ("nose", "right_eye"),
    ("left_eye", "left_ear"),
    ("right_eye", "right_ear"),
)
_EDGES = np.array([(JOINT_INDEX[a], JOINT_INDEX[b]) for a, b in SKELETON], dtype=np.intp)
_LEFT, _RIGHT, _CENTER = (255, 160, 0), (0, 140, 255), (200, 200, 200)  # BGR


def _edge_color(a: str, b: str) -> tuple[int, int, int]:
    if a.startswith("left") and b.startswith("left"):
        return _LEFT
    if a.startswith("right") and b.startswith("right"):
        return _RIGHT
    return _CENTER


_EDGE_COLORS = [_edge_color(a, b) for a, b in SKELETON]


def angle_anchor(angle_name: str) -> str | None:
    """The joint an angle's value is written next to (names of docs/angles.md)."""
    for joint in ("knee", "hip", "elbow", "shoulder", "ankle"):
        for side in ("left", "right"):
            if angle_name.startswith(f"{side}_{joint}") or angle_name == f"{joint}_valgus_{side}":
                return f"{side}_{joint}"
    if angle_name == "trunk_lean":
        return "left_hip"
    return None


def _text(img: Frame, text: str, org: tuple[int, int], scale: float, color=(255, 255, 255)):
    thick = max(1, round(scale * 2))
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)


def draw_pose(
    frame: Frame,
    person: PersonPose,
    angles: Mapping[str, float] | None = None,
    rep_count: int | None = None,
    cues: Sequence[str] = (),
    *,
    min_confidence: float = 0.5,
) -> Frame:
    """Draw one person's skeleton, angle values, rep count and form cues, in place.

    Joints below `min_confidence` and NaN angles are left out, so the picture never
    shows more than the numbers support. Returns the frame for chaining.
    """
    h, w = frame.shape[:2]
    unit = max(h, w) / 1000.0  # line widths and text scale follow the resolution
    kp = person.keypoints
    ok = (kp[:, 2] >= min_confidence) & np.isfinite(kp[:, :2]).all(axis=1)
    pts = np.zeros((kp.shape[0], 2), dtype=np.int32)
    pts[ok] = np.round(kp[ok, :2]).astype(np.int32)
    line = max(1, round(3 * unit))
    for (i, j), color in zip(_EDGES, _EDGE_COLORS, strict=True):
        if ok[i] and ok[j]:
            cv2.line(frame, tuple(pts[i]), tuple(pts[j]), color, line, cv2.LINE_AA)
    for i in np.flatnonzero(ok):
        cv2.circle(frame, tuple(pts[i]), max(2, round(4 * unit)), (255, 255, 255), -1, cv2.LINE_AA)

    scale = 0.6 * unit
    for name, value in (angles or {}).items():
        anchor = angle_anchor(name)
        if anchor is None or value is None or not math.isfinite(value):
            continue
        j = JOINT_INDEX[anchor]
        if not ok[j]:
            continue
        dy = round(22 * unit) if "valgus" in name else 0
        x, y = pts[j] + (round(8 * unit), dy)
        _text(frame, f"{value:.0f}", (int(x), int(y)), scale, (120, 255, 120))

    if person.box is not None:
        x1, y1 = int(person.box[0]), int(person.box[1])
    elif ok.any():
        x1, y1 = (int(v) for v in pts[ok].min(axis=0))
    else:
        x1, y1 = 10, 10
    header = []
    if person.track_id is not None:
        header.append(f"#{person.track_id}")
    if rep_count is not None:
        header.append(f"reps {rep_count}")
    step = round(28 * unit)
    x = min(max(x1, 5), w - 5)
    y = max(y1 - step * (len(cues) + 1), step)
    if header:
        _text(frame, "  ".join(header), (x, y), 0.8 * unit, (255, 255, 0))
    for k, cue in enumerate(cues):
        _text(frame, cue, (x, y + step * (k + 1)), scale, (80, 80, 255))
    return frame


class VideoWriter:
    """annotated.mp4 writer (mp4v, OpenCV's built-in encoder)."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        if self.size[0] <= 0 or self.size[1] <= 0:
            raise ValueError(f"frame size must be positive (width, height), got {size}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fourcc = cv2.VideoWriter.fourcc(*"mp4v")
        self._writer: cv2.VideoWriter | None = cv2.VideoWriter(
            str(self.path), fourcc, float(fps), self.size
        )
        if not self._writer.isOpened():
            raise VideoError(f"cannot write video {self.path}: check the folder is writable")
        self.frames_written = 0

    def write(self, frame: Frame) -> None:
        if self._writer is None:
            raise VideoError(f"{self.path} is already closed")
        h, w = frame.shape[:2]
        if (w, h) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(np.ascontiguousarray(frame))
        self.frames_written += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
