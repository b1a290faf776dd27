"""One live stream: read -> detect -> engine (identify, measure, count, score, roles)
-> persist -> publish.

The runner only feeds frames to the engine's live entry (`LiveEngine`) and
ships what comes out; it analyzes nothing itself. Reading runs on the reader's
thread. Detection and the engine's work on a frame run on the stream's own
worker thread (MediaPipe and the numpy code
release the GIL, so streams run in parallel), publishing on the event loop.
Each stage is timed into `pose_stage_duration_seconds`; every completed rep is
committed to the database before the next frame is published.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2

from pose_analyzer.engine import FrameResult, LiveEngine, PersonFrame
from pose_analyzer.exercises.schema import Exercise
from pose_analyzer.keypoints import FramePoses, PoseDetector
from pose_analyzer.metrics import PoseMetrics
from pose_analyzer.storage import Database
from pose_analyzer.streams.batching import BatchingDetector
from pose_analyzer.streams.hub import Hub
from pose_analyzer.streams.reader import (
    Frame,
    FrameReader,
    KeypointReader,
    StreamState,
)
from pose_analyzer.streams.sources import Source

log = logging.getLogger(__name__)
JPEG_WIDTH = 640


@dataclass
class StreamConfig:
    source: Source
    exercise: Exercise
    backend: str
    model: str | None
    realtime: bool = True
    buffer: int = 2
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 8.0
    connect_timeout_s: float | None = None
    queue_size: int = 32
    overflow_disconnect_s: float = 5.0
    # The live re-detection search (MediaPipe streams only): on/off, and its per-frame
    # bounds (detectors.LIVE_REFINE has the rest).
    search: bool = False
    search_budget_ms: float = 30.0
    search_max_crops: int = 1


@dataclass
class StreamStats:
    frames_processed: int = 0
    fps: float = 0.0
    last_latency_s: float | None = None
    people: int = 0
    reps: int = 0
    _window: deque[float] = field(default_factory=deque)  # publish times of the last 2 s

    def tick(self, now: float) -> None:
        self.frames_processed += 1
        self._window.append(now)
        while self._window and now - self._window[0] > 2.0:
            self._window.popleft()
        if len(self._window) > 1:
            span = self._window[-1] - self._window[0]
            self.fps = (len(self._window) - 1) / span if span > 0 else 0.0


def _make_detector(config: StreamConfig, models_dir: Any) -> PoseDetector | None:
    if config.source.keypoints or config.backend == "yolo":
        return None  # keypoint files carry their poses; YOLO streams share a batcher
    from pose_analyzer.detectors import create_detector

    kw: dict[str, Any] = {}
    if config.backend == "mediapipe":
        kw = {"mode": "video", "models_dir": models_dir}
        if config.search:
            from pose_analyzer.detectors import LIVE_REFINE

            kw["refine"] = True
            kw["refine_options"] = {
                **LIVE_REFINE,
                "budget_ms": config.search_budget_ms,
                "max_searches": config.search_max_crops,
            }
    return create_detector(config.backend, config.model, **kw)


def search_stats(detector: PoseDetector | None) -> dict[str, int] | None:
    """What the live search did so far (None when the stream has no search)."""
    from pose_analyzer.detectors.refine import RefiningDetector

    if not isinstance(detector, RefiningDetector):
        return None
    s = detector.stats
    return {
        "frames_searched": s.triggered,
        "crops": s.crops,
        "tiles": s.tiles,
        "found": s.found,
        "over_budget": s.over_budget,
        "capped": s.capped,
        "max_calls_per_frame": s.max_calls,
    }


class StreamRunner:
    def __init__(
        self,
        config: StreamConfig,
        *,
        slot: int,
        db: Database,
        metrics: PoseMetrics,
        models_dir: Any,
        stream_id: str | None = None,
        shared_detector: BatchingDetector | None = None,
    ) -> None:
        self.id = stream_id or uuid.uuid4().hex[:12]
        self.slot = str(slot)
        self.config = config
        self.db = db
        self.metrics = metrics
        self.models_dir = models_dir
        self.created_at = time.time()
        self.stats = StreamStats()
        self.error: str | None = None
        self.state_history: list[tuple[float, str, str | None]] = []
        self.hub = Hub(
            queue_size=config.queue_size,
            overflow_disconnect_s=config.overflow_disconnect_s,
            on_drop=lambda n: metrics.ws_dropped.inc(n),
            on_disconnect=lambda reason: metrics.ws_disconnects.labels(reason).inc(),
        )
        reader_cls = KeypointReader if config.source.keypoints else FrameReader
        self.reader = reader_cls(
            config.source,
            realtime=config.realtime,
            buffer=config.buffer,
            reconnect_initial_s=config.reconnect_initial_s,
            reconnect_max_s=config.reconnect_max_s,
            connect_timeout_s=config.connect_timeout_s,
            on_state=self._on_state,
            on_drop=lambda n: metrics.frames_dropped.labels(self.slot).inc(n),
            on_read=lambda: metrics.frames_read.labels(self.slot).inc(),
        )
        self.engine = LiveEngine(config.exercise)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stream-{self.id}")
        self._detector: PoseDetector | None = None
        self._shared = shared_detector
        self._size: tuple[int | None, int | None] = (None, None)  # of the last frame
        self._search_seen: dict[str, int] = {}  # search counters already in the metrics
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.finished = asyncio.Event()
        self.finished_at: float | None = None
        self.session_status = "live"
        self.final_message: dict[str, Any] | None = None  # the closing summary, once ended

    # -- lifecycle --------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.reader.state.value

    def _on_state(self, state: StreamState, reason: str | None) -> None:
        self.state_history.append((time.time(), state.value, reason))
        if state == StreamState.RECONNECTING:
            self.metrics.reconnects.labels(self.slot).inc()
        if state == StreamState.FAILED:
            self.error = reason
        log.info("stream %s: %s%s", self.id, state.value, f" ({reason})" if reason else "")

    async def start(self) -> None:
        """Load the detector and start reading; raises if the detector cannot load."""
        loop = asyncio.get_running_loop()
        self._detector = await loop.run_in_executor(
            self._executor, _make_detector, self.config, self.models_dir
        )
        await asyncio.to_thread(
            self.db.start_session,
            self.id,
            kind="stream",
            source=self.config.source.text,
            exercise=self.config.exercise.name,
            backend=self.config.backend,
        )
        self.metrics.active_streams.inc()
        if self._shared is not None:
            self._shared.users += 1
        self.reader.start()
        self._task = loop.create_task(self._run(), name=f"stream-{self.id}")

    async def stop(self) -> None:
        if self.finished.is_set():
            return
        self._stopping = True
        await asyncio.to_thread(self.reader.stop)
        if self._task is not None:
            await self._task

    # -- the loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                t_wait = time.perf_counter()
                frame = await loop.run_in_executor(self._executor, self.reader.get, 0.25)
                if frame is None:
                    if self.reader.drained():
                        break
                    continue
                self.metrics.stage_seconds.labels("read").observe(time.perf_counter() - t_wait)
                result, jpeg = await loop.run_in_executor(
                    self._executor, self._process, frame, self.hub.wants_frames
                )
                t_pub = time.perf_counter()
                # Commit first: a rep a client has seen is a rep the database keeps.
                await self._persist(result.people, self.stats.frames_processed + 1)
                self.hub.publish(self._message(frame, result), jpeg)
                now = time.monotonic()
                self.metrics.stage_seconds.labels("publish").observe(time.perf_counter() - t_pub)
                latency = now - frame.read_at
                self.metrics.frame_to_publish.observe(latency)
                self.metrics.frames_processed.labels(self.slot).inc()
                self.stats.tick(now)
                self.stats.last_latency_s = latency
                self.stats.people = len(result.people)
                self.metrics.stream_fps.labels(self.slot).set(self.stats.fps)
        except Exception as exc:  # a broken stream must end cleanly, not take the service
            log.exception("stream %s failed", self.id)
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            await self._finish()

    def _process(self, frame: Frame, want_jpeg: bool) -> tuple[FrameResult, str | None]:
        t0 = time.perf_counter()
        poses = detect_frame(frame, self._detector, self._shared)
        t1 = time.perf_counter()
        result = self.engine.update(poses)
        t2 = time.perf_counter()
        self.metrics.stage_seconds.labels("detect").observe(t1 - t0)
        self.metrics.stage_seconds.labels("analyze").observe(t2 - t1)
        self._count_search()
        self._size = (poses.width, poses.height)
        jpeg = None
        if want_jpeg and frame.image is not None:
            jpeg = _encode_jpeg(frame.image)
        return result, jpeg

    def _count_search(self) -> None:
        """Add what the search did on this frame to the Prometheus counters."""
        stats = search_stats(self._detector)
        if stats is None:
            return
        for key, counter in self.metrics.search_counters.items():
            new = stats[key] - self._search_seen.get(key, 0)
            if new:
                counter.inc(new)
        self._search_seen = stats

    def _message(self, frame: Frame, result: FrameResult) -> dict[str, Any]:
        width, height = self._size
        body = result.to_dict()
        body.update(
            stream_id=self.id,
            width=width,
            height=height,
            state=self.state,
            exercise=self.config.exercise.name,
            # From reading the frame off the source to this message: what a viewer lags.
            latency_s=round(time.monotonic() - frame.read_at, 5),
            dropped=self.reader.frames_dropped,
        )
        return body

    async def _persist(self, people: list[PersonFrame], frames: int) -> None:
        """Every completed rep and anomaly into the database and the metrics, wherever
        it completed (a frame, or the stream's end)."""
        exercise = self.config.exercise.name
        for person in people:
            if person.new_rep is not None:
                rep = person.new_rep.to_dict()
                await asyncio.to_thread(self.db.add_rep, self.id, person.track_id, rep, frames)
                self.stats.reps += 1
                self.metrics.reps.labels(exercise).inc()
                self.metrics.rep_score.labels(exercise).observe(person.new_rep.score)
                for fault in person.new_rep.faults:
                    self.metrics.faults.labels(exercise, fault.code).inc()
            if person.new_anomaly is not None:
                anomaly = person.new_anomaly
                await asyncio.to_thread(
                    self.db.add_anomaly, self.id, person.track_id, anomaly.rep_index, anomaly.reason
                )
                self.metrics.anomalies.labels(exercise).inc()

    async def _finish(self) -> None:
        loop = asyncio.get_running_loop()
        # Reps that were already back at rest when the source ended still count, with
        # their anomalies and metrics like any other rep.
        if not self._stopping or self.reader.state == StreamState.ENDED:
            tail = await loop.run_in_executor(self._executor, self.engine.finish)
            await self._persist(tail, self.stats.frames_processed)
        final = FrameResult(index=-1, t=0.0, people=[], athletes=self.engine.athletes())
        self.final_message = self._summary(final)
        self.hub.publish(self.final_message, None)
        failed = bool(self.error) or self.reader.state == StreamState.FAILED
        status = "failed" if failed else "ended"
        self.session_status = status
        try:
            await asyncio.to_thread(
                self.db.end_session,
                self.id,
                status=status,
                frames=self.stats.frames_processed,
                error=self.error or self.reader.reason if status == "failed" else None,
            )
        except Exception as exc:  # storage trouble must not keep the slot taken
            log.error("stream %s: session end not stored: %s", self.id, exc)
        await self.hub.close_all("stream ended" if not self._stopping else "stream stopped")
        if self._detector is not None:
            await loop.run_in_executor(self._executor, self._detector.close)
        if self._shared is not None:
            self._shared.users -= 1
        self._executor.shutdown(wait=False)
        self.metrics.active_streams.dec()
        self.metrics.forget_stream(self.slot)
        self.finished_at = time.time()
        self.finished.set()

    # -- views ------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        r = self.reader
        return {
            "id": self.id,
            "slot": int(self.slot),
            "source": self.config.source.text,
            "exercise": self.config.exercise.name,
            "backend": self.config.backend if not self.config.source.keypoints else "replay",
            "model": self.config.model,
            "state": self.state,
            "error": self.error or (r.reason if r.state == StreamState.FAILED else None),
            "realtime": self.config.realtime,
            "drop_policy": r.policy.value,
            "frames_read": r.frames_read,
            "frames_processed": self.stats.frames_processed,
            "frames_dropped": r.frames_dropped,
            "reconnects": r.reconnects,
            "fps": round(self.stats.fps, 2),
            "last_latency_s": self.stats.last_latency_s,
            "people": self.stats.people,
            "reps": self.stats.reps,
            "clients": len(self.hub.clients),
            "session_id": self.id,
            "created_at": self.created_at,
            "rep_counts": {str(p): self.engine.rep_count(p) for p in self.engine.person_ids},
            "athletes": {str(p): n for p, n in self.engine.athletes().items()},
            "search": self._search_settings(),
        }

    def _search_settings(self) -> dict[str, Any] | None:
        """The live search's bounds and counters; None where the stream has none."""
        stats = search_stats(self._detector)
        if stats is None:
            return None
        return {
            "budget_ms": self.config.search_budget_ms,
            "max_crops": self.config.search_max_crops,
            **stats,
        }

    def _summary(self, result: FrameResult) -> dict[str, Any]:
        """The stream's closing message: every athlete's final total (no people, no frame)."""
        body = result.to_dict()
        body.update(
            stream_id=self.id, state=self.state, exercise=self.config.exercise.name, final=True
        )
        return body


def detect_frame(
    frame: Frame, detector: PoseDetector | None, shared: BatchingDetector | None
) -> FramePoses:
    """The poses of one frame read from a source: those a keypoint file carries, else
    the shared (batched) detector's, else the source's own detector's."""
    if frame.poses is not None:
        return frame.poses
    assert frame.image is not None
    if shared is not None:
        people = shared.detect_one(frame.image, frame.t)
    else:
        assert detector is not None
        people = detector.detect([frame.image], [frame.t])[0]
    height, width = frame.image.shape[:2]
    return FramePoses(frame.index, frame.t, width, height, people)


def _encode_jpeg(image: Any) -> str | None:
    height, width = image.shape[:2]
    if width > JPEG_WIDTH:
        scale = JPEG_WIDTH / width
        image = cv2.resize(image, (JPEG_WIDTH, round(height * scale)), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70])
    return base64.b64encode(buf.tobytes()).decode("ascii") if ok else None
