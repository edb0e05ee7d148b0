"""One plotting helper for every benchmark: sentfuse next to its peers, labelled with the machine.

matplotlib is a benchmark-only dependency (`make bench` installs it); without it plots are skipped with a
message, never an error, so a benchmark's numbers are never lost to a missing plotting library.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

COLORS = {"sentfuse": "#d62728"}  # sentfuse in one colour everywhere; peers take matplotlib's cycle


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots: matplotlib not installed, no plot written (pip install matplotlib)")
        return None
    return plt


def grouped_bars(path: str | os.PathLike, title: str, machine: str, ylabel: str, groups: Sequence[str],
                 series: Mapping[str, Sequence[float | None]], log: bool = False) -> Path | None:
    """A PNG of bars: one cluster per group, one bar per library (None: not measured, no bar)."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(groups) + 2), 4.2))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g, v in enumerate(values) if v is not None]
        ys = [v for v in values if v is not None]
        bars = ax.bar(xs, ys, width, label=name, color=COLORS.get(name))
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    return _finish(fig, ax, path, title, machine, ylabel, log)


def lines(path: str | os.PathLike, title: str, machine: str, xlabel: str, ylabel: str,
          series: Mapping[str, tuple[Sequence[float], Sequence[float]]], log: bool = True) -> Path | None:
    """A PNG of one line per library over x (e.g. time against corpus size), log-log by default."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=name, color=COLORS.get(name))
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    return _finish(fig, ax, path, title, machine, ylabel, log)


def _finish(fig, ax, path, title: str, machine: str, ylabel: str, log: bool) -> Path:
    import matplotlib.pyplot as plt

    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.text(0.99, 0.01, machine, ha="right", va="bottom", fontsize=7, color="gray")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed: an interrupted run never leaves half a PNG.
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    print(f"plot: {path}")
    return path
