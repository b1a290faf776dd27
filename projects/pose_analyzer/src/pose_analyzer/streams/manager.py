"""All running streams of the service: start, stop, list, with a limit."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError

from gpu_optimizer.storage.guard import StorageUnavailable
from pose_analyzer.engine.auto import is_auto
from pose_analyzer.exercises.registry import get_exercise
from pose_analyzer.exercises.schema import Exercise
from pose_analyzer.metrics import PoseMetrics
from pose_analyzer.settings import Settings
from pose_analyzer.storage import Database
from pose_analyzer.streams.batching import BatchingDetector
from pose_analyzer.streams.memory import release_memory
from pose_analyzer.streams.runner import StreamConfig, StreamRunner
from pose_analyzer.streams.sources import Source, SourceError, SourcePolicy, parse_source
from pose_analyzer.video import VideoError, open_video

log = logging.getLogger(__name__)
BACKENDS = ("mediapipe", "yolo", "replay")


class StreamLimitError(RuntimeError):
    pass


class StreamRequestError(ValueError):
    """A stream request that cannot be served as asked (bad backend for the source)."""


class StreamStartError(RuntimeError):
    """The stream could not start (model missing, backend failed to load)."""


async def start_runner(runner: Any, backend: str) -> None:
    """Start a live runner; a failure that is not the database's (a 503) is the
    backend's: a StreamStartError with the reason."""
    try:
        await runner.start()
    except (StorageUnavailable, DBAPIError):
        raise
    except Exception as exc:
        raise StreamStartError(f"cannot start the {backend} backend: {exc}") from exc


class StreamManager:
    def __init__(self, settings: Settings, db: Database, metrics: PoseMetrics) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics
        self.streams: dict[str, StreamRunner] = {}
        self._lock = asyncio.Lock()
        self._batchers: dict[str, BatchingDetector] = {}
        self.policy = SourcePolicy.parse(settings.source_allow)
        self._trimmed: set[str] = set()  # finished streams whose memory was given back
        # Slots taken outside this manager (each view of a rig takes one: multiview/service.py).
        self.external_slots: Callable[[], int] = lambda: 0

    def _free_slot(self) -> int:
        used = {int(s.slot) for s in self.streams.values() if not s.finished.is_set()}
        others = self.external_slots()
        for slot in range(self.settings.max_streams):
            if slot not in used and len(used) + others < self.settings.max_streams:
                return slot
        raise StreamLimitError(
            f"too many streams: {self.settings.max_streams} are running "
            f"(POSE_MAX_STREAMS; rig views count too: {others}); stop one first"
        )

    async def start(
        self,
        source: str | int,
        exercise: str | Exercise,
        backend: str | None = None,
        model: str | None = None,
        realtime: bool = True,
        *,
        search: bool | None = None,
        search_budget_ms: float | None = None,
        search_max_crops: int | None = None,
    ) -> StreamRunner:
        """Validate and start; raises SourceError, UnknownExerciseError, StreamRequestError,
        StreamLimitError or StreamStartError with a message for the user."""
        parsed = await asyncio.to_thread(
            parse_source, source, Path(self.settings.data_dir), self.policy
        )
        definition = get_exercise(exercise) if isinstance(exercise, str) else exercise
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
        live_search = self._search(backend, search, search_budget_ms, search_max_crops)
        if parsed.kind == "camera":
            await asyncio.to_thread(_probe_camera, parsed)
        if model is None and backend == "mediapipe":
            model = self.settings.default_model
        await asyncio.to_thread(check_model, backend, model, Path(self.settings.models_dir))
        async with self._lock:
            slot = self._free_slot()
            shared = await self.shared_detector(backend, model)
            runner = StreamRunner(
                StreamConfig(
                    source=parsed,
                    exercise=definition,
                    backend=backend,
                    model=model,
                    realtime=realtime,
                    **self.live_io(),
                    **live_search,
                ),
                slot=slot,
                db=self.db,
                metrics=self.metrics,
                models_dir=self.settings.models_dir,
                shared_detector=shared,
            )
            await start_runner(runner, backend)
            self.streams[runner.id] = runner
        return runner

    def _search(
        self, backend: str, search: bool | None, budget_ms: float | None, max_crops: int | None
    ) -> dict[str, Any]:
        """A stream's re-detection search (StreamConfig fields): asked for, or the
        setting's default for MediaPipe streams; a bound given asks for it."""
        s = self.settings
        bounds = {"search_budget_ms": budget_ms, "search_max_crops": max_crops}
        given = [k for k, v in bounds.items() if v is not None]
        if search is None:
            search = backend == "mediapipe" and (s.live_search or bool(given))
        if (search or given) and backend != "mediapipe":
            raise StreamRequestError(
                "the re-detection search (search, search_budget_ms, search_max_crops) is "
                f"for mediapipe streams; {backend} streams "
                + ("share a batched detector" if backend == "yolo" else "carry their poses")
            )
        if given and not search:
            raise StreamRequestError(f"{', '.join(given)} given with search false")
        return {
            "search": search,
            "search_budget_ms": s.live_search_budget_ms if budget_ms is None else budget_ms,
            "search_max_crops": s.live_search_max_crops if max_crops is None else max_crops,
        }

    def live_io(self) -> dict[str, Any]:
        """The reader and WebSocket settings every live runner (stream or rig) takes."""
        s = self.settings
        return {
            "buffer": s.reader_buffer,
            "reconnect_initial_s": s.reconnect_initial_s,
            "reconnect_max_s": s.reconnect_max_s,
            "connect_timeout_s": s.connect_timeout_s,
            "queue_size": s.ws_queue,
            "overflow_disconnect_s": s.ws_overflow_disconnect_s,
        }

    async def shared_detector(self, backend: str, model: str | None) -> BatchingDetector | None:
        """The batched detector a YOLO runner shares (None for other backends); a model
        that fails to load is a StreamStartError."""
        if backend != "yolo":
            return None
        try:
            return await self._batcher(model)
        except Exception as exc:
            raise StreamStartError(f"cannot start the yolo backend: {exc}") from exc

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
        self._trimmed.discard(stream_id)
        await asyncio.to_thread(release_memory)
        info = runner.describe()
        info["state"] = "stopped"
        info["session_status"] = runner.session_status
        return info

    def reap(self, grace_s: float = 60.0) -> bool:
        """Forget streams that ended by themselves `grace_s` ago (their sessions are closed).

        True when a stream finished since the last call: its detector is closed, and
        the caller should give the freed memory back (streams.memory.release_memory).
        """
        now = time.time()
        newly_finished = False
        for stream_id, runner in list(self.streams.items()):
            if runner.finished_at is not None and stream_id not in self._trimmed:
                self._trimmed.add(stream_id)
                newly_finished = True
            if runner.finished_at is not None and now - runner.finished_at > grace_s:
                self.streams.pop(stream_id, None)
                self._trimmed.discard(stream_id)
        return newly_finished

    def checkpoint(self) -> None:
        """Store each running stream's frame count (a killed service keeps it)."""
        live = {
            sid: r.stats.frames_processed
            for sid, r in self.streams.items()
            if r.finished_at is None
        }
        self.db.checkpoint(live)

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


