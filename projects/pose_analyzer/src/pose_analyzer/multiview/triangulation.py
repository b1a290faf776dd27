"""Confidence-weighted DLT over the views that see each joint, vectorised over points.

Points are undistorted (cv2.undistortPoints to normalised coordinates), never
images. Each view contributes two rows `w * (x P3 - P1)`, `w * (y P3 - P2)` to
a point's 2V x 4 system, with `w` the detector confidence (0 for a view that
does not see the joint); the solution is the eigenvector of A^T A with the
smallest eigenvalue, for all points at once (`np.linalg.eigh` on a stack of
4 x 4). A view whose reprojection error (pixels, through the full distortion
model) exceeds the threshold is dropped, the worst first, while at least two
remain, and the point is solved again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pose_analyzer.multiview.association import cross, dot
from pose_analyzer.multiview.calibration import CameraRig

DEFAULT_MAX_ERROR_PX = 15.0
DEFAULT_MIN_CONFIDENCE = 0.3


@dataclass
class Triangulated:
    """3D points and how well the views agree on each."""

    points: np.ndarray  # (..., 3) metres, NaN where fewer than two views agreed
    error_px: np.ndarray  # (...,) mean reprojection error over the views used
    views_used: np.ndarray  # (...,) number of views used
    used: np.ndarray  # (V, ...) bool: which view contributed to each point
    view_error_px: np.ndarray  # (V, ...) reprojection error in each view (NaN if unseen)


def dlt(extrinsics: np.ndarray, normalized: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Points (N, 3) from (V, 3, 4) [R|t], normalised coordinates (V, N, 2), weights (V, N).

    Each view gives two rows `w (x P3 - P1)`, `w (y P3 - P2)` of A (X, 1) = 0; with the
    homogeneous coordinate fixed to 1 this is the 3 x 3 system (A3^T A3) X = -A3^T a4,
    solved in closed form (adjugate) for all points at once: no per-point LAPACK call.
    """
    P = extrinsics[:, None]  # (V, 1, 3, 4)
    finite = np.isfinite(normalized).all(axis=-1)
    w = np.where(finite, weights, 0.0)[..., None]
    x = np.where(finite, normalized[..., 0], 0.0)[..., None]
    y = np.where(finite, normalized[..., 1], 0.0)[..., None]
    r1 = w * (x * P[..., 2, :] - P[..., 0, :])  # (V, N, 4)
    r2 = w * (y * P[..., 2, :] - P[..., 1, :])
    A = np.concatenate([r1, r2], axis=0)  # (2V, N, 4)
    A3, a4 = A[..., :3], A[..., 3]
    At = A3.transpose(1, 2, 0)  # (N, 3, 2V)
    M = At @ At.transpose(0, 2, 1)  # (N, 3, 3) symmetric
    b = -(At @ a4.T[:, :, None])[..., 0]
    c0 = cross(M[:, 1], M[:, 2])
    c1 = cross(M[:, 2], M[:, 0])
    c2 = cross(M[:, 0], M[:, 1])
    det = dot(M[:, 0], c0)
    with np.errstate(invalid="ignore", divide="ignore"):
        inv_b = (c0 * b[:, :1] + c1 * b[:, 1:2] + c2 * b[:, 2:3]) / det[:, None]
    return np.asarray(np.where(np.abs(det)[:, None] > 1e-12, inv_b, np.nan))


def triangulate(
    rig: CameraRig,
    pixels: np.ndarray,
    confidence: np.ndarray,
    *,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    max_error_px: float = DEFAULT_MAX_ERROR_PX,
    min_views: int = 2,
    normalized: np.ndarray | None = None,
) -> Triangulated:
    """Triangulate pixels (V, ..., 2) with confidences (V, ...) from the rig's V cameras.

    `normalized` (the undistorted points) may be passed when the caller already has
    them (association undistorts too). Views below `min_confidence` are unseen.
    """
    V = len(rig)
    px = np.asarray(pixels, dtype=np.float64)
    lead = px.shape[1:-1]
    px = px.reshape(V, -1, 2)
    conf = np.asarray(confidence, dtype=np.float64).reshape(V, -1)
    if normalized is None:
        norm = np.stack([cam.undistort(px[v]) for v, cam in enumerate(rig.cameras)])
    else:
        norm = np.asarray(normalized, dtype=np.float64).reshape(V, -1, 2)
    seen = (conf >= min_confidence) & np.isfinite(px).all(axis=-1)
    used = seen.copy()
    ext = rig.extrinsics()
    n = px.shape[1]
    points = np.full((n, 3), np.nan)
    err = np.full((V, n), np.nan)
    todo = np.flatnonzero(used.sum(axis=0) >= min_views)
    for _ in range(max(V - min_views + 1, 1)):
        if todo.size == 0:
            break
        w = np.where(used[:, todo], conf[:, todo], 0.0)
        X = dlt(ext, norm[:, todo], w)
        points[todo] = X
        proj = rig.project_each(np.broadcast_to(X, (V, *X.shape)))
        diff = proj - px[:, todo]
        e = np.sqrt(dot(diff, diff))
        err[:, todo] = np.where(seen[:, todo], e, np.nan)
        bad_err = np.where(used[:, todo], np.nan_to_num(err[:, todo], nan=np.inf), -np.inf)
        worst = np.argmax(bad_err, axis=0)
        worst_err = bad_err[worst, np.arange(todo.size)]
        count = used[:, todo].sum(axis=0)
        redo = (worst_err > max_error_px) & (count > min_views)
        if not redo.any():
            break
        used[worst[redo], todo[redo]] = False
        todo = todo[redo]
    count = used.sum(axis=0)
    # A point behind a camera that supposedly saw it (no finite reprojection) is no point.
    in_front = ~(used & ~np.isfinite(err)).any(axis=0)
    ok = (count >= min_views) & np.isfinite(points).all(axis=1) & in_front
    points[~ok] = np.nan
    final = used & ok[None]
    used_err = np.where(final, err, np.nan)
    total = np.where(final, err, 0.0).sum(axis=0)
    mean_err = np.where(ok, total / np.maximum(count, 1), np.nan)
    return Triangulated(
        points=points.reshape(*lead, 3),
        error_px=mean_err.reshape(lead),
        views_used=np.where(ok, count, 0).reshape(lead),
        used=final.reshape(V, *lead),
        view_error_px=used_err.reshape(V, *lead),
    )
