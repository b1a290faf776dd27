"""Geometry of one skeleton: size, limbs, mirror image, body-proportion signature.

Everything here works on stacks of poses, (N, J, 3) arrays in the canonical joint
order of `pose_analyzer.keypoints`, so a frame's people (or a tracklet's frames) are
handled in one numpy expression.
"""

from __future__ import annotations

import numpy as np

from pose_analyzer.keypoints import JOINT_INDEX, JOINTS

J = JOINT_INDEX

# Left <-> right: the permutation that mirrors a skeleton's labels (not its pixels).
MIRROR = np.array(
    [
        J[n.replace("left_", "right_")]
        if n.startswith("left_")
        else J[n.replace("right_", "left_")]
        if n.startswith("right_")
        else J[n]
        for n in JOINTS
    ],
    dtype=np.intp,
)

# Limbs whose length is a property of the body: (proximal, distal) joint, left then right.
# A failing limb blames its distal joint (the one that moved least plausibly).
LIMBS: tuple[tuple[str, str], ...] = (
    ("left_shoulder", "left_elbow"),
    ("right_shoulder", "right_elbow"),
    ("left_elbow", "left_wrist"),
    ("right_elbow", "right_wrist"),
    ("left_hip", "left_knee"),
    ("right_hip", "right_knee"),
    ("left_knee", "left_ankle"),
    ("right_knee", "right_ankle"),
    ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"),
)
LIMB_A = np.array([J[a] for a, _ in LIMBS], dtype=np.intp)
LIMB_B = np.array([J[b] for _, b in LIMBS], dtype=np.intp)
LIMB_MIRROR = np.arange(len(LIMBS)).reshape(-1, 2)[:, ::-1].ravel()  # left row <-> right row

# Signature segments: each a left/right pair of LIMBS rows (the longer of the two
# sides is used: foreshortening only ever shortens a segment in the image).
SEGMENTS: tuple[str, ...] = ("upper_arm", "forearm", "thigh", "shank", "torso")
_SEG_ROWS = np.array([(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)], dtype=np.intp)
TORSO = SEGMENTS.index("torso")
# The signature is log(segment / torso) for the four limb segments.
SIGNATURE_SIZE = len(SEGMENTS) - 1

# Body height in torso lengths (shoulder to hip is ~0.30 of stature in adult anthropometry).
_HEIGHT_PER_TORSO = 3.3


def confident(poses: np.ndarray, min_confidence: float) -> np.ndarray:
    """(..., J) bool: joint present and at least `min_confidence`."""
    return (
        (poses[..., 2] >= min_confidence)
        & (poses[..., 2] > 0)
        & np.isfinite(poses[..., :2]).all(axis=-1)
    )


def norm2(v: np.ndarray) -> np.ndarray:
    """Euclidean length along the last axis: np.linalg.norm(v, axis=-1), the same
    arithmetic (sqrt of the sum of squares) without its several microseconds of
    argument handling, which dominate on these small arrays."""
    return np.sqrt(np.add.reduce(v * v, axis=-1))


def limb_lengths(
    poses: np.ndarray, min_confidence: float, ok: np.ndarray | None = None
) -> np.ndarray:
    """(N, len(LIMBS)) pixel length of each limb, NaN where an end is not confident
    (`ok`: confident() of the same poses, if the caller has it)."""
    if ok is None:
        ok = confident(poses, min_confidence)
    d = norm2(poses[:, LIMB_A, :2] - poses[:, LIMB_B, :2])
    return np.where(ok[:, LIMB_A] & ok[:, LIMB_B], d, np.nan)


def segment_lengths(
    poses: np.ndarray,
    min_confidence: float,
    limbs: np.ndarray | None = None,
    ok: np.ndarray | None = None,
) -> np.ndarray:
    """(N, len(SEGMENTS)): the longer side of each segment, NaN where neither side is seen."""
    if limbs is None:
        limbs = limb_lengths(poses, min_confidence, ok)
    pair = limbs[:, _SEG_ROWS]  # (N, S, 2)
    finite = np.isfinite(pair)
    seen = finite.any(axis=-1)
    # max, not nanmax: no NaN is left to skip, and nanmax costs several times more here.
    return np.where(seen, np.where(finite, pair, -1.0).max(axis=-1), np.nan)


def body_scale(
    poses: np.ndarray,
    min_confidence: float,
    limbs: np.ndarray | None = None,
    ok: np.ndarray | None = None,
    seg: np.ndarray | None = None,
) -> np.ndarray:
    """(N,) body height in pixels, at least 8.

    From the torso when it is seen (it does not grow when the arms go up, as a box does),
    else from the extent of the confident joints. `limbs`, `ok`, `seg`: limb_lengths,
    confident and segment_lengths of the same poses, if the caller has them.
    """
    if ok is None:
        ok = confident(poses, min_confidence)
    m = ok[..., None]
    # Extent of the confident joints (max/min over masked values, not nanmax/nanmin,
    # which cost several times more on these small arrays); NaN where none is confident.
    hi = np.where(m, poses[..., :2], -np.inf).max(axis=1)
    lo = np.where(m, poses[..., :2], np.inf).min(axis=1)
    box = np.where(ok.any(axis=1), (hi - lo).max(axis=1), np.nan)
    if seg is None:
        seg = segment_lengths(poses, min_confidence, limbs, ok)
    torso = seg[:, TORSO] * _HEIGHT_PER_TORSO
    # (np.where on isnan, not np.nan_to_num: the same values at a fraction of the cost
    # on these small arrays, and this runs per detection per frame.)
    scale = np.where(
        np.isfinite(torso), np.fmax(torso, np.where(np.isnan(box), 0.0, box) * 0.8), box
    )
    return np.maximum(np.where(np.isnan(scale), 8.0, scale), 8.0)


