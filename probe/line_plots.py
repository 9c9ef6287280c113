"""Line plots of a score against a condition (layer, mask ratio), one line per encoder, written as PNG and PDF."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from probe.plots import _pyplot, save_figure


def plot_lines(series: Mapping[str, Sequence[tuple[float, float | None]]], stem: str | os.PathLike, xlabel: str,
               ylabel: str, title: str = "", integer_x: bool = False) -> list[Path]:
    """series: label -> (x, y) points, drawn in x order with markers (None: no value, a gap in the line)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for label, points in series.items():
        ordered = sorted(points, key=lambda point: point[0])
        xs = [x for x, _ in ordered]
        ys = [float("nan") if y is None else y for _, y in ordered]
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.5, label=label)
    if integer_x:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return save_figure(fig, stem)
