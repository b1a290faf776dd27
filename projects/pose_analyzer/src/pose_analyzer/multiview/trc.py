"""TRC marker files (OpenSim, Pose2Sim): 3D joints in metres, Y up.

The rig's world is Z up (Qualisys, Pose2Sim calibrations); OpenSim wants Y
up, so like Pose2Sim the columns are written as (X, Y, Z)_trc = (Y, Z, X)_world.
Missing markers are empty cells, which OpenSim and Pose2Sim read as gaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_trc(
    path: str | Path,
    t: np.ndarray,
    points: np.ndarray,
    names: Sequence[str],
    fps: float,
    frame_numbers: Sequence[int] | None = None,
) -> Path:
    """Write points (F, M, 3) in world metres (Z up) at times t (F,)."""
    out = Path(path)
    F, M = points.shape[:2]
    frames = list(frame_numbers) if frame_numbers is not None else list(range(1, F + 1))
    yup = points[..., [1, 2, 0]]
    lines = [
        f"PathFileType\t4\t(X/Y/Z)\t{out.name}",
        "DataRate\tCameraRate\tNumFrames\tNumMarkers\tUnits\tOrigDataRate\t"
        "OrigDataStartFrame\tOrigNumFrames",
        f"{fps:g}\t{fps:g}\t{F}\t{M}\tm\t{fps:g}\t{frames[0] if frames else 1}\t{F}",
        "Frame#\tTime\t" + "\t\t\t".join(names) + "\t\t",
        "\t\t" + "\t".join(f"X{i + 1}\tY{i + 1}\tZ{i + 1}" for i in range(M)),
        "",
    ]
    for k in range(F):
        cells = ["" if not np.isfinite(v) else f"{v:.6f}" for v in yup[k].ravel()]
        lines.append("\t".join([str(frames[k]), f"{float(t[k]):.6f}", *cells]))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def read_trc(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, float]:
    """(marker names, times (F,), points (F, M, 3) back in the Z-up world, data rate)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    rate = float(lines[2].split("\t")[0])
    names = [n for n in lines[3].split("\t")[2:] if n]
    rows = [ln.split("\t") for ln in lines[5:] if ln.strip()]
    t = np.array([float(r[1]) for r in rows])
    M = len(names)
    vals = np.full((len(rows), M * 3), np.nan)
    for k, r in enumerate(rows):
        for i, cell in enumerate(r[2 : 2 + 3 * M]):
            if cell:
                vals[k, i] = float(cell)
    yup = vals.reshape(len(rows), M, 3)
    return names, t, yup[..., [2, 0, 1]], rate
