"""Live rigs: several calibrated sources fused into 3D people, served like a stream.

A rig is a set of views (camera, file or URL sources, parsed and read exactly as a
stream's: `streams.sources`, `streams.reader`), one calibration and one exercise.
Each view has its reader thread and a worker thread that detects (or replays) its
frames and hands them to the rig's fusion thread with their capture time. The
fusion thread forms instants (`RigClock`): an instant takes every view whose
frame lies within half a frame of it; a view that lags or dropped is left out of
that instant and nothing waits for it longer than one frame period (files played
as fast as they go, `realtime=false`, are taken in lockstep instead: every frame
of every view). Each instant goes through `LiveRig.step`; completed reps are
committed, then the instant is published to the rig's WebSocket clients.

A view that ends or fails mid-session is dropped from the rig, which carries on
with the remaining views while at least two can deliver, and says so in every
message and in `describe()`; with fewer than two it ends with the reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pose_analyzer.detectors.replay import KeypointFileError, read_keypoints
from pose_analyzer.engine.auto import is_auto
from pose_analyzer.exercises.registry import get_exercise
from pose_analyzer.exercises.schema import Exercise
from pose_analyzer.keypoints import JOINTS, FramePoses, PoseDetector
from pose_analyzer.metrics import PoseMetrics
from pose_analyzer.multiview.calibration import (
    CalibrationError,
    CameraRig,
    load_calibration,
    match_videos,
)
from pose_analyzer.multiview.live import LiveRig, LiveStep
from pose_analyzer.multiview.rig import RigFuser
from pose_analyzer.settings import Settings
from pose_analyzer.storage import Database
from pose_analyzer.streams.batching import BatchingDetector
from pose_analyzer.streams.hub import Hub
from pose_analyzer.streams.reader import Frame, FrameReader, KeypointReader, StreamState
from pose_analyzer.streams.runner import _encode_jpeg, detect_frame
from pose_analyzer.streams.sources import Source, SourceError, data_file, parse_source
from pose_analyzer.video import VideoError, open_video

log = logging.getLogger(__name__)
CALIBRATION_SUFFIXES = (".toml", ".qca.txt", ".qca", ".json", ".yml", ".yaml", ".xml")
MAX_VIEWS = 16
PENDING = 8  # frames a view may hold for the fusion thread before its oldest is dropped


class RigRequestError(ValueError):
    """A rig request that cannot be served as asked (the message says why): a 422."""


# --- validation ----------------------------------------------------------------------


def parse_calibration_path(value: str, data_dir: Path) -> Path:
    """A calibration file under the data directory (the policy of file sources)."""
    text = value.strip()
    if not text:
        raise SourceError("calibration is empty: give a calibration file under the data directory")
    path = data_file(text, data_dir, "calibration")
    if not path.name.lower().endswith(CALIBRATION_SUFFIXES):
        raise SourceError(
            f"calibration {text!r}: expected a Pose2Sim .toml, a Qualisys .qca.txt or an "
            "OpenCV .json/.yml file"
        )
    return path


@dataclass
class ViewSpec:
    name: str  # the calibrated camera it is
    source: Source
    size: tuple[int, int] | None  # known for files; live sources: the calibration's
    fps: float | None  # known for files


def _inspect(source: Source) -> tuple[str, tuple[int, int] | None, float | None]:
    """(name stem, image size, fps) of a source, read from the file when it is one."""
    if source.kind == "file":
        path = Path(str(source.target))
        if source.keypoints:
            try:
                frames = []
                for frame in read_keypoints(path):
                    frames.append(frame)
                    if len(frames) == 11:
                        break
            except KeypointFileError as exc:
                raise SourceError(str(exc)) from None
            if not frames:
                raise SourceError(f"{source.text!r} holds no frames")
            times = np.array([f.t for f in frames])
            # The shortest step is the frame period: a file with dropped frames has longer ones.
            fps = round(1.0 / float(np.min(np.diff(times))), 3) if len(frames) > 1 else None
            return path.stem, (frames[0].width, frames[0].height), fps
        try:
            with open_video(path) as video:
                return path.stem, video.size, round(float(video.fps), 3)
        except VideoError as exc:
            raise SourceError(str(exc)) from None
    return str(source.text), None, None


def plan_views(
    sources: list[Source], calibration: CameraRig, cameras: list[str] | None
) -> tuple[CameraRig, list[ViewSpec]]:
    """Match each source to its calibrated camera (by name, or `cameras` in order)."""
    if len(sources) < 2:
        raise RigRequestError(
            f"a rig needs at least two views of the same scene, got {len(sources)} source; "
            "stream a single camera with POST /streams"
        )
    if len(sources) > MAX_VIEWS:
        raise RigRequestError(f"{len(sources)} sources: a rig takes at most {MAX_VIEWS} views")
    if cameras is not None and len(cameras) != len(sources):
        raise RigRequestError(
            f"{len(cameras)} camera names for {len(sources)} sources: give one per source"
        )
    inspected = [_inspect(s) for s in sources]
    names = cameras or [stem for stem, _, _ in inspected]
    by_name = {c.name: c for c in calibration.cameras}
    videos = []
    for name, (_, size, _), source in zip(names, inspected, sources, strict=True):
        if size is None:  # a live source: its size is known once it delivers
            hits = [n for n in by_name if n == name] or [
                n for n in by_name if n.lower() in name.lower()
            ]
            if len(hits) != 1:
                raise CalibrationError(
                    f"source {source.text!r} matches no camera of the calibration "
                    f"({', '.join(calibration.names)}); name the cameras with `cameras`"
                )
            size = by_name[hits[0]].size
        videos.append((name, size))
    rig = match_videos(calibration, videos)
    rates = {r for _, _, r in inspected if r is not None}
    if len(rates) > 1:
        detail = ", ".join(
            f"{n} {r:g} fps" for n, (_, _, r) in zip(rig.names, inspected, strict=True) if r
        )
        raise RigRequestError(f"the views have different frame rates ({detail}); resample them")
    specs = [
        ViewSpec(cam.name, src, size, fps)
        for cam, src, (_, size, fps) in zip(rig.cameras, sources, inspected, strict=True)
    ]
    return rig, specs


def config_plays_files(config: RigConfig) -> bool:
    return config.realtime and all(v.source.kind == "file" for v in config.views)


# --- the running rig -----------------------------------------------------------------


@dataclass
class RigConfig:
    views: list[ViewSpec]
    rig: CameraRig
    calibration: str  # as the user gave it
    exercise: Exercise
    backend: str
    model: str | None
    fps: float
    realtime: bool = True
    buffer: int = 1
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 8.0
    connect_timeout_s: float | None = None
    queue_size: int = 32
    overflow_disconnect_s: float = 5.0

    @property
    def lockstep(self) -> bool:
        """Files played as fast as they go: every frame of every view, in step."""
        return not self.realtime and all(v.source.kind == "file" for v in self.views)


@dataclass
class _Delivered:
    poses: FramePoses
    read_at: float  # monotonic time the reader read the frame
    image: Any = None  # BGR, kept only when a client wants frames


@dataclass
class View:
    spec: ViewSpec
    reader: FrameReader
    detector: PoseDetector | None = None
    shared: BatchingDetector | None = None
    pending: deque[_Delivered] = field(default_factory=deque)
    thread: threading.Thread | None = None
    done: bool = False  # the worker stopped: the view will deliver nothing more
    lost_reason: str | None = None
    lost_at_instant: int | None = None
    frames_fused: int = 0
    frames_late: int = 0  # delivered but not in time for any instant
    size: tuple[int, int] | None = None
    last_t: float = -math.inf  # capture time of the last frame delivered

    @property
    def name(self) -> str:
        return self.spec.name

    def status(self) -> str:
        if self.lost_reason is not None:
            return "lost"
        return self.reader.state.value


class RigRunner:
    def __init__(
        self,
        config: RigConfig,
        *,
        db: Database,
        metrics: PoseMetrics,
        models_dir: Any,
        shared_detector: BatchingDetector | None = None,
        rig_id: str | None = None,
    ) -> None:
        self.id = rig_id or uuid.uuid4().hex[:12]
        self.config = config
        self.db = db
        self.metrics = metrics
        self.models_dir = models_dir
        self.created_at = time.time()
        self.error: str | None = None
        self.end_reason: str | None = None
        self.hub = Hub(
            queue_size=config.queue_size,
            overflow_disconnect_s=config.overflow_disconnect_s,
            on_drop=lambda n: metrics.ws_dropped.inc(n),
            on_disconnect=lambda reason: metrics.ws_disconnects.labels(reason).inc(),
        )
        self.fuser = RigFuser(config.rig, config.fps)
        self.live = LiveRig(self.fuser, config.exercise)
        self.tolerance_s = self.fuser.tolerance_s
        self.period_s = 1.0 / config.fps
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.views: list[View] = []
        # Files played live share one clock: frame t of every view is due at the same time.
        self.clock_start: float | None = None
        for spec in config.views:
            reader_cls = KeypointReader if spec.source.keypoints else FrameReader
            reader = reader_cls(
                spec.source,
                realtime=config.realtime,
                buffer=config.buffer if not config.lockstep else 4,
                reconnect_initial_s=config.reconnect_initial_s,
                reconnect_max_s=config.reconnect_max_s,
                connect_timeout_s=config.connect_timeout_s,
                on_state=functools.partial(self._on_state, spec.name),
            )
            self.views.append(View(spec, reader, shared=shared_detector, size=spec.size))
        self._shared = shared_detector
        self.instants = 0
        self.reps = 0
        self.last_latency_s: float | None = None
        self.fps = 0.0
        self._window: deque[float] = deque()
        self._fusion: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.finished = asyncio.Event()
        self.finished_at: float | None = None
        self.session_status = "live"
        self.final_message: dict[str, Any] | None = None
        self.last_message: dict[str, Any] | None = None
        self._anomalies_seen: dict[int, int] = {}
        self.state = "connecting"
        self._ended_with: list[str] = []  # views still delivering when the rig ended
        self._last_t = -math.inf  # capture time of the last instant fused

    # -- lifecycle --------------------------------------------------------------------

    def _on_state(self, view: str, state: StreamState, reason: str | None) -> None:
        log.info(
            "rig %s view %s: %s%s", self.id, view, state.value, f" ({reason})" if reason else ""
        )
        with self._cond:
            self._cond.notify_all()

    def _load_detectors(self) -> None:
        if self.config.backend in ("replay", "yolo"):
            return
        from pose_analyzer.detectors import create_detector

        kw: dict[str, Any] = {}
        if self.config.backend == "mediapipe":
            kw = {"mode": "video", "models_dir": self.models_dir}
        for view in self.views:
            view.detector = create_detector(self.config.backend, self.config.model, **kw)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._load_detectors)
            await asyncio.to_thread(
                self.db.start_session,
                self.id,
                kind="rig",
                source=", ".join(v.spec.source.text for v in self.views),
                exercise=self.config.exercise.name,
                backend=self.config.backend,
                cameras=[{"name": v.name, "source": v.spec.source.text} for v in self.views],
                calibration=self.config.calibration,
            )
        except BaseException:
            self._close_detectors()
            raise
        self.metrics.active_rigs.inc()
        if self._shared is not None:
            self._shared.users += len(self.views)
        # One clock for every view: capture times of live sources count from now; files
        # played live have their first frame due a moment from now, once all have opened.
        lead = 0.2 if config_plays_files(self.config) else 0.0
        self.clock_start = time.monotonic() + lead
        for view in self.views:
            view.reader.clock_start = self.clock_start
            view.reader.start()
            view.thread = threading.Thread(
                target=self._work, args=(view,), name=f"rig-{self.id}-{view.name}", daemon=True
            )
            view.thread.start()
        self.state = "live"
        self._fusion = threading.Thread(target=self._fuse_loop, name=f"rig-{self.id}", daemon=True)
        self._fusion.start()

    async def stop(self) -> None:
        if self.finished.is_set():
            return
        self._stopping = True
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        await asyncio.to_thread(self._stop_readers, 5.0)
        await self.finished.wait()

    def _stop_readers(self, timeout: float) -> None:
        for view in self.views:
            view.reader.stop(timeout)

    def _join_workers(self, timeout: float) -> None:
        for view in self.views:
            if view.thread is not None:
                view.thread.join(timeout)

    # -- per view: read -> detect -> hand over ---------------------------------------

    def _work(self, view: View) -> None:
        reader = view.reader
        try:
            while not self._stop.is_set():
                frame = reader.get(0.25)
                if frame is None:
                    if reader.drained():
                        break
                    continue
                delivered = self._detect(view, frame)
                with self._cond:
                    if self.config.lockstep:
                        while len(view.pending) >= PENDING and not self._stop.is_set():
                            self._cond.wait(0.1)
                    elif len(view.pending) >= PENDING:
                        view.pending.popleft()
                        view.frames_late += 1
                    view.pending.append(delivered)
                    view.last_t = delivered.poses.t
                    self._cond.notify_all()
        except Exception as exc:  # a broken view leaves the rig, never takes the service
            log.exception("rig %s view %s failed", self.id, view.name)
            with self._cond:
                view.lost_reason = f"{type(exc).__name__}: {exc}"
        finally:
            with self._cond:
                view.done = True
                self._cond.notify_all()

    def _detect(self, view: View, frame: Frame) -> _Delivered:
        t0 = time.perf_counter()
        poses = detect_frame(frame, view.detector, view.shared)
        self.metrics.stage_seconds.labels("detect").observe(time.perf_counter() - t0)
        view.size = (poses.width, poses.height)
        image = frame.image if self.hub.wants_frames else None
        return _Delivered(poses, frame.read_at, image)

    # -- fusion -----------------------------------------------------------------------

    def _mark_lost(self) -> None:
        """Views that can deliver nothing more while the rig has moved past their last
        frame (or that failed) leave the rig (under the lock)."""
        heads = [v.pending[0].poses.t for v in self.views if v.pending]
        for view in self.views:
            if view.lost_reason is None and view.done and not view.pending:
                r = view.reader
                failed = r.state in (StreamState.FAILED, StreamState.STOPPED)
                passed = any(t > view.last_t + self.tolerance_s for t in heads)
                if not (failed or passed):
                    continue  # it ended with the others (so far): the rig's own end
                why = r.reason or (
                    "the source ended" if r.state == StreamState.ENDED else r.state.value
                )
                view.lost_reason = f"{r.state.value}: {why} after {r.frames_read} frames"
            if view.lost_reason is not None and view.lost_at_instant is None:
                view.lost_at_instant = self.instants
                log.warning(
                    "rig %s: view %s left the rig (%s)", self.id, view.name, view.lost_reason
                )

    def _next_instant(self) -> tuple[float, dict[str, _Delivered]] | None:
        """Wait for the next instant's frames (under the lock); None when the rig is over."""
        with self._cond:
            while True:
                if self._stop.is_set():
                    return None
                # Frames of an instant already fused (a view more than a frame behind)
                # can never be used: late.
                for view in self.views:
                    while (
                        view.pending and view.pending[0].poses.t <= self._last_t + self.tolerance_s
                    ):
                        view.pending.popleft()
                        view.frames_late += 1
                self._mark_lost()
                able = [v for v in self.views if v.pending or (not v.done and not v.lost_reason)]
                if len(able) < 2:
                    self._ended_with = [v.name for v in able]
                    return None
                waiting = [v for v in able if v.pending]
                if not waiting:
                    self._cond.wait(0.25)
                    continue
                anchor = min(v.pending[0].poses.t for v in waiting)
                first_read = min(
                    v.pending[0].read_at for v in waiting if v.pending[0].poses.t == anchor
                )
                # Every able view has delivered this instant or a later one: fuse now.
                ready = all(v.pending and v.pending[0].poses.t >= anchor - 1e-9 for v in able)
                if not ready:
                    if self.config.lockstep:
                        self._cond.wait(0.25)
                        continue
                    # Live: a view that has not delivered one frame period after the
                    # first view of this instant is late and left out; nothing waits longer.
                    wait = first_read + self.period_s - time.monotonic()
                    if wait > 0:
                        self._cond.wait(wait)
                        continue
                taken: dict[str, _Delivered] = {}
                for view in waiting:
                    head = view.pending[0]
                    if abs(head.poses.t - anchor) <= self.tolerance_s + 1e-9:
                        taken[view.name] = view.pending.popleft()
                    # Frames older than the instant can never be used: they were late.
                    while view.pending and view.pending[0].poses.t < anchor - self.tolerance_s:
                        view.pending.popleft()
                        view.frames_late += 1
                self._cond.notify_all()
                used = [v for v in waiting if v.name in taken]
                if len(taken) < 2:
                    # One view alone at this time (the others are ahead of it, or lag more
                    # than a frame): nothing to fuse; its frame was late for the rig.
                    for view in used:
                        view.frames_late += 1
                    continue
                for view in used:
                    view.frames_fused += 1
                self._last_t = anchor
                return anchor, taken

    def _fuse_loop(self) -> None:
        try:
            while True:
                got = self._next_instant()
                if got is None:
                    break
                t, taken = got
                t0 = time.perf_counter()
                step = self.live.step(t, {n: d.poses for n, d in taken.items()})
                self.metrics.stage_seconds.labels("analyze").observe(time.perf_counter() - t0)
                self._persist(step)
                message = self._message(step, taken)
                last_read = max(d.read_at for d in taken.values()) if taken else time.monotonic()
                jpegs = None
                if any(d.image is not None for d in taken.values()):
                    jpegs = {
                        n: _encode_jpeg(d.image) for n, d in taken.items() if d.image is not None
                    }
                self._publish(message, last_read, jpegs)
            if not self._stopping:
                # Reps already back at rest when the views ended still count.
                for track_id, rep in self.live.finish_people():
                    self._store_rep(track_id, rep)
        except Exception as exc:  # storage gone mid-session, or a bug: the rig ends cleanly
            log.exception("rig %s failed", self.id)
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                asyncio.run_coroutine_threadsafe(self._finish(), loop)

    def _all_ended(self) -> bool:
        return all(v.reader.state == StreamState.ENDED for v in self.views)

    def _store_rep(self, track_id: int, rep: Any) -> None:
        self.db.add_rep(self.id, int(track_id), rep.to_dict(), self.instants)
        self.reps += 1
        exercise = self.config.exercise.name
        self.metrics.reps.labels(exercise).inc()
        self.metrics.rep_score.labels(exercise).observe(rep.score)
        for fault in rep.faults:
            self.metrics.faults.labels(exercise, fault.code).inc()

    def _persist(self, step: LiveStep) -> None:
        """Completed reps (and their anomalies) committed before the instant is published."""
        for person in step.people:
            if person.new_rep is not None:
                self._store_rep(person.fused.track_id, person.new_rep)
            analyzer = self.live.analyzer(person.fused.track_id)
            if analyzer is None:
                continue
            seen = self._anomalies_seen.get(person.fused.track_id, 0)
            for anomaly in analyzer.anomalies[seen:]:
                self.db.add_anomaly(
                    self.id, person.fused.track_id, anomaly.rep_index, anomaly.reason
                )
                self.metrics.anomalies.labels(self.config.exercise.name).inc()
            self._anomalies_seen[person.fused.track_id] = len(analyzer.anomalies)

    def _message(self, step: LiveStep, taken: dict[str, _Delivered]) -> dict[str, Any]:
        body = step.to_dict()
        inst = step.instant
        with self._cond:
            views = {}
            lost = {}
            for view in self.views:
                if view.name in taken:
                    status = "used"
                elif view.lost_reason is not None:
                    status = "lost"
                    lost[view.name] = view.lost_reason
                elif view.reader.state in (StreamState.RECONNECTING, StreamState.CONNECTING):
                    status = view.reader.state.value
                else:
                    status = "late"
                views[view.name] = status
        rig = self.config.rig
        reprojected: dict[str, dict[str, list[list[float] | None]]] = {n: {} for n in rig.names}
        for person in inst.people:
            px = rig.project(person.points)  # (V, J, 2)
            for v, name in enumerate(rig.names):
                reprojected[name][str(person.track_id)] = [
                    [round(float(u), 1), round(float(w), 1)] if np.isfinite([u, w]).all() else None
                    for u, w in px[v]
                ]
        body.update(
            rig_id=self.id,
            exercise=self.config.exercise.name,
            state=self.state,
            views=views,
            views_lost=lost,
            views_late=[n for n, s in views.items() if s in ("late", "connecting", "reconnecting")],
            sizes={v.name: list(v.size) if v.size else None for v in self.views},
            reprojected=reprojected,
            rep_counts={str(p.fused.track_id): p.rep_count for p in step.people},
        )
        return body

    def _publish(
        self, message: dict[str, Any], last_read: float, jpegs: dict[str, str | None] | None
    ) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        done = threading.Event()

        def send() -> None:
            try:
                now = time.monotonic()
                latency = now - last_read
                message["latency_s"] = round(latency, 5)
                message["captured_monotonic_s"] = round(last_read, 6)
                self.hub.publish(message, None)
                if jpegs:
                    # Per-view frames only to the clients that asked (a second message kind).
                    self._publish_frames(message["instant"], jpegs)
                self._tick(now, latency, message)
            finally:
                done.set()

        loop.call_soon_threadsafe(send)
        # One instant in flight: the next is fused once this one reached the clients'
        # queues, so messages leave in order and a stopped loop cannot pile them up.
        while not done.wait(0.5):
            if self._stop.is_set() or loop.is_closed():
                return

    def _publish_frames(self, instant: int, jpegs: dict[str, str | None]) -> None:
        from pose_analyzer.streams.hub import dumps

        text = dumps({"rig_id": self.id, "instant": instant, "jpegs": jpegs})
        for client in list(self.hub.clients):
            if client.want_frames and not client.offer(text):
                self.hub.disconnect(client, "too slow: the message queue stayed full")

    def _tick(self, now: float, latency: float, message: dict[str, Any]) -> None:
        self.instants += 1
        self.last_latency_s = latency
        self.last_message = message
        self._window.append(now)
        while self._window and now - self._window[0] > 2.0:
            self._window.popleft()
        if len(self._window) > 1:
            span = self._window[-1] - self._window[0]
            self.fps = (len(self._window) - 1) / span if span > 0 else 0.0
        m = self.metrics
        m.rig_instants.labels(self.id).inc()
        m.rig_fps.labels(self.id).set(self.fps)
        m.rig_views_used.labels(self.id).set(len(message["views_used"]))
        m.rig_latency.observe(latency)
        for person in message["people"]:
            err = person.get("reprojection_error_px")
            if err is not None and math.isfinite(err):
                m.rig_reprojection.labels(self.id).observe(err)

    async def _finish(self) -> None:
        if self._stopping:
            self.state = "stopped"
        self._stop.set()  # workers waiting for room (lockstep) give up
        with self._cond:
            self._cond.notify_all()
        await asyncio.to_thread(self._stop_readers, 2.0)
        # No detection may still run on a detector that is about to close.
        await asyncio.to_thread(self._join_workers, 10.0)
        lost = {v.name: v.lost_reason for v in self.views if v.lost_reason}
        # Views that stopped with the rig's end (not before it): what they said.
        last = {
            v.name: f"{v.reader.state.value}: {v.reader.reason or 'the source ended'}"
            for v in self.views
            if not v.lost_reason
        }
        all_failed = all(v.reader.state == StreamState.FAILED for v in self.views)
        if self.error:
            status = "failed"
        elif self._stopping:
            status = "ended"
            self.end_reason = "stopped"
        elif len(self.views) - len(lost) < 2:  # views left the rig until one was left
            status = "failed"
            detail = "; ".join(f"{n}: {r}" for n, r in lost.items())
            still = ", ".join(self._ended_with)
            self.end_reason = f"fewer than two views left ({detail}; still delivering: {still})"
        elif all_failed:
            status = "failed"
            detail = "; ".join(f"{n}: {r}" for n, r in {**lost, **last}.items())
            self.end_reason = f"the views failed ({detail})"
        else:
            status = "ended"
            self.end_reason = "the sources ended"
        if not self._stopping:
            self.state = "failed" if status == "failed" else "ended"
        self.session_status = status
        self.final_message = {
            "rig_id": self.id,
            "final": True,
            "state": self.state,
            "reason": self.error or self.end_reason,
            "instants": self.instants,
            "views_lost": lost,
            "rep_counts": {str(p): self.live.rep_count(p) for p in self.live.track_ids},
            "last_instant": self.last_message,
        }
        self.hub.publish(self.final_message, None)
        try:
            await asyncio.to_thread(
                self.db.end_session,
                self.id,
                status=status,
                frames=self.instants,
                error=(self.error or self.end_reason) if status == "failed" else None,
            )
        except Exception as exc:  # storage trouble must not keep the views' slots taken
            log.error("rig %s: session end not stored: %s", self.id, exc)
        await self.hub.close_all("rig ended" if not self._stopping else "rig stopped")
        await asyncio.to_thread(self._close_detectors)
        if self._shared is not None:
            self._shared.users -= len(self.views)
        self.metrics.active_rigs.dec()
        self.metrics.forget_rig(self.id)
        self.finished_at = time.time()
        self.finished.set()

    def _close_detectors(self) -> None:
        for view in self.views:
            if view.detector is not None:
                try:
                    view.detector.close()
                except Exception:  # closing must free the rest
                    log.exception("rig %s: detector of %s did not close", self.id, view.name)
                view.detector = None

    # -- views ------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        with self._cond:
            views = [
                {
                    "name": v.name,
                    "source": v.spec.source.text,
                    "state": v.status(),
                    "reason": v.lost_reason or v.reader.reason,
                    "lost_at_instant": v.lost_at_instant,
                    "frames_read": v.reader.frames_read,
                    "frames_fused": v.frames_fused,
                    "frames_late": v.frames_late,
                    "frames_dropped": v.reader.frames_dropped,
                    "size": list(v.size) if v.size else None,
                    "center_m": [round(float(c), 4) for c in cam.center],
                }
                for v, cam in zip(self.views, self.config.rig.cameras, strict=True)
            ]
        active = [v["name"] for v in views if v["state"] != "lost"]
        return {
            "id": self.id,
            "calibration": self.config.calibration,
            "exercise": self.config.exercise.name,
            "backend": self.config.backend,
            "model": self.config.model,
            "realtime": self.config.realtime,
            "sync": "lockstep" if self.config.lockstep else "capture_time",
            "fps_nominal": self.config.fps,
            "tolerance_s": round(self.tolerance_s, 6),
            "state": self.state,
            "error": self.error,
            "reason": self.error or self.end_reason,
            "views": views,
            "views_active": active,
            "views_lost": {v["name"]: v["reason"] for v in views if v["state"] == "lost"},
            "instants": self.instants,
            "fps": round(self.fps, 2),
            "last_latency_s": self.last_latency_s,
            "people": len(self.last_message["people"]) if self.last_message else 0,
            "reps": self.reps,
            "rep_counts": {str(p): self.live.rep_count(p) for p in self.live.track_ids},
            "clients": len(self.hub.clients),
            "session_id": self.id,
            "session_status": self.session_status,
            "created_at": self.created_at,
            "joints": list(JOINTS),
        }


