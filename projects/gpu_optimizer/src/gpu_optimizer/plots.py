"""PNG plots of a tracked step: memory over the step by category, and the per-module breakdown."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpu_optimizer.tracker import CATEGORIES, MemoryReport

_COLORS = {
    "parameters": "#4c72b0",
    "gradients": "#dd8452",
    "optimizer_state": "#55a868",
    "activations": "#c44e52",
    "temporary": "#8172b3",
}


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # files only: works on machines without a display
    import matplotlib.pyplot as plt

    return plt


def plot_timeline(report: MemoryReport, path: str | Path, title: str = "") -> Path:
    """Stacked live bytes per category over the step's allocation events, phases shaded."""
    plt = _pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    x = np.arange(len(report.timeline))
    stacks = [report.category_timeline[c] / 2**20 for c in CATEGORIES]
    ax.stackplot(x, *stacks, labels=list(CATEGORIES), colors=[_COLORS[c] for c in CATEGORIES])
    phases = report.timeline_phases
    start = 0
    for i in range(1, len(phases) + 1):
        if i == len(phases) or phases[i] != phases[start]:
            if phases and start < len(phases):
                ax.axvline(start, color="grey", lw=0.6, ls="--")
                ax.text(start, ax.get_ylim()[1] * 0.97, phases[start], fontsize=8, va="top")
            start = i
    if report.peak_event >= 0:
        ax.axvline(report.peak_event, color="black", lw=1.0)
        ax.annotate(
            f"peak {report.peak_bytes / 2**20:.1f} MiB ({report.peak_phase})",
            (report.peak_event, report.peak_bytes / 2**20),
            fontsize=8,
            ha="right",
        )
    ax.set_xlabel("allocation event")
    ax.set_ylabel("live memory (MiB)")
    ax.set_title(title or "memory over one step")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_modules(report: MemoryReport, path: str | Path, top: int = 25, title: str = "") -> Path:
    """Horizontal stacked bars: the ``top`` modules by bytes live at the peak."""
    plt = _pyplot()
    path = Path(path)
    items = sorted(report.per_module.items(), key=lambda kv: sum(kv[1].values()), reverse=True)[
        :top
    ]
    names = [name for name, _ in items][::-1]
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.28 * len(names) + 1)))
    left = np.zeros(len(names))
    for cat in CATEGORIES:
        values = np.array([report.per_module[n][cat] / 2**20 for n in names])
        ax.barh(names, values, left=left, label=cat, color=_COLORS[cat])
        left += values
    ax.set_xlabel("MiB live at the peak")
    ax.set_title(title or f"per-module memory at the peak (top {len(names)})")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


TENSORBOARD_POINTS = 2000


def _bucket_max(curve: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``points`` (event index, max of the bucket) pairs: the peak always survives."""
    if len(curve) <= points:
        return np.arange(len(curve)), curve
    edges = np.linspace(0, len(curve), points + 1).astype(np.int64)
    steps = edges[:-1]
    return steps, np.maximum.reduceat(curve, steps)


def write_tensorboard(report: MemoryReport, directory: Path, tag: str = "memory") -> Path:
    """The step's memory timeline and per-phase peaks as TensorBoard scalars.

    Scalars ``{tag}/live_bytes`` and ``{tag}/{category}_bytes`` over the
    allocation events (bucketed to at most 2000 points by their maximum),
    ``{tag}/phase_peak/{phase}``, ``{tag}/peak_bytes`` and
    ``{tag}/activation_peak_bytes``: open with ``tensorboard --logdir DIR``.
    """
    from torch.utils.tensorboard import SummaryWriter

    directory.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(directory))
    try:
        curves = {"live_bytes": report.timeline}
        curves.update({f"{c}_bytes": report.category_timeline[c] for c in CATEGORIES})
        for name, curve in curves.items():
            steps, values = _bucket_max(np.asarray(curve), TENSORBOARD_POINTS)
            for step, value in zip(steps.tolist(), values.tolist(), strict=True):
                writer.add_scalar(f"{tag}/{name}", float(value), int(step))
        for phase, peak in report.phase_peaks.items():
            writer.add_scalar(f"{tag}/phase_peak/{phase}", float(peak), 0)
        writer.add_scalar(f"{tag}/peak_bytes", float(report.peak_bytes), 0)
        writer.add_scalar(f"{tag}/activation_peak_bytes", float(report.activation_peak_bytes), 0)
    finally:
        writer.close()
    return directory
