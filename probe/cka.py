"""Linear CKA (Kornblith et al., 2019) between two feature matrices over the same N samples.

`linear_cka` is the exact Gram-matrix form, O(N^2) memory. `StreamingLinearCKA` accumulates the
centred cross- and self-covariances X^T Y, X^T X, Y^T Y batch by batch (Chan et al.'s pairwise
merge, float64), so memory is O((D1 + D2)^2) whatever N; both give the same value on the same data.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

Features = np.ndarray | torch.Tensor


def _as_float64(features: Features, name: str, device: torch.device | None = None) -> torch.Tensor:
    tensor = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    if tensor.ndim != 2:
        raise ValueError(f"{name} must have shape [N, D], got {tuple(tensor.shape)}")
    return tensor.detach().to(device=device or tensor.device, dtype=torch.float64)


def _cka_from_products(cross: torch.Tensor, self_x: torch.Tensor, self_y: torch.Tensor) -> float:
    denominator = torch.sqrt(self_x * self_y)
    if denominator <= 0:
        raise ValueError("CKA is undefined when either feature matrix is constant over the samples")
    return float(cross / denominator)


def linear_cka(x: Features, y: Features, max_samples: int = 16384) -> float:
    """Exact linear CKA from centred Gram matrices; refuses N > max_samples (use StreamingLinearCKA)."""
    x64, y64 = _as_float64(x, "x"), _as_float64(y, "y")
    y64 = y64.to(x64.device)
    if x64.shape[0] != y64.shape[0]:
        raise ValueError(f"x and y need the same number of samples, got {x64.shape[0]} and {y64.shape[0]}")
    if x64.shape[0] > max_samples:
        raise ValueError(
            f"{x64.shape[0]} samples exceed max_samples={max_samples} for the O(N^2) exact CKA; "
            "use StreamingLinearCKA or raise max_samples"
        )

    def centred_gram(features: torch.Tensor) -> torch.Tensor:
        gram = features @ features.T
        return gram - gram.mean(0, keepdim=True) - gram.mean(1, keepdim=True) + gram.mean()

    gram_x, gram_y = centred_gram(x64), centred_gram(y64)
    return _cka_from_products((gram_x * gram_y).sum(), (gram_x * gram_x).sum(), (gram_y * gram_y).sum())


class StreamingLinearCKA:
    """Accumulate linear CKA over batches of paired features (same samples, same order in x and y)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean_x: torch.Tensor | None = None
        self.mean_y: torch.Tensor | None = None
        self.cov_xx: torch.Tensor | None = None
        self.cov_yy: torch.Tensor | None = None
        self.cov_xy: torch.Tensor | None = None

    def update(self, x: Features, y: Features) -> None:
        """Add a batch: x [B, D1], y [B, D2]."""
        device = self.mean_x.device if self.mean_x is not None else None
        xb, yb = _as_float64(x, "x", device), _as_float64(y, "y", device)
        yb = yb.to(xb.device)
        if xb.shape[0] != yb.shape[0]:
            raise ValueError(f"batch x has {xb.shape[0]} rows but y has {yb.shape[0]}; pair the same samples")
        if xb.shape[0] == 0:
            return
        mean_xb, mean_yb = xb.mean(0), yb.mean(0)
        centred_x, centred_y = xb - mean_xb, yb - mean_yb
        batch = (centred_x.T @ centred_x, centred_y.T @ centred_y, centred_x.T @ centred_y)
        if self.mean_x is None:
            self.count, self.mean_x, self.mean_y = xb.shape[0], mean_xb, mean_yb
            self.cov_xx, self.cov_yy, self.cov_xy = batch
            return
        if xb.shape[1] != self.mean_x.shape[0] or yb.shape[1] != self.mean_y.shape[0]:
            raise ValueError(
                f"feature widths changed between batches: got {xb.shape[1]}/{yb.shape[1]}, "
                f"expected {self.mean_x.shape[0]}/{self.mean_y.shape[0]}"
            )
        total = self.count + xb.shape[0]
        weight = self.count * xb.shape[0] / total
        delta_x, delta_y = mean_xb - self.mean_x, mean_yb - self.mean_y
        self.cov_xx += batch[0] + weight * torch.outer(delta_x, delta_x)
        self.cov_yy += batch[1] + weight * torch.outer(delta_y, delta_y)
        self.cov_xy += batch[2] + weight * torch.outer(delta_x, delta_y)
        self.mean_x += delta_x * (xb.shape[0] / total)
        self.mean_y += delta_y * (xb.shape[0] / total)
        self.count = total

    def compute(self) -> float:
        """CKA of everything added so far."""
        if self.cov_xy is None:
            raise ValueError("no batches were added; call update(x, y) first")
        return _cka_from_products(
            (self.cov_xy**2).sum(),
            (self.cov_xx**2).sum(),
            (self.cov_yy**2).sum(),  # type: ignore[operator]
        )


def streaming_linear_cka(batches: Iterable[tuple[Features, Features]]) -> float:
    """Linear CKA over an iterable of (x_batch, y_batch) pairs."""
    accumulator = StreamingLinearCKA()
    for x_batch, y_batch in batches:
        accumulator.update(x_batch, y_batch)
    return accumulator.compute()
