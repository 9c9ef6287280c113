"""Classification metrics on scores or predictions, in percent like MAE's `acc1`/`acc5`.

Conventions:
* top-k is the percentage of samples whose true label is among the k highest scores; ties are
  broken towards the lower class index (stable sort), so constant scores never look accurate.
* with fewer than k classes every label is always in the top k, so top-5 on a 3-class problem
  is 100.0.
* per-class accuracy is NaN in arrays (None in JSON) for classes with no samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


def to_numpy(values: ArrayLike) -> np.ndarray:
    """Return `values` as a numpy array (torch tensors are detached and moved to CPU)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _check_scores(scores: np.ndarray, targets: np.ndarray) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape [N, C], got {scores.shape}")
    if targets.shape != (scores.shape[0],):
        raise ValueError(f"targets must have shape [{scores.shape[0]}] to match scores, got {targets.shape}")
    if targets.size and (targets.min() < 0 or targets.max() >= scores.shape[1]):
        raise ValueError(
            f"targets must lie in [0, {scores.shape[1]}); got range [{targets.min()}, {targets.max()}]"
        )


def topk_correct(scores: ArrayLike, targets: ArrayLike, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Number of samples whose true label is among the k highest scores, for each k."""
    scores_np, targets_np = to_numpy(scores), to_numpy(targets).astype(np.int64)
    _check_scores(scores_np, targets_np)
    num_classes = scores_np.shape[1]
    ranked = np.argsort(-scores_np, axis=1, kind="stable")[:, : min(max(ks), num_classes)]
    hits = ranked == targets_np[:, None]
    return {k: int(hits[:, : min(k, num_classes)].any(axis=1).sum()) for k in ks}


def topk_accuracy(scores: ArrayLike, targets: ArrayLike, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent for each k, keyed `top{k}`."""
    num_samples = len(to_numpy(targets))
    if num_samples == 0:
        raise ValueError("topk_accuracy needs at least one sample")
    return {f"top{k}": 100.0 * hits / num_samples for k, hits in topk_correct(scores, targets, ks).items()}


def confusion_matrix(predictions: ArrayLike, targets: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts [C, C]: row = true class, column = predicted class."""
    preds_np, targets_np = to_numpy(predictions).astype(np.int64), to_numpy(targets).astype(np.int64)
    if preds_np.shape != targets_np.shape:
        raise ValueError(
            f"predictions {preds_np.shape} and targets {targets_np.shape} must have the same shape"
        )
    for name, values in (("predictions", preds_np), ("targets", targets_np)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}); raise num_classes or fix the labels")
    flat = np.bincount(targets_np * num_classes + preds_np, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class in percent from a confusion matrix; NaN where a class has no samples."""
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, 100.0 * np.diag(confusion) / support, np.nan)


def classification_report(
    scores: ArrayLike, targets: ArrayLike, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """JSON-serialisable summary: top-1/top-5, mean per-class accuracy, per-class accuracy, confusion."""
    scores_np, targets_np = to_numpy(scores), to_numpy(targets).astype(np.int64)
    _check_scores(scores_np, targets_np)
    num_classes = scores_np.shape[1]
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} entries but scores have {num_classes} classes")
    confusion = confusion_matrix(scores_np.argmax(axis=1), targets_np, num_classes)
    per_class = per_class_accuracy(confusion)
    return {
        "num_samples": int(targets_np.size),
        "num_classes": num_classes,
        **topk_accuracy(scores_np, targets_np, ks=(1, 5)),
        "mean_per_class_top1": float(np.nanmean(per_class)) if np.isfinite(per_class).any() else None,
        "per_class_top1": {
            name: (None if np.isnan(acc) else float(acc)) for name, acc in zip(names, per_class, strict=True)
        },
        "confusion": confusion.tolist(),
    }