YOLO_SUFFIXES = (".pt",)
YAML_NAME = re.compile(r"^yolo[0-9a-z._-]*-pose\.ya?ml$")


def _check_yolo_model(model: str | None, models_dir: Path) -> None:
    """A YOLO model the service will load: refused now with the reason, not after a 201.

    Weights must be an Ultralytics checkpoint (a zip archive, ``*.pt``) inside the
    models directory; a bare ``yolo*-pose.yaml`` name builds the architecture with
    random weights. Anything else (``/etc/passwd``, a path outside the models
    directory) is a StreamRequestError.
    """
    from pose_analyzer.detectors.yolo_backend import DEFAULT_WEIGHTS

    if model is not None and model.lower().endswith((".yaml", ".yml")):
        if not YAML_NAME.match(model):
            raise StreamRequestError(
                f"YOLO model {model[:80]!r}: a model yaml must be an Ultralytics pose "
                "architecture name such as yolo11n-pose.yaml"
            )
        return
    # Lexical containment: the models directory may itself hold links to shared files.
    root = Path(os.path.abspath(models_dir))
    try:
        path = Path(os.path.normpath(root / (model or DEFAULT_WEIGHTS)))
        is_file = path.is_file()
    except (OSError, ValueError) as exc:
        raise StreamRequestError(f"YOLO model {str(model)[:80]!r} cannot be used: {exc}") from None
    if not path.is_relative_to(root):
        raise StreamRequestError(
            f"YOLO model {model!r} is outside the models directory; put the weights under "
            f"{root.name}/ and pass the file name"
        )
    if path.suffix.lower() not in YOLO_SUFFIXES:
        raise StreamRequestError(
            f"YOLO model {model!r} is not a weights file ({', '.join(YOLO_SUFFIXES)})"
        )
    if not is_file:
        raise StreamRequestError(
            f"YOLO weights {path.name} not found in the models directory; run "
            "`make download-models` or pass the name of a file there"
        )
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04":
        raise StreamRequestError(f"YOLO model {path.name} is not a PyTorch checkpoint")


def check_model(backend: str, model: str | None, models_dir: Path) -> None:
    """Model checks both streams and upload jobs run before they accept a request."""
    if backend == "yolo":
        _check_yolo_model(model, models_dir)
    elif backend == "mediapipe" and model is not None:
        from pose_analyzer.detectors.mediapipe_backend import resolve_model_path

        try:
            resolve_model_path(model, models_dir)
        except FileNotFoundError as exc:
            raise StreamRequestError(str(exc)) from None
