"""Weighted k-NN probe (as in InstDisc/DINO): cosine similarity of L2-normalised features, each of the
k nearest training samples votes for its label with weight exp(similarity / T).

The top max(k) neighbours are found once, in query x train chunks with a running merge, so memory is
O(query_chunk x (train_chunk + max k)); every k is scored from that one list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harmon.utils.runtime import resolve_device
from probe.metrics import to_numpy, topk_correct

Features = np.ndarray | torch.Tensor


def _normalised(features: Features, name: str, device: torch.device) -> torch.Tensor:
    tensor = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    if tensor.ndim != 2:
        raise ValueError(f"{name} must have shape [N, D], got {tuple(tensor.shape)}")
    return F.normalize(tensor.to(device=device, dtype=torch.float32), dim=1)


def nearest_neighbours(
    queries: torch.Tensor, keys: torch.Tensor, k: int, train_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarities and indices [Q, k] of the k most similar keys to each query, best first."""
    best_sims = queries.new_empty(len(queries), 0)
    best_idx = torch.empty(len(queries), 0, dtype=torch.long, device=queries.device)
    for start in range(0, len(keys), train_chunk):
        sims = queries @ keys[start : start + train_chunk].T
        idx = torch.arange(start, start + sims.shape[1], device=queries.device).expand_as(sims)
        merged_sims, merged_idx = torch.cat([best_sims, sims], 1), torch.cat([best_idx, idx], 1)
        best_sims, order = merged_sims.topk(min(k, merged_sims.shape[1]), dim=1)
        best_idx = merged_idx.gather(1, order)
    return best_sims, best_idx


@torch.no_grad()
def knn_probe(
    train_x: Features,
    train_y: Sequence[int] | np.ndarray | torch.Tensor,
    test_x: Features,
    test_y: Sequence[int] | np.ndarray | torch.Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    query_chunk: int = 1024,
    train_chunk: int = 65536,
    device: str | None = None,
) -> dict[int, dict[str, float]]:
    """Top-1/top-5 (percent) of the temperature-weighted k-NN classifier for every k in `ks`."""
    compute_device = resolve_device(device)
    keys, queries = (
        _normalised(train_x, "train_x", compute_device),
        _normalised(test_x, "test_x", compute_device),
    )
    key_labels = torch.as_tensor(to_numpy(train_y)).long().to(compute_device)
    query_labels = to_numpy(test_y).astype(np.int64)
    if keys.shape[1] != queries.shape[1]:
        raise ValueError(f"train_x has {keys.shape[1]} features but test_x has {queries.shape[1]}")
    if key_labels.shape != (len(keys),) or query_labels.shape != (len(queries),):
        raise ValueError("train_y and test_y must hold one label per row of train_x and test_x")
    if not ks or min(ks) < 1 or max(ks) > len(keys):
        raise ValueError(f"every k must be in [1, {len(keys)} training samples], got {list(ks)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    classes = num_classes or int(max(key_labels.max().item(), query_labels.max())) + 1
    correct = {k: {1: 0, 5: 0} for k in ks}
    for start in range(0, len(queries), query_chunk):
        sims, idx = nearest_neighbours(queries[start : start + query_chunk], keys, max(ks), train_chunk)
        weights = torch.exp(
            (sims - sims[:, :1]) / temperature
        )  # a per-query factor does not change the ranking
        labels = key_labels[idx]
        targets = query_labels[start : start + query_chunk]
        for k in ks:
            votes = torch.zeros(len(sims), classes, device=compute_device)
            votes.scatter_add_(1, labels[:, :k], weights[:, :k])
            for top, hits in topk_correct(votes, targets, ks=(1, 5)).items():
                correct[k][top] += hits
    return {
        k: {f"top{top}": 100.0 * hits / len(queries) for top, hits in tops.items()}
        for k, tops in correct.items()
    }
