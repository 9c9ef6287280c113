"""What every arm is measured with, identically: per-image scores on the validation images of each task, so that
two arms can be compared image by image.

- classification (shape, colour, same-shape, count): the BN-linear probe on the pooled vector (lr x wd sweep)
  and the attentive probe over the patch tokens; score = 1 when the top-1 class is right.
- regression (position: centre x and y; size: circumradius): ridge on the standardised pooled vector, its
  penalty picked on a held-out fifth of train; score_i = 1 - squared error_i / variance of the val targets
  (averaged over x and y), so the mean score is R^2.
- reconstruction (pixels): a ridge read-out from each patch token to the 8 x 8 x 3 pixels of its own cell (shared
  over positions); score_i = PSNR of image i in dB (pixels in [-1, 1], peak-to-peak 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from encoders.base import Encoder
from experiments.figure2.config import CLASSIFICATION, RECONSTRUCTION, REGRESSION, Figure2Config
from experiments.figure2.data import SplitData
from probe.attentive import AttentiveProbeConfig, attentive_probe
from probe.feature_cache import CachePlan
from probe.features import ExtractOptions, extract_features
from probe.linear import LinearProbeConfig, ProbeSweepConfig, predict_logits, sweep_linear_probe

PSNR_CAP_MSE = 1e-10  # an exact read-out (raw pixels) scores 10 log10(4 / 1e-10) = 106 dB instead of infinity


def _features(encoder: Encoder, pooling: str | None, data: SplitData, split: str,
              cache: Path) -> tuple[np.ndarray, np.ndarray]:
    plan = CachePlan(cache, split, pooling=pooling, tokens=True, dataset_name=data.dataset.cache_id)
    options = ExtractOptions(batch_size=128, num_workers=0, device="cpu", progress=False)
    features = extract_features(encoder, data.dataset, plan, options)
    return np.asarray(features.features), np.asarray(features.tokens)


def linear_scores(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, epochs: int,
                  seed: int) -> tuple[np.ndarray, Any]:
    """Per-image top-1 correctness of the swept BN-linear probe, and its head."""
    training = LinearProbeConfig(epochs=epochs, warmup_epochs=max(1, epochs // 10),
                                 batch_size=min(256, max(1, len(train_x) // 4)), optimizer="sgd", seed=seed,
                                 device="cpu")
    sweep = sweep_linear_probe(train_x, train_y, val_x, val_y, ProbeSweepConfig(training=training))
    predictions = predict_logits(sweep.head, val_x).numpy().argmax(1)
    return (predictions == val_y).astype(np.float64), sweep.head


def attentive_scores(train_t: np.ndarray, train_y: np.ndarray, val_t: np.ndarray, val_y: np.ndarray, epochs: int,
                     lr: float, seed: int) -> np.ndarray:
    config = AttentiveProbeConfig(epochs=epochs, warmup_epochs=max(1, epochs // 10), batch_size=min(64, len(train_t)),
                                  lr=lr, seed=seed,
                                  device="cpu")
    return attentive_probe(train_t, train_y, val_t, val_y, config)["correct"].astype(np.float64)


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-6
    return [(x - mean) / std for x in (train, *others)]


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and intercept minimising |y - x w - b|^2 + alpha |w|^2 (x standardised, float64)."""
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    weights = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ yc)
    return weights, y_mean - x_mean @ weights


