"""The Fréchet distance between two Gaussians, and between two sets of feature vectors through their moments.

d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)). The trace of the matrix square root is the
sum of the square roots of the eigenvalues of sigma1 sigma2 (a product of two positive semi-definite matrices has
real, non-negative eigenvalues; round-off below zero is clipped), which needs no `sqrtm` and stays finite for
singular covariances (fewer samples than feature dimensions). FID is this distance on Inception features; here any
encoder's pooled features serve.
"""

from __future__ import annotations

import numpy as np


def feature_moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), unbiased covariance (D, D)) of features (N, D), N >= 2, in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features of shape {x.shape}: pass (N, D) with at least 2 rows")
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (what FID reports)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"means {mu1.shape} / {mu2.shape} and covariances {sigma1.shape} / {sigma2.shape} do not "
                         "match; pass (D,) means and (D, D) covariances")
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2).real.clip(min=0.0)
    distance = float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(eigenvalues).sum())
    return max(distance, 0.0)


def frechet_distance_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (N_a, D) and (N_b, D)."""
    return frechet_distance(*feature_moments(a), *feature_moments(b))
