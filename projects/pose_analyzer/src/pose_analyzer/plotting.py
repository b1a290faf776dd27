"""angles.png: each person's angle traces over time, reps shaded, faults marked.

Uses the Agg canvas on a bare Figure (no pyplot): no global backend switch,
safe in a server thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pose_analyzer.biomechanics.angles import ANGLE_INDEX
from pose_analyzer.exercises.schema import Exercise
from pose_analyzer.report import Report

MAX_PEOPLE = 6
MAX_TRACES = 5


def traced_angles(exercise: Exercise) -> list[str]:
    """The drive angle columns first, then those the form rules look at."""
    names = list(exercise.drive.columns())
    for rule in exercise.rules:
        names.extend(c for c in rule.columns() if c not in names)
    return names[:MAX_TRACES]


def plot_angles(report: Report, exercise: Exercise, path: str | Path) -> None:
    # The people seen longest come first; a crowd is cut at MAX_PEOPLE panels.
    people = sorted(report.people, key=lambda p: -p.frames_seen)[:MAX_PEOPLE]
    people.sort(key=lambda p: p.id)
    rows = max(1, len(people))
    fig = Figure(figsize=(12, 3.2 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, squeeze=False)
    names = traced_angles(exercise)
    if not people:
        ax = axes[0, 0]
        ax.text(0.5, 0.5, "nobody detected", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    for ax, person in zip(axes[:, 0], people, strict=False):
        for name in names:
            values = person.angles[:, ANGLE_INDEX[name]] if len(person.angles) else np.zeros(0)
            ax.plot(person.t, values, lw=1.2, label=name)
        for rep in person.reps:
            color = "tab:green" if not rep.faults else "tab:red"
            ax.axvspan(rep.start_s, rep.end_s, color=color, alpha=0.12, lw=0)
            ax.text(
                rep.extreme_s,
                1.0,
                str(rep.index),
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
            )
            if rep.faults:
                ax.plot(
                    [rep.extreme_s],
                    [0.93],
                    marker="x",
                    color="tab:red",
                    ms=8,
                    transform=ax.get_xaxis_transform(),
                )
                ax.text(
                    rep.extreme_s,
                    0.86,
                    "\n".join(f.code for f in rep.faults),
                    transform=ax.get_xaxis_transform(),
                    ha="center",
                    va="top",
                    fontsize=7,
                    color="tab:red",
                )
        for level in (exercise.drive.down_deg, exercise.drive.up_deg):
            ax.axhline(level, color="grey", ls=":", lw=0.8)
        ax.set_title(
            f"{report.exercise}: person {person.id}, {person.rep_count} reps "
            f"(green clean, red with faults)",
            fontsize=10,
            pad=14,
        )
        ax.set_ylabel("deg")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
        if len(person.t):
            ax.set_xlim(float(np.min(person.t)), float(np.max(person.t)))
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
