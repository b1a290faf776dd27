"""Constant-velocity Kalman filter on every joint of one person, vectorised over joints.

Each joint's x and y are independent position/velocity pairs driven by white
acceleration noise, so one 2x2 covariance per joint serves both axes. The state is
kept at the time of the last observation; a prediction `dt` later moves by the
velocity for at most `max_prediction_s` (people stop more often than they fly off
in a straight line) while its variance keeps growing with the cube of the time
lost, which is what widens the association gate for someone coming back.
"""

from __future__ import annotations

import numpy as np

from pose_analyzer.identity.skeleton import norm2


class JointKalman:
    def __init__(
        self,
        xy: np.ndarray,
        ok: np.ndarray,
        scale: float,
        accel_noise: float,
        measurement_noise: float,
        max_prediction_s: float,
    ) -> None:
        n = xy.shape[0]
        self.p = np.where(ok[:, None], xy, np.nan).astype(np.float64)  # (J, 2) position
        self.v = np.zeros((n, 2))  # (J, 2) px/s
        self.ppp = np.full(n, (measurement_noise * scale) ** 2)  # position variance
        self.ppv = np.zeros(n)
        self.pvv = np.full(n, (1.0 * scale) ** 2)  # a new joint: ~1 body height/s either way
        self.accel_noise = accel_noise
        self.measurement_noise = measurement_noise
        self.max_prediction_s = max_prediction_s
        self.unseen = np.where(ok, 0.0, np.inf)  # (J,) seconds since each joint was observed
        self.max_speed = 6.0  # body heights per second; no joint of a person moves faster
        # The last prediction, (dt, scale, p, ppp): association predicts every track, and
        # the update that follows in the same frame predicts the same again.
        self._last_prediction: tuple[float, float, np.ndarray, np.ndarray] | None = None

    def forget_prediction(self) -> None:
        """Call after changing the state from outside (mirroring it)."""
        self._last_prediction = None

    def predict(self, dt: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Position (J, 2) and its variance (J,) `dt` seconds after the last observation
        (arrays the caller must not modify)."""
        dt = max(dt, 0.0)
        last = self._last_prediction
        if last is not None and last[0] == dt and last[1] == scale:
            return last[2], last[3]
        q = (self.accel_noise * scale) ** 2
        p = self.p + self.v * min(dt, self.max_prediction_s)
        ppp = self.ppp + 2 * dt * self.ppv + dt * dt * self.pvv + q * dt**3 / 3
        # A joint not seen for a while says nothing about where the person is now.
        stale = self.unseen + dt > self.max_prediction_s
        p = np.where(stale[:, None], np.nan, p)
        self._last_prediction = (dt, scale, p, ppp)
        return p, ppp

    def update(
        self, dt: float, xy: np.ndarray, ok: np.ndarray, conf: np.ndarray, scale: float
    ) -> None:
        """Predict `dt` forward and fold in the observed joints (`ok`); a joint seen for
        the first time (or again after a long absence) starts where it is seen."""
        dt = max(dt, 0.0)
        q = (self.accel_noise * scale) ** 2
        p, ppp = self.predict(dt, scale)
        self._last_prediction = None  # the state changes below
        ppv = self.ppv + dt * self.pvv + q * dt * dt / 2
        pvv = self.pvv + q * dt
        if dt > self.max_prediction_s:
            # The position stopped following the velocity: do not trust it any more.
            self.v[:] = 0.0
            pvv = np.full_like(pvv, (1.0 * scale) ** 2)
            ppv = np.zeros_like(ppv)
        # (minimum/maximum: np.clip's value, at half its call overhead on 33 joints)
        r = (self.measurement_noise * scale) ** 2 / np.minimum(np.maximum(conf, 0.1), 1.0)
        s = ppp + r
        kp, kv = ppp / s, ppv / s
        innov = xy - p
        innov = np.where(np.isnan(innov), 0.0, innov)
        self.unseen = self.unseen + dt
        # A joint unseen for longer than a prediction is trusted starts afresh where it is.
        fresh = ok & (~np.isfinite(p).all(axis=1) | (self.unseen > self.max_prediction_s))
        upd = ok & ~fresh
        any_fresh = fresh.any()
        self.p = np.where(upd[:, None], p + kp[:, None] * innov, p)
        self.v = np.where(upd[:, None], self.v + kv[:, None] * innov, self.v)
        if any_fresh:
            self.p[fresh] = xy[fresh]
            self.v[fresh] = 0.0
        speed = norm2(self.v)[:, None]  # |v| per joint
        limit = self.max_speed * scale
        too_fast = speed > limit
        if too_fast.any():
            self.v = np.where(too_fast, self.v * limit / np.maximum(speed, 1e-9), self.v)
        self.unseen[ok] = 0.0
        if any_fresh:  # a fresh joint restarts its variances
            ppp_keep = np.where(fresh, r, ppp)
            ppv_keep = np.where(fresh, 0.0, ppv)
            pvv_keep = np.where(fresh, (1.0 * scale) ** 2, pvv)
        else:
            ppp_keep, ppv_keep, pvv_keep = ppp, ppv, pvv
        self.ppp = np.where(upd, (1 - kp) * ppp, ppp_keep)
        self.ppv = np.where(upd, (1 - kp) * ppv, ppv_keep)
        self.pvv = np.where(upd, pvv - kv * ppv, pvv_keep)