# --- the service's rigs --------------------------------------------------------------


class RigManager:
    """All rigs of the service. Each view of a rig takes one stream slot (POSE_MAX_STREAMS):
    a view costs what a stream costs (a reader and a detector)."""

    def __init__(
        self, settings: Settings, db: Database, metrics: PoseMetrics, streams: Any
    ) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics
        self.streams = streams  # the StreamManager: its limit and its lock are shared
        self.rigs: dict[str, RigRunner] = {}
        streams.external_slots = self.slots_in_use

    def slots_in_use(self) -> int:
        return sum(len(r.views) for r in self.rigs.values() if not r.finished.is_set())

    async def start(
        self,
        sources: list[str | int],
        calibration: str,
        exercise: str | Exercise,
        *,
        cameras: list[str] | None = None,
        backend: str | None = None,
        model: str | None = None,
        realtime: bool = True,
        fps: float | None = None,
    ) -> RigRunner:
        from pose_analyzer.streams.manager import (
            BACKENDS,
            StreamLimitError,
            _probe_camera,
            check_model,
            start_runner,
        )

        data_dir = Path(self.settings.data_dir)
        definition = get_exercise(exercise) if isinstance(exercise, str) else exercise
        if is_auto(definition):
            raise RigRequestError(
                "exercise 'auto' needs the whole recording; analyze the files with "
                "`pose-analyzer analyze-multiview`, or name an exercise for a live rig"
            )
        if len(sources) < 2:
            raise RigRequestError(
                f"a rig needs at least two views of the same scene, got {len(sources)} source; "
                "stream a single camera with POST /streams"
            )
        policy = self.streams.policy
        parsed = [await asyncio.to_thread(parse_source, s, data_dir, policy) for s in sources]
        for p in parsed:
            if p.kind == "camera":  # a camera that does not open is a 400 now
                await asyncio.to_thread(_probe_camera, p)
        texts = [p.text for p in parsed]
        if len(set(map(str, (p.target for p in parsed)))) != len(parsed):
            raise RigRequestError(f"the same source is given twice: {texts}")
        path = parse_calibration_path(calibration, data_dir)
        calib = await asyncio.to_thread(load_calibration, path)
        rig, specs = await asyncio.to_thread(plan_views, parsed, calib, cameras)
        keypoints = [p.keypoints for p in parsed]
        if backend is None:
            backend = "replay" if all(keypoints) else self.settings.default_backend
        if backend not in BACKENDS:
            raise RigRequestError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        if (backend == "replay") != all(keypoints) or (any(keypoints) and not all(keypoints)):
            raise RigRequestError(
                "the replay backend reads keypoint files (.jsonl) and only those, and a rig's "
                f"views share one backend; got backend {backend!r} for {texts}"
            )
        if model is None and backend == "mediapipe":
            model = self.settings.default_model
        await asyncio.to_thread(check_model, backend, model, Path(self.settings.models_dir))
        rate = fps or next((s.fps for s in specs if s.fps), None) or 30.0
        config = RigConfig(
            views=specs,
            rig=rig,
            calibration=calibration,
            exercise=definition,
            backend=backend,
            model=model,
            fps=float(rate),
            realtime=realtime,
            **self.streams.live_io(),
        )
        async with self.streams._lock:
            streams_used = sum(1 for s in self.streams.streams.values() if not s.finished.is_set())
            rigs_used = self.slots_in_use()
            limit = self.settings.max_streams
            if streams_used + rigs_used + len(specs) > limit:
                raise StreamLimitError(
                    f"too many streams: a rig of {len(specs)} views takes {len(specs)} of the "
                    f"{limit} stream slots (POSE_MAX_STREAMS); {streams_used} stream(s) and "
                    f"{rigs_used} rig view(s) are running; stop some first"
                )
            shared = await self.streams.shared_detector(backend, model)
            runner = RigRunner(
                config,
                db=self.db,
                metrics=self.metrics,
                models_dir=self.settings.models_dir,
                shared_detector=shared,
            )
            await start_runner(runner, backend)
            self.rigs[runner.id] = runner
        return runner

    def get(self, rig_id: str) -> RigRunner | None:
        return self.rigs.get(rig_id)

    def list(self) -> list[dict[str, Any]]:
        return [r.describe() for r in self.rigs.values()]

    async def stop(self, rig_id: str) -> dict[str, Any] | None:
        runner = self.rigs.get(rig_id)
        if runner is None:
            return None
        await runner.stop()
        self.rigs.pop(rig_id, None)
        info = runner.describe()
        info["state"] = "stopped"
        return info

    def reap(self, grace_s: float = 60.0) -> None:
        now = time.time()
        for rig_id, runner in list(self.rigs.items()):
            if runner.finished_at is not None and now - runner.finished_at > grace_s:
                self.rigs.pop(rig_id, None)

    def checkpoint(self) -> None:
        live = {rid: r.instants for rid, r in self.rigs.items() if r.finished_at is None}
        self.db.checkpoint(live)

    async def stop_all(self) -> None:
        await asyncio.gather(*(r.stop() for r in list(self.rigs.values())))
        self.rigs.clear()
