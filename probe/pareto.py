"""The reconstruction / semantics trade-off: which points no other point beats on both axes (the Pareto front),
and the scatter plot that marks them (PNG and PDF)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from probe.plots import _pyplot, save_figure


def non_dominated(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each (x, y), higher being better on both axes: True when no other point is >= on both and > on one.
    Equal points do not dominate each other, so both stay on the front."""
    return [not any(ox >= x and oy >= y and (ox > x or oy > y) for ox, oy in points) for x, y in points]


def plot_pareto(points: Sequence[tuple[float, float]], labels: Sequence[str], stem: str | os.PathLike, xlabel: str,
                ylabel: str, title: str = "") -> list[Path]:
    """One labelled point per (x, y); the non-dominated ones filled and joined by the front, the others hollow."""
    if len(points) != len(labels):
        raise ValueError(f"{len(points)} points but {len(labels)} labels; give one label per point")
    front = non_dominated(points)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for (x, y), label, best in zip(points, labels, front, strict=True):
        ax.scatter([x], [y], s=46, color="tab:red" if best else "white", edgecolors="tab:red" if best else "0.35",
                   zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ordered = sorted(point for point, best in zip(points, front, strict=True) if best)
    if len(ordered) > 1:
        ax.plot(*zip(*ordered, strict=True), color="tab:red", linewidth=1.0, alpha=0.6, zorder=2)
    ax.scatter([], [], s=46, color="tab:red", label="non-dominated")
    ax.scatter([], [], s=46, color="white", edgecolors="0.35", label="dominated")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", frameon=False)
    return save_figure(fig, stem)