def ridge_select(x: np.ndarray, y: np.ndarray, alphas: list[float], seed: int) -> float:
    """The penalty with the lowest squared error on a held-out fifth of the rows."""
    order = np.random.default_rng(seed).permutation(len(x))
    held, fit = order[: len(x) // 5], order[len(x) // 5 :]
    errors = []
    for alpha in alphas:
        weights, bias = ridge_fit(x[fit], y[fit], alpha)
        errors.append(float(((x[held] @ weights + bias - y[held]) ** 2).mean()))
    return alphas[int(np.argmin(errors))]


def regression_scores(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                      alphas: list[float], seed: int) -> np.ndarray:
    """score_i = mean over targets of 1 - (error_i)^2 / var(val target); the mean over images is R^2."""
    train_x, val_x = _standardise(train_x.astype(np.float64), val_x.astype(np.float64))
    weights, bias = ridge_fit(train_x, train_y, ridge_select(train_x, train_y, alphas, seed))
    errors = (val_x @ weights + bias - val_y) ** 2
    return (1.0 - errors / val_y.var(0)).mean(1)


def pixel_cells(images: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(N, h*w, 3*p*p) pixels in [-1, 1] of each token's cell, channel-major, for uint8 images (N, H, W, 3)."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    patch = images.shape[1] // grid[0]
    return F.pixel_unshuffle(pixels, patch).flatten(2).transpose(1, 2).numpy().astype(np.float64)


def reconstruction_scores(train_t: np.ndarray, train_images: np.ndarray, val_t: np.ndarray,
                          val_images: np.ndarray, grid: tuple[int, int], alphas: list[float], seed: int) -> np.ndarray:
    """Per-image PSNR (dB) of a shared per-token ridge read-out of each cell's pixels."""
    n, t, d = train_t.shape
    targets = pixel_cells(train_images, grid).reshape(n * t, -1)
    x_train, x_val = _standardise(train_t.reshape(n * t, d).astype(np.float64),
                                  val_t.reshape(-1, d).astype(np.float64))
    weights, bias = ridge_fit(x_train, targets, ridge_select(x_train, targets, alphas, seed))
    predicted = (x_val @ weights + bias).reshape(len(val_t), -1)
    mse = ((predicted - pixel_cells(val_images, grid).reshape(len(val_t), -1)) ** 2).mean(1)
    return 10.0 * np.log10(4.0 / np.maximum(mse, PSNR_CAP_MSE))


def measure_arm(encoder: Encoder, pooling: str | None, sets: dict[str, dict[str, SplitData]], config: Figure2Config,
                cache: Path, seed: int) -> tuple[dict[str, dict[str, Any]], Any]:
    """task -> probe -> {"scores": per-val-image scores, "input_dim": probe input width, "kind"}; plus the
    linear shape head (for Grad-CAM++)."""
    features = {name: {split: _features(encoder, pooling, data[split], split, cache) for split in ("train", "val")}
                for name, data in sets.items()}
    probes, results, shape_head = config.probes, {}, None
    for task, (set_name, target) in CLASSIFICATION.items():
        (train_x, train_t), (val_x, val_t) = features[set_name]["train"], features[set_name]["val"]
        train_y, val_y = sets[set_name]["train"].targets[target], sets[set_name]["val"].targets[target]
        linear, head = linear_scores(train_x, train_y, val_x, val_y, probes.linear_epochs, seed)
        attentive = attentive_scores(train_t, train_y, val_t, val_y, probes.attentive_epochs, probes.attentive_lr, seed)
        results[task] = {"linear": {"scores": linear, "input_dim": int(train_x.shape[1]), "kind": "accuracy"},
                         "attentive": {"scores": attentive, "input_dim": int(train_t.shape[2]), "kind": "accuracy",
                                       "tokens": int(train_t.shape[1])}}
        if task == "shape":
            shape_head = head
    for task, (set_name, targets) in REGRESSION.items():
        (train_x, _), (val_x, _) = features[set_name]["train"], features[set_name]["val"]
        train_y = np.stack([sets[set_name]["train"].targets[k] for k in targets], 1)
        val_y = np.stack([sets[set_name]["val"].targets[k] for k in targets], 1)
        scores = regression_scores(train_x, train_y, val_x, val_y, probes.ridge_alphas, seed)
        results[task] = {"ridge": {"scores": scores, "input_dim": int(train_x.shape[1]), "kind": "r2"}}
    for task, set_name in RECONSTRUCTION.items():
        (_, train_t), (_, val_t) = features[set_name]["train"], features[set_name]["val"]
        grid = encoder.grid_for(encoder.preprocess.image_size, encoder.preprocess.image_size)
        scores = reconstruction_scores(train_t, sets[set_name]["train"].dataset.images, val_t,
                                       sets[set_name]["val"].dataset.images, grid, probes.ridge_alphas, seed)
        results[task] = {"readout": {"scores": scores, "input_dim": int(train_t.shape[2]), "kind": "psnr"}}
    return results, shape_head
