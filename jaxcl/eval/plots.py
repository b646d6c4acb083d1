"""PNG figures of a CL run: the accuracy matrix, AA curves, and a comparison of runs' AA and BWT.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend change, no
display needed); matplotlib is imported on first use. Each function writes ``path`` and returns it.
Accuracies may be fractions or percentages: the colour scale is 0-1 when every value ≤ 1, else 0-100.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(os.fspath(path))
    return path


def _top(values) -> float:
    v = np.asarray(values, dtype=float)
    return 1.0 if not np.isfinite(v).any() or np.nanmax(v) <= 1.0 else 100.0


def plot_accuracy_matrix(R, task_names: Sequence[str], path, title: str = "Accuracy matrix") -> Path:
    """Heat map of R[i, j] (row: after training task i; column: task j), values written in the
    cells, unseen (NaN) cells blank."""
    R = np.array(R, dtype=float)
    S, T = R.shape
    if len(task_names) != T:
        raise ValueError(f"{len(task_names)} task names for {T} columns")
    top = _top(R)
    fig = _figure(1.6 + 0.75 * T, 1.4 + 0.6 * S)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(R), cmap="viridis", vmin=0.0, vmax=top, aspect="auto")
    for i in range(S):
        for j in range(T):
            if np.isfinite(R[i, j]):
                text = f"{R[i, j]:.2f}" if top == 1.0 else f"{R[i, j]:.1f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="black" if R[i, j] > 0.6 * top else "white")
    ax.set_xticks(range(T), task_names, rotation=45, ha="right")
    ax.set_yticks(range(S), [f"after {i + 1}. {task_names[i]}" for i in range(S)])
    ax.set_xlabel("evaluated task")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8, label="accuracy")
    return _save(fig, path)


def plot_average_accuracy(curves: Mapping[str, Sequence[float]], path,
                          title: str = "Average accuracy over seen tasks") -> Path:
    """One line per run: AA after each training step (``metrics.average_accuracy_per_step``)."""
    fig = _figure(6.0, 3.8)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        steps = np.arange(1, len(curve) + 1)
        ax.plot(steps, np.asarray(curve, dtype=float), marker="o", label=name)
    longest = max((len(c) for c in curves.values()), default=1)
    ax.set_xticks(range(1, longest + 1))
    ax.set_xlabel("tasks trained")
    ax.set_ylabel("average accuracy")
    ax.set_ylim(0.0, 1.02 * _top([v for c in curves.values() for v in c]))
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if curves:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_comparison(summaries: Mapping[str, Mapping], path, title: str = "Runs compared") -> Path:
    """Bars of AA (left) and BWT (right) per run, from ``metrics.summary`` dicts."""
    names = list(summaries)
    fig = _figure(2.5 + 1.1 * max(len(names), 1), 3.8)
    panels = fig.subplots(1, 2)
    for ax, key, label in zip(panels, ("average_accuracy", "backward_transfer"), ("AA", "BWT")):
        values = np.array([summaries[n].get(key, np.nan) for n in names], dtype=float)
        bars = ax.bar(range(len(names)), np.nan_to_num(values), color=f"C{0 if label == 'AA' else 3}")
        for b, v in zip(bars, values):
            x = b.get_x() + b.get_width() / 2
            if np.isnan(v):  # no value (e.g. BWT of a one-task run): say so inside the axes
                ax.text(x, 0.5, "n/a", transform=ax.get_xaxis_transform(), ha="center", fontsize=8)
            else:
                ax.annotate(f"{v:.3g}", (x, v), ha="center", va="bottom" if v >= 0 else "top", fontsize=8)
        ax.margins(y=0.12)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)
