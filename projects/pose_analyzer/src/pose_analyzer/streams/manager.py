"""All running streams of the service: start, stop, list, with a limit."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from pose_analyzer.engine.auto import is_auto
from pose_analyzer.exercises.registry import get_exercise
from pose_analyzer.metrics import PoseMetrics
from pose_analyzer.settings import Settings
from pose_analyzer.storage import Database
from pose_analyzer.streams.batching import BatchingDetector
from pose_analyzer.streams.runner import StreamConfig, StreamRunner
from pose_analyzer.streams.sources import Source, SourceError, parse_source
from pose_analyzer.video import VideoError, open_video

log = logging.getLogger(__name__)
BACKENDS = ("mediapipe", "yolo", "replay")


class StreamLimitError(RuntimeError):
    pass


class StreamRequestError(ValueError):
    """A stream request that cannot be served as asked (bad backend for the source)."""


class StreamStartError(RuntimeError):
    """The stream could not start (model missing, backend failed to load)."""


class StreamManager:
    def __init__(self, settings: Settings, db: Database, metrics: PoseMetrics) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics
        self.streams: dict[str, StreamRunner] = {}
        self._lock = asyncio.Lock()
        self._batchers: dict[str, BatchingDetector] = {}

    def _free_slot(self) -> int:
        used = {int(s.slot) for s in self.streams.values() if not s.finished.is_set()}
        for slot in range(self.settings.max_streams):
            if slot not in used:
                return slot
        raise StreamLimitError(
            f"too many streams: {self.settings.max_streams} are running "
            "(POSE_MAX_STREAMS); stop one first"
        )

    async def start(
        self,
        source: str | int,
        exercise: str,
        backend: str | None = None,
        model: str | None = None,
        realtime: bool = True,
    ) -> StreamRunner:
        """Validate and start; raises SourceError, UnknownExerciseError, StreamRequestError,
        StreamLimitError or StreamStartError with a message for the user."""
        parsed = parse_source(source, Path(self.settings.data_dir))
        definition = get_exercise(exercise)
        if is_auto(definition):
            raise StreamRequestError(
                "exercise 'auto' needs the whole recording; analyze the file with POST "
                "/analyze, or name an exercise for a live stream"
            )
        backend = backend or ("replay" if parsed.keypoints else self.settings.default_backend)
        if backend not in BACKENDS:
            raise StreamRequestError(
                f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}"
            )
        if (backend == "replay") != parsed.keypoints:
            raise StreamRequestError(
                "the replay backend reads keypoint files (.jsonl) and only those; "
                f"got backend {backend!r} for {parsed.text!r}"
            )
        if parsed.kind == "camera":
            await asyncio.to_thread(_probe_camera, parsed)
        if model is None and backend == "mediapipe":
            model = self.settings.default_model
        async with self._lock:
            slot = self._free_slot()
            shared = None
            if backend == "yolo":
                try:
                    shared = await self._batcher(model)
                except Exception as exc:
                    raise StreamStartError(f"cannot start the yolo backend: {exc}") from exc
            runner = StreamRunner(
                StreamConfig(
                    source=parsed,
                    exercise=definition,
                    backend=backend,
                    model=model,
                    realtime=realtime,
                    buffer=self.settings.reader_buffer,
                    reconnect_initial_s=self.settings.reconnect_initial_s,
                    reconnect_max_s=self.settings.reconnect_max_s,
                    queue_size=self.settings.ws_queue,
                    overflow_disconnect_s=self.settings.ws_overflow_disconnect_s,
                ),
                slot=slot,
                db=self.db,
                metrics=self.metrics,
                models_dir=self.settings.models_dir,
                shared_detector=shared,
            )
            try:
                await runner.start()
            except Exception as exc:
                raise StreamStartError(f"cannot start the {backend} backend: {exc}") from exc
            self.streams[runner.id] = runner
        return runner

    async def _batcher(self, model: str | None) -> BatchingDetector:
        """The YOLO detector all YOLO streams with this model share, batched across them."""
        key = model or "default"
        if key not in self._batchers:
            detector, batch = await asyncio.to_thread(
                _load_yolo,
                model,
                Path(self.settings.models_dir),
                self.settings.max_streams,
                self.settings.yolo_batch,
            )
            self._batchers[key] = BatchingDetector(
                detector,
                max_batch=batch,
                on_batch=lambda n: self.metrics.detect_batch.observe(n),
            )
            log.info("YOLO batcher for %s: up to %d frames per inference", key, batch)
        return self._batchers[key]

    def get(self, stream_id: str) -> StreamRunner | None:
        return self.streams.get(stream_id)

    def list(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self.streams.values()]

    async def stop(self, stream_id: str) -> dict[str, Any] | None:
        runner = self.streams.get(stream_id)
        if runner is None:
            return None
        await runner.stop()
        self.streams.pop(stream_id, None)
        info = runner.describe()
        info["state"] = "stopped"
        info["session_status"] = runner.session_status
        return info

    def reap(self, grace_s: float = 60.0) -> None:
        """Forget streams that ended by themselves `grace_s` ago (their sessions are closed)."""
        now = time.time()
        for stream_id, runner in list(self.streams.items()):
            if runner.finished_at is not None and now - runner.finished_at > grace_s:
                self.streams.pop(stream_id, None)

    async def stop_all(self) -> None:
        await asyncio.gather(*(s.stop() for s in list(self.streams.values())))
        self.streams.clear()
        for batcher in self._batchers.values():
            await asyncio.to_thread(batcher.close)
        self._batchers.clear()


def _load_yolo(
    model: str | None, models_dir: Path, max_streams: int, batch_override: int | None
) -> tuple[Any, int]:
    """The YOLO detector and its batch size: the planner's for this GPU, else the CPU's."""
    from gpu_optimizer.planning import pose_inference_batch_size
    from pose_analyzer.detectors import create_detector
    from pose_analyzer.detectors.yolo_backend import resolve_device

    device = resolve_device("auto")
    if batch_override:
        batch = batch_override
    elif device.startswith("cuda"):
        import torch

        vram = int(torch.cuda.get_device_properties(0).total_memory)
        batch = pose_inference_batch_size(vram)
    else:
        # The planner's CPU answer (1): measured in bench/bench_pose_pipeline.py, one
        # frame per inference is faster on a CPU than batches of four.
        batch = pose_inference_batch_size(None)
    batch = min(max_streams, batch)
    detector = create_detector("yolo", model, device=device, models_dir=models_dir)
    return detector, max(1, batch)


def _probe_camera(source: Source) -> None:
    """A camera that does not open is a bad request now, not a stream stuck connecting."""
    try:
        open_video(source.target).close()
    except VideoError as exc:
        raise SourceError(str(exc)) from exc
