"""Anomalous reps: each rep against the same athlete's own running baseline.

The baseline of a feature is the median of that athlete's previous reps
(a bounded window) and its spread the MAD scaled to a standard deviation
(1.4826 MAD), floored so that near-identical reps do not make every small
wobble look anomalous. A rep whose robust z-score exceeds the threshold on
any feature is flagged, with a reason naming the feature, its value, the
baseline and the direction (e.g. a shrinking range of motion as fatigue sets in).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Anomaly:
    rep_index: int
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"rep_index": self.rep_index, "reason": self.reason}


def _floor(feature: str, median: float) -> float:
    if feature.endswith("_deg_s"):
        absolute = 15.0
    elif feature.endswith("_deg"):
        absolute = 4.0
    elif feature.endswith("_s"):
        absolute = 0.15
    else:
        absolute = 5.0  # scores and anything unitless
    return max(absolute, 0.05 * abs(median))


_DESCRIBE = {
    "rom_deg": ("smaller range of motion", "larger range of motion"),
    "duration_s": ("faster rep", "slower rep"),
    "tempo_down_s": ("faster descent", "slower descent"),
    "tempo_up_s": ("faster ascent", "slower ascent"),
    "peak_velocity_deg_s": ("lower peak speed", "higher peak speed"),
    "score": ("worse form score", "better form score"),
}


class AnomalyDetector:
    """Per-athlete robust baseline; `check` is causal, so live and offline agree."""

    def __init__(
        self,
        features: tuple[str, ...] = (
            "rom_deg",
            "duration_s",
            "tempo_down_s",
            "tempo_up_s",
            "peak_velocity_deg_s",
        ),
        min_baseline: int = 4,
        window: int = 12,
        z_threshold: float = 3.5,
    ) -> None:
        self.features = features
        self.min_baseline = min_baseline
        self.z_threshold = z_threshold
        self._history: dict[str, deque[float]] = {f: deque(maxlen=window) for f in features}

    def check(self, rep_index: int, metrics: dict[str, float]) -> Anomaly | None:
        """Compare a rep with the baseline, then add it to the baseline."""
        reasons = []
        for feature in self.features:
            value = metrics.get(feature)
            if value is None or not np.isfinite(value):
                continue
            history = self._history[feature]
            if len(history) >= self.min_baseline:
                base = np.array(history)
                median = float(np.median(base))
                spread = max(MAD_TO_SIGMA * float(np.median(np.abs(base - median))), 0.0)
                spread = max(spread, _floor(feature, median))
                z = (value - median) / spread
                if abs(z) > self.z_threshold:
                    low, high = _DESCRIBE.get(feature, ("lower", "higher"))
                    reasons.append(
                        f"{low if z < 0 else high}: {feature} {value:.2f} vs baseline "
                        f"{median:.2f} (robust z {z:+.1f})"
                    )
            history.append(float(value))
        if not reasons:
            return None
        return Anomaly(rep_index=rep_index, reason="; ".join(reasons))
