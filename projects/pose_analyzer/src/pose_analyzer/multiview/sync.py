"""Which frame of each view belongs to which instant.

Files: by frame index or by timestamp, with a stated offset per camera (the
view's clock minus the rig's clock, in seconds). Live: by capture timestamp
within a tolerance of half a frame; a view whose newest frame is further
from the instant than that (it lags, or it dropped) is left out of that
instant. Nothing ever waits for a view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pose_analyzer.keypoints import FramePoses


class SyncError(ValueError):
    """Views that cannot be put on one timeline (different lengths or frame rates)."""


def half_frame(fps: float) -> float:
    return 0.5 / fps


def align_recordings(
    views: Sequence[Sequence[FramePoses]],
    names: Sequence[str],
    fps: Sequence[float],
    *,
    offsets_s: Sequence[float] | None = None,
    trim: bool = False,
) -> list[tuple[float, dict[str, FramePoses]]]:
    """Instants (t, {view: frame}) on the first view's timeline.

    Views must have the same frame rate and cover the same span (one frame of
    slack); `trim`, or any non-zero offset, keeps only the span they share instead.
    """
    if len(views) != len(names):
        raise SyncError("one name per view is needed")
    rates = [round(float(f), 3) for f in fps]
    if len(set(rates)) > 1:
        detail = ", ".join(f"{n} {r:g} fps" for n, r in zip(names, rates, strict=True))
        raise SyncError(f"the videos have different frame rates ({detail}); resample them")
    rate = rates[0] if rates else 30.0
    offsets = list(offsets_s or [0.0] * len(views))
    if len(offsets) != len(views):
        raise SyncError(f"{len(offsets)} offsets for {len(views)} views")
    times = [
        np.array([f.t for f in v], dtype=np.float64) - o
        for v, o in zip(views, offsets, strict=True)
    ]
    for name, t in zip(names, times, strict=True):
        if t.size == 0:
            raise SyncError(f"view {name} has no frames")
    tol = half_frame(rate)
    start = max(float(t[0]) for t in times)
    end = min(float(t[-1]) for t in times)
    if end < start:
        raise SyncError("the views do not overlap in time at all; check the offsets")
    # With stated offsets the views are known to start and stop apart: the shared span.
    if not trim and not any(offsets):
        counts = [int(t.size) for t in times]
        spans = [(float(t[0]), float(t[-1])) for t in times]
        if max(counts) - min(counts) > 1 or any(
            abs(a - spans[0][0]) > 1.5 / rate or abs(b - spans[0][1]) > 1.5 / rate for a, b in spans
        ):
            detail = ", ".join(f"{n}: {c} frames" for n, c in zip(names, counts, strict=True))
            raise SyncError(
                f"the videos have different lengths ({detail}); pass per-camera offsets "
                "(--offsets) or --trim to keep only the span they share"
            )
    master = times[0]
    keep = (master >= start - tol) & (master <= end + tol)
    instants: list[tuple[float, dict[str, FramePoses]]] = []
    idx = []
    for t in times:
        i = np.clip(np.searchsorted(t, master), 1, max(t.size - 1, 1))
        left = np.clip(i - 1, 0, t.size - 1)
        right = np.clip(i, 0, t.size - 1)
        pick = np.where(np.abs(t[left] - master) <= np.abs(t[right] - master), left, right)
        ok = np.abs(t[pick] - master) <= tol + 1e-9
        idx.append((pick, ok))
    for k in np.flatnonzero(keep):
        frames = {name: views[v][int(idx[v][0][k])] for v, name in enumerate(names) if idx[v][1][k]}
        instants.append((float(master[k]), frames))
    return instants


@dataclass
class LiveSync:
    """Newest frame per view; an instant takes the views within half a frame of it."""

    fps: float
    offsets_s: Mapping[str, float] = field(default_factory=dict)
    _latest: dict[str, FramePoses] = field(default_factory=dict)

    @property
    def tolerance_s(self) -> float:
        return half_frame(self.fps)

    def push(self, view: str, frame: FramePoses) -> None:
        self._latest[view] = frame

    def capture_time(self, view: str, frame: FramePoses) -> float:
        return frame.t - float(self.offsets_s.get(view, 0.0))

    def take(self, t: float) -> dict[str, FramePoses]:
        """Views whose newest frame was captured within the tolerance of `t` (consumed)."""
        out = {}
        for view, frame in list(self._latest.items()):
            if abs(self.capture_time(view, frame) - t) <= self.tolerance_s + 1e-9:
                out[view] = frame
                del self._latest[view]
        return out
