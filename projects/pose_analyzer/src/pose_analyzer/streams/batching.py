"""One detector shared by several streams, fed in batches (YOLO on a GPU).

Each stream's worker thread submits its frame and waits for its result; the
batcher's own thread collects what has arrived (up to `max_batch` frames, or
whatever came within `max_wait_s` of the first) and runs one batched
inference for all of them. On a GPU one batch of four frames costs little
more than one frame, so four streams share one inference's latency.

How long to wait for the other streams adapts to the inference time: at most
half of the last batch's duration (and never more than `max_wait_s`), and no
wait at all once every registered stream has a frame in the batch.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pose_analyzer.keypoints import PersonPose, PoseDetector


@dataclass
class _Request:
    frame: npt.NDArray[np.uint8]
    t: float
    future: Future[list[PersonPose]]


class BatchingDetector:
    def __init__(
        self,
        detector: PoseDetector,
        *,
        max_batch: int,
        max_wait_s: float = 0.015,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.detector = detector
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="batching-detector", daemon=True)
        self._thread.start()
        self.users = 0  # streams currently feeding this detector
        self.batches = 0
        self._last_inference_s = 0.0

    def detect_one(self, frame: npt.NDArray[np.uint8], t: float) -> list[PersonPose]:
        future: Future[list[PersonPose]] = Future()
        self._queue.put(_Request(frame, t, future))
        return future.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(10)
        self.detector.close()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            wait = min(self.max_wait_s, 0.5 * self._last_inference_s)
            deadline = time.monotonic() + wait
            stop = False
            while len(batch) < min(self.max_batch, max(1, self.users)):
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self._queue.get(timeout=max(remaining, 0))
                        if remaining > 0
                        else (self._queue.get_nowait())
                    )
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            started = time.monotonic()
            try:
                results = self.detector.detect([r.frame for r in batch], [r.t for r in batch])
            except Exception as exc:  # every waiting stream gets the error, the thread lives on
                for r in batch:
                    r.future.set_exception(exc)
            else:
                for r, people in zip(batch, results, strict=True):
                    r.future.set_result(people)
            self._last_inference_s = time.monotonic() - started
            self.batches += 1
            if self._on_batch:
                self._on_batch(len(batch))
            if stop:
                return
