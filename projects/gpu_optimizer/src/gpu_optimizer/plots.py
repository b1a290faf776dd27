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
