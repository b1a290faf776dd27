"""A frame reader per source, on its own thread, keeping only the newest frames.

Live sources (cameras, network streams) never wait for the pipeline: when the
buffer is full the oldest frame is dropped (`DropPolicy.DROP_OLDEST`) and
counted. A file can play at its native rate (a live simulation, same policy)
or as fast as the pipeline takes frames (`DropPolicy.WAIT`, nothing dropped).
A live source that fails reconnects with exponential backoff and reports
each state change.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from pose_analyzer.keypoints import FramePoses
from pose_analyzer.streams.sources import Source
from pose_analyzer.video import VideoError, VideoSource, VideoUnreadableError, open_video


class DropPolicy(str, enum.Enum):
    DROP_OLDEST = "drop_oldest"  # keep the newest frames, count the dropped ones
    WAIT = "wait"  # the reader waits for the pipeline (offline files only)


class StreamState(str, enum.Enum):
    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class Frame:
    index: int  # frames read from the source so far, including dropped ones
    t: float  # seconds since the stream started (file: container clock)
    read_at: float  # time.monotonic() when the frame was read
    image: npt.NDArray[np.uint8] | None  # BGR; None for keypoint (replay) sources
    poses: FramePoses | None = None  # set by keypoint sources instead of an image


class FrameReader:
    def __init__(
        self,
        source: Source,
        *,
        realtime: bool = True,
        buffer: int = 2,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 8.0,
        max_reconnects: int | None = None,
        connect_timeout_s: float | None = None,
        on_state: Callable[[StreamState, str | None], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
        on_read: Callable[[], None] | None = None,
        clock_start: float | None = None,
    ) -> None:
        self.source = source
        self.realtime = realtime
        self.policy = DropPolicy.DROP_OLDEST if source.live or realtime else DropPolicy.WAIT
        self._buffer: deque[Frame] = deque()
        self._capacity = max(1, buffer)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.max_reconnects = max_reconnects
        # A live source that has not delivered one frame this long after the start
        # fails (and frees its stream slot) instead of connecting forever.
        self.connect_timeout_s = connect_timeout_s
        self._on_state = on_state
        self._on_drop = on_drop
        self._on_read = on_read
        # The stream's clock starts here (time.monotonic()) instead of when the reader
        # started: a file played live is due from then, a live source's capture times
        # count from then. The views of a rig share one clock (multiview/service.py).
        self.clock_start = clock_start
        self._wanted = True  # the pipeline waits for a frame
        self.state = StreamState.CONNECTING
        self.reason: str | None = None
        self.frames_read = 0
        self.frames_dropped = 0
        self.reconnects = 0
        self.fps: float | None = None
        self.size: tuple[int, int] | None = None

    # -- control ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"reader-{self.source.text}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.state not in (StreamState.ENDED, StreamState.FAILED):
            self._set_state(StreamState.STOPPED, None)

    @property
    def finished(self) -> bool:
        return self.state in (StreamState.ENDED, StreamState.FAILED, StreamState.STOPPED)

    def get(self, timeout: float = 0.5) -> Frame | None:
        """The oldest buffered frame, waiting up to `timeout`; None if none came."""
        with self._cond:
            if not self._buffer:
                # Ask the reader for the next frame it decodes (drop-oldest sources only
                # convert frames somebody asked for).
                self._wanted = True
                self._cond.wait(timeout)
            if not self._buffer:
                return None
            frame = self._buffer.popleft()
            self._cond.notify_all()
            return frame

    def drained(self) -> bool:
        with self._cond:
            return self.finished and not self._buffer

    # -- reader thread ----------------------------------------------------------------

    def _set_state(self, state: StreamState, reason: str | None) -> None:
        if state == self.state and reason == self.reason:
            return
        self.state, self.reason = state, reason
        if self._on_state:
            self._on_state(state, reason)
        with self._cond:
            self._cond.notify_all()

    def _push(self, frame: Frame) -> None:
        if self._on_read:
            self._on_read()
        with self._cond:
            self._wanted = False
            if self.policy is DropPolicy.WAIT:
                while len(self._buffer) >= self._capacity and not self._stop.is_set():
                    self._cond.wait(0.1)
            elif len(self._buffer) >= self._capacity:
                self._buffer.popleft()
                self.frames_dropped += 1
                if self._on_drop:
                    self._on_drop(1)
            self._buffer.append(frame)
            self._cond.notify_all()

    def _never_live(self, start: float, why: str) -> bool:
        """Fail the stream if it has delivered no frame within the connect timeout."""
        if self.connect_timeout_s is None or self.frames_read:
            return False
        if time.monotonic() - start < self.connect_timeout_s:
            return False
        self._set_state(
            StreamState.FAILED,
            f"no frame within {self.connect_timeout_s:g} s (POSE_CONNECT_TIMEOUT_S): {why}",
        )
        return True

    def _run(self) -> None:
        backoff = self.reconnect_initial_s
        start = time.monotonic()
        attempts = 0
        while not self._stop.is_set():
            try:
                video = open_source(self.source)
            except VideoError as exc:
                if not self.source.live:
                    self._set_state(StreamState.FAILED, str(exc))
                    return
                attempts += 1
                if self.max_reconnects is not None and attempts > self.max_reconnects:
                    self._set_state(
                        StreamState.FAILED, f"gave up after {attempts - 1} retries: {exc}"
                    )
                    return
                if self._never_live(start, str(exc)):
                    return
                self._set_state(
                    StreamState.RECONNECTING if self.frames_read else StreamState.CONNECTING,
                    str(exc),
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.reconnect_max_s)
                continue
            self.fps = video.fps
            self.size = video.size
            self._set_state(StreamState.LIVE, None)
            got_frame = self._pump(video, start)
            video.close()
            if self._stop.is_set():
                return
            if not self.source.live:
                self._set_state(StreamState.ENDED, None)
                return
            # The live source stopped delivering: reconnect.
            if self._never_live(start, "the source opened but sent no frames"):
                return
            if got_frame:
                backoff, attempts = self.reconnect_initial_s, 0
            self.reconnects += 1
            self._set_state(StreamState.RECONNECTING, "the source stopped sending frames")
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.reconnect_max_s)

    def _pump(self, video: VideoSource, start: float) -> bool:
        if self.policy is DropPolicy.WAIT:
            return self._pump_all(video)
        got = False
        wall_start = self.clock_start or time.monotonic()
        first_t: float | None = None
        fps = video.fps or 30.0
        for index, convert in video.lazy_frames():
            if self._stop.is_set():
                break
            got = True
            now = time.monotonic()
            if self.source.live:
                t = now - (self.clock_start or start)
            else:
                # A file played live: frame k is due at its container time.
                t = index / fps
                first_t = t if first_t is None else first_t
                due = wall_start + (t - first_t)
                if due > now:
                    self._stop.wait(due - now)
                    now = time.monotonic()
            with self._cond:
                wanted = self._wanted
            if wanted:
                image = convert()
                if image is None:
                    break
                self._push(Frame(self.frames_read, t, now, image))
            else:
                # Nobody is ready for it: it is dropped before its colour conversion.
                if self._on_read:
                    self._on_read()
                self.frames_dropped += 1
                if self._on_drop:
                    self._on_drop(1)
            self.frames_read += 1
        return got

    def _pump_all(self, video: VideoSource) -> bool:
        """Every frame, as fast as the pipeline takes them (files, DropPolicy.WAIT)."""
        got = False
        for _, t, image in video:
            if self._stop.is_set():
                break
            got = True
            self._push(Frame(self.frames_read, t, time.monotonic(), image))
            self.frames_read += 1
        return got


class KeypointReader(FrameReader):
    """Replays a keypoint JSON Lines file (DESIGN section 7) as a stream, at its own clock."""

    def _run(self) -> None:
        from pose_analyzer.detectors.replay import KeypointFileError, read_keypoints

        self._set_state(StreamState.LIVE, None)
        wall_start = self.clock_start or time.monotonic()
        first_t: float | None = None
        try:
            for poses in read_keypoints(str(self.source.target)):
                if self._stop.is_set():
                    return
                now = time.monotonic()
                if self.realtime:
                    first_t = poses.t if first_t is None else first_t
                    due = wall_start + (poses.t - first_t)
                    if due > now:
                        self._stop.wait(due - now)
                        now = time.monotonic()
                self.size = (poses.width, poses.height)
                self._push(Frame(self.frames_read, poses.t, now, None, poses))
                self.frames_read += 1
        except (KeypointFileError, OSError) as exc:
            self._set_state(StreamState.FAILED, str(exc))
            return
        self._set_state(StreamState.ENDED, None)


def open_source(source: Source, timeout_s: float = 5.0) -> VideoSource:
    """Open a source; network streams get open/read timeouts so a dead peer is noticed."""
    if source.kind != "url":
        return open_video(source.target)
    timeout_ms = int(timeout_s * 1000)
    cap = cv2.VideoCapture(
        str(source.target),
        cv2.CAP_FFMPEG,
        [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms],
    )
    if not cap.isOpened():
        cap.release()
        raise VideoUnreadableError(f"cannot open stream {source.text}: no answer or not a video")
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise VideoUnreadableError(f"{source.text} opened but delivered no frame")
    return VideoSource(cap, first, name=source.text, live=True)
