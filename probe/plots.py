"""Figures of a probing study, each written atomically as PNG and PDF."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from harmon.utils.files import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, stem: str | os.PathLike, dpi: int = 150) -> list[Path]:
    """Write `stem`.png and `stem`.pdf through temporary files; close the figure."""
    plt = _pyplot()
    stem = Path(stem)
    written = []
    for fmt in ("png", "pdf"):
        path = stem.with_name(f"{stem.name}.{fmt}")
        atomic_write(path, lambda handle, fmt=fmt: fig.savefig(handle, format=fmt, dpi=dpi, bbox_inches="tight"))
        written.append(path)
    plt.close(fig)
    return written


def plot_topk_bars(scores: Mapping[str, Mapping[str, float]], stem: str | os.PathLike,
                   paper_top5: Mapping[str, float] | None = None, title: str = "Linear probe") -> list[Path]:
    """Figure 2-style bars: top-1 and top-5 (percent) per encoder, optionally the paper's top-5 beside them."""
    import seaborn as sns

    rows = [(name, metric, values[key]) for name, values in scores.items()
            for metric, key in (("top-1", "top1"), ("top-5", "top5"))]
    rows += [(name, "top-5 (paper)", value) for name, value in (paper_top5 or {}).items() if name in scores]
    data = {"encoder": [r[0] for r in rows], "metric": [r[1] for r in rows], "accuracy": [r[2] for r in rows]}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(scores), 3.6))
    sns.barplot(data=data, x="encoder", y="accuracy", hue="metric", ax=ax, palette="deep")
    for container in ax.containers:
        ax.bar_label(container, fmt="%.1f", fontsize=7, padding=1)
    ax.set_ylim(0, 108)
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel("")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    return save_figure(fig, stem)


def plot_cam_grid(images: np.ndarray, overlays: Mapping[str, np.ndarray], stem: str | os.PathLike,
                  captions: Sequence[str] | None = None) -> list[Path]:
    """Rows: the images, then one row of CAM overlays per encoder; columns: images (as in Figure 2)."""
    plt = _pyplot()
    rows = [("image", images), *overlays.items()]
    count = len(images)
    for name, row in rows:
        if len(row) != count:
            raise ValueError(f"row {name!r} has {len(row)} pictures but there are {count} images")
    fig, axes = plt.subplots(len(rows), count, figsize=(1.3 * count + 0.9, 1.3 * len(rows)), squeeze=False)
    for r, (name, row) in enumerate(rows):
        for c in range(count):
            ax = axes[r, c]
            ax.imshow(row[c])
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
            if r == 0 and captions is not None:
                ax.set_title(captions[c], fontsize=7)
    fig.subplots_adjust(wspace=0.03, hspace=0.03)
    return save_figure(fig, stem)


def _ticks(classes: Sequence[str]) -> Sequence[str] | bool:
    """Class names as tick labels while they stay legible (up to 60), else none."""
    return list(classes) if len(classes) <= 60 else False


def plot_per_class_heatmap(per_class: Mapping[str, Mapping[str, float | None]], stem: str | os.PathLike) -> list[Path]:
    """Encoders x classes heatmap of per-class top-1 accuracy (percent)."""
    import seaborn as sns

    encoders = list(per_class)
    classes = list(next(iter(per_class.values())))
    values = np.array([[np.nan if per_class[e][c] is None else per_class[e][c] for c in classes] for e in encoders])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(min(30.0, 1.5 + 0.45 * len(classes)), 0.9 + 0.45 * len(encoders)))
    sns.heatmap(values, ax=ax, vmin=0, vmax=100, cmap="viridis", annot=len(classes) <= 20, fmt=".0f",
                xticklabels=_ticks(classes), yticklabels=encoders, cbar_kws={"label": "top-1 (%)"},
                rasterized=True)
    ax.set_xlabel("class")
    ax.tick_params(axis="y", rotation=0)
    return save_figure(fig, stem)


def plot_confusion(confusion: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str], stem: str | os.PathLike,
                   title: str = "") -> list[Path]:
    """Row-normalised confusion matrix (rows: true class, columns: predicted class)."""
    import seaborn as sns

    counts = np.asarray(confusion, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = 100 * counts / counts.sum(axis=1, keepdims=True)
    plt = _pyplot()
    side = min(30.0, 2.0 + 0.4 * len(classes))
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    sns.heatmap(rates, ax=ax, vmin=0, vmax=100, cmap="Blues", annot=len(classes) <= 20, fmt=".0f", square=True,
                xticklabels=_ticks(classes), yticklabels=_ticks(classes), cbar_kws={"label": "% of true class"},
                rasterized=True)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save_figure(fig, stem)