_TORSO_JOINTS = np.zeros(len(JOINTS), dtype=bool)
_TORSO_JOINTS[[J["left_shoulder"], J["right_shoulder"], J["left_hip"], J["right_hip"]]] = True


def centre(poses: np.ndarray, min_confidence: float, ok: np.ndarray | None = None) -> np.ndarray:
    """(N, 2) mean of the confident torso joints (all confident joints if none), NaN if none."""
    if ok is None:
        ok = confident(poses, min_confidence)
    in_torso = ok & _TORSO_JOINTS
    use = np.where(in_torso.any(axis=1, keepdims=True), in_torso, ok)
    xy = np.where(use[..., None], poses[..., :2], 0.0).sum(axis=1)
    n = use.sum(axis=1, keepdims=True)
    return np.where(n > 0, xy / np.maximum(n, 1), np.nan)


def frame_signatures(
    poses: np.ndarray,
    min_confidence: float,
    limbs: np.ndarray | None = None,
    seg: np.ndarray | None = None,
) -> np.ndarray:
    """(N, SIGNATURE_SIZE) per-frame log(segment / torso), NaN where not measurable
    (`limbs`, `seg`: limb_lengths, segment_lengths of the same poses, if the caller has them)."""
    if seg is None:
        seg = segment_lengths(poses, min_confidence, limbs)
    with np.errstate(all="ignore"):
        return np.log(seg[:, :TORSO] / seg[:, TORSO : TORSO + 1])


def tracklet_signature(per_frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Robust signature of a run of frames: (value, frames it rests on) per component.

    The 75th percentile, not the median: foreshortening only shortens a limb, so the
    upper part of the distribution is nearer the limb's true length (the torso, which
    is the reference, is rarely foreshortened in the clips measured; docs/identity.md).
    """
    finite = np.isfinite(per_frame)
    n = finite.sum(axis=0)
    value = nanquantile(per_frame, 0.75, axis=0)
    return value, n


# Spreads measured on the real clips (bench/bench_identity.py, docs/identity.md):
# SIGNATURE_WITHIN is the per-frame standard deviation of each log ratio within one
# tracklet (pose, foreshortening, detector noise; median over the 19 tracklets of >= 30
# frames); SIGNATURE_BETWEEN the spread of a whole tracklet's signature about the
# person's (rms difference of the two halves of a tracklet over sqrt(2)). A component
# measured on n frames then has variance BETWEEN^2 + WITHIN^2 / n.
SIGNATURE_WITHIN = np.array([0.105, 0.141, 0.076, 0.131])
SIGNATURE_BETWEEN = np.array([0.072, 0.078, 0.063, 0.071])


def signature_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """RMS difference of two signatures in units of their expected spread; NaN if nothing
    is comparable. ~1 for one person seen twice, well above for two different people."""
    (va, na), (vb, nb) = a, b
    both = np.isfinite(va) & np.isfinite(vb) & (na > 0) & (nb > 0)
    if not both.any():
        return float("nan")
    var = 2 * SIGNATURE_BETWEEN**2 + SIGNATURE_WITHIN**2 * (
        1 / np.maximum(na, 1) + 1 / np.maximum(nb, 1)
    )
    z2 = (va - vb) ** 2 / var
    return float(np.sqrt(z2[both].mean()))


def nanquantile(a: np.ndarray, q: float, axis: int = -1) -> np.ndarray:
    """np.nanquantile (linear interpolation) by one sort: NaN where a slice has no value.
    numpy's own goes through a per-slice fallback that costs ~1 ms a call here."""
    x = np.asarray(a, dtype=np.float64)
    if axis not in (-1, x.ndim - 1):
        x = np.moveaxis(x, axis, -1)
    shape, k = x.shape[:-1], x.shape[-1]
    if k == 0:
        return np.full(shape, np.nan)
    s = np.sort(x, axis=-1).reshape(-1, k)  # NaN sorts last
    n = np.isfinite(s).sum(axis=-1)
    pos = q * np.maximum(n - 1, 0)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    rows = np.arange(s.shape[0])
    v_lo, v_hi = s[rows, lo], s[rows, hi]  # plain indexing: take_along_axis costs more here
    return np.where(n > 0, v_lo + (pos - lo) * (v_hi - v_lo), np.nan).reshape(shape)


def nanmedian(a: np.ndarray, axis: int = -1) -> np.ndarray:
    return nanquantile(a, 0.5, axis)


def mirrored(poses: np.ndarray) -> np.ndarray:
    """The same skeletons with left and right labels exchanged."""
    return poses[..., MIRROR, :]
