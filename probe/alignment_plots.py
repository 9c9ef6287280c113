"""Heatmap of an encoders x encoders alignment matrix, written as PNG and PDF."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from probe.plots import _pyplot, save_figure


def plot_alignment_heatmap(names: Sequence[str], matrix: Sequence[Sequence[float | None]], stem: str | os.PathLike,
                           title: str = "", label: str = "alignment") -> list[Path]:
    """Rows and columns: encoders; cell (i, j): the metric of names[i] against names[j] (None: undefined)."""
    import seaborn as sns

    values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=np.float64)
    if values.shape != (len(names), len(names)):
        raise ValueError(f"matrix has shape {values.shape} but there are {len(names)} names")
    low = min(0.0, float(np.nanmin(values))) if np.isfinite(values).any() else 0.0
    plt = _pyplot()
    side = 1.6 + 0.7 * len(names)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    sns.heatmap(values, ax=ax, vmin=low, vmax=1.0, cmap="viridis", annot=len(names) <= 20, fmt=".2f", square=True,
                xticklabels=list(names), yticklabels=list(names), cbar_kws={"label": label})
    ax.tick_params(axis="y", rotation=0)
    ax.tick_params(axis="x", rotation=45)
    ax.set_title(title)
    return save_figure(fig, stem)
