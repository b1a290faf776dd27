"""Smoothing of angle series: causal One-Euro for live streams, zero-phase
Butterworth plus short-gap interpolation for files analysed offline.

Series have time on axis 0 and any number of trailing columns. NaN marks a
missing measurement; offline, gaps up to `max_gap` samples are bridged
linearly, longer ones stay NaN. Live, nothing is ever filled in.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt


def interpolate_gaps(series: npt.ArrayLike, max_gap: int) -> np.ndarray:
    """Linearly fill interior NaN runs of at most `max_gap` samples (offline only)."""
    x = np.array(series, dtype=np.float64)
    if max_gap <= 0 or x.shape[0] < 3:
        return x
    flat = x.reshape(x.shape[0], -1)
    idx = np.arange(flat.shape[0])
    for col in range(flat.shape[1]):
        y = flat[:, col]
        bad = ~np.isfinite(y)
        if not bad.any() or bad.all():
            continue
        good = ~bad
        filled = np.interp(idx, idx[good], y[good])
        # Length of the NaN run each sample belongs to; leading/trailing runs stay NaN.
        edges = np.diff(np.concatenate(([0], bad.view(np.int8), [0])))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        for s, e in zip(starts, ends, strict=False):
            if s > 0 and e < len(y) and e - s <= max_gap:
                y[s:e] = filled[s:e]
    return flat.reshape(x.shape)


def _runs(finite: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate(([0], finite.view(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=False))


def butterworth_filtfilt(
    series: npt.ArrayLike, fps: float, cutoff_hz: float = 6.0, order: int = 4
) -> np.ndarray:
    """Zero-phase low-pass over each finite run; NaN stays NaN.

    Runs too short for filtfilt's padding are left unfiltered, and so is
    everything when the cutoff is not below Nyquist.
    """
    from scipy.signal import butter, filtfilt  # lazy: ~0.5 s of start-up otherwise

    x = np.array(series, dtype=np.float64)
    nyquist = fps / 2.0
    if x.shape[0] < 2 or not (0 < cutoff_hz < nyquist):
        return x
    b, a = butter(order, cutoff_hz / nyquist)
    pad = 3 * max(len(a), len(b))
    flat = x.reshape(x.shape[0], -1)
    for col in range(flat.shape[1]):
        y = flat[:, col]
        for s, e in _runs(np.isfinite(y)):
            if e - s > pad:
                y[s:e] = filtfilt(b, a, y[s:e])
    return flat.reshape(x.shape)


def derivative(series: npt.ArrayLike, t: npt.ArrayLike) -> np.ndarray:
    """d(series)/dt along axis 0 with central differences; NaN where a neighbour is NaN."""
    x = np.asarray(series, dtype=np.float64)
    tt = np.asarray(t, dtype=np.float64)
    if x.shape[0] < 2:
        return np.full_like(x, np.nan)
    return np.gradient(x, tt, axis=0)


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Causal One-Euro filter (Casiez et al., CHI 2012) over a vector of signals.

    Low jitter when still (cutoff `min_cutoff`), low lag when moving (cutoff
    grows by `beta` per unit/s of speed). NaN inputs give NaN outputs and
    leave the state as it was; a gap longer than `reset_after_s` restarts it.
    """

    def __init__(
        self,
        min_cutoff: float = 1.5,
        beta: float = 0.01,
        d_cutoff: float = 1.0,
        reset_after_s: float = 0.5,
    ) -> None:
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.reset_after_s = reset_after_s
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._v: np.ndarray | None = None
        self._t: np.ndarray | None = None

    def __call__(self, x: npt.ArrayLike, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Filtered value and its rate of change (units/s) for the sample `x` at time `t`."""
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._x.shape != x.shape:
            self._x = np.full(x.shape, np.nan)
            self._dx = np.full(x.shape, np.nan)
            self._v = np.full(x.shape, np.nan)
            self._t = np.full(x.shape, -np.inf)
        assert self._dx is not None and self._v is not None and self._t is not None
        ok = np.isfinite(x)
        dt = t - self._t
        fresh = ok & (~np.isfinite(self._x) | (dt > self.reset_after_s) | (dt <= 0))
        step = ok & ~fresh
        x_out = np.full(x.shape, np.nan)
        dx_out = np.full(x.shape, np.nan)
        if fresh.any():
            self._x[fresh] = x[fresh]
            self._dx[fresh] = np.nan
            self._v[fresh] = np.nan
            self._t[fresh] = t
            x_out[fresh] = x[fresh]
        if step.any():
            d = dt[step]
            raw_dx = (x[step] - self._x[step]) / d
            prev_dx = self._dx[step]
            a_d = _alpha(self.d_cutoff, d)
            dx = np.where(np.isfinite(prev_dx), a_d * raw_dx + (1 - a_d) * prev_dx, raw_dx)
            cutoff = self.min_cutoff + self.beta * np.abs(dx)
            a = _alpha(cutoff, d)
            xf = a * x[step] + (1 - a) * self._x[step]
            # The speed reported is that of the filtered signal (smoothed like dx): the
            # dx above, measured against the lagging filtered value, overstates it.
            raw_v = (xf - self._x[step]) / d
            prev_v = self._v[step]
            v = np.where(np.isfinite(prev_v), a_d * raw_v + (1 - a_d) * prev_v, raw_v)
            self._x[step], self._dx[step], self._v[step], self._t[step] = xf, dx, v, t
            x_out[step], dx_out[step] = xf, v
        return x_out, dx_out

    def reset(self) -> None:
        self._x = self._dx = self._v = self._t = None
