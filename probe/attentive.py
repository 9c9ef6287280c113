"""Attentive probe on frozen token arrays [N, T, D] (numpy float16/float32 or torch).

Head: the tokens are standardised per channel with the mean and variance of every training token (frozen,
eps 1e-6 like the linear probe's BatchNorm), one learned query token (trunc-normal std 0.02) attends to them
through multi-head cross-attention (`nn.MultiheadAttention`, no positional embedding), and the attended
vector goes through LayerNorm and a linear classifier. Only the probe trains. With a single query and no
positions the output does not depend on the order of the tokens.

Training: AdamW (default) or momentum SGD at a fixed peak learning rate, linear warm-up then half-cycle
cosine, updated every iteration; weight decay applies to the weight matrices only (attention projections,
classifier), never to biases, the LayerNorm or the query. Initial weights and batch order come from the
seed, so training on the CPU is deterministic for a seed. Raw tokens stay where they are (e.g. on the CPU in
float16) and move to the compute device one batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harmon.utils.runtime import resolve_device
from harmon.utils.schedules import warmup_cosine
from probe.metrics import to_numpy, topk_accuracy

Tokens = np.ndarray | torch.Tensor
Labels = np.ndarray | torch.Tensor | list[int]


@dataclass
class AttentiveProbeConfig:
    """One attentive probe's recipe; use the same one for every encoder in a comparison."""

    epochs: int = 20
    warmup_epochs: int = 2
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = 0.9  # SGD only
    min_lr: float = 0.0
    num_heads: int = 1  # must divide the token dimension D
    seed: int = 0
    device: str | None = None  # None: CUDA when available, else CPU

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.num_heads < 1:
            raise ValueError(
                f"epochs ({self.epochs}), batch_size ({self.batch_size}) and num_heads ({self.num_heads}) "
                "must be at least 1"
            )
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        if self.lr <= 0 or self.weight_decay < 0 or self.min_lr < 0:
            raise ValueError(
                "lr must be > 0, weight_decay and min_lr >= 0; "
                f"got {self.lr}, {self.weight_decay}, {self.min_lr}"
            )


class AttentivePoolHead(nn.Module):
    """Standardise tokens, pool them with one learned query (multi-head cross-attention), LayerNorm,
    Linear."""

    def __init__(self, dim: int, num_classes: int, num_heads: int = 1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the token dimension D={dim}")
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.query = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, dim), std=0.02))
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, num_classes)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attended vector [B, D] for raw tokens [B, T, D]."""
        x = (tokens - self.mean) / self.std
        query = self.query.expand(x.shape[0], -1, -1)
        pooled, _ = self.attention(query, x, x, need_weights=False)
        return pooled[:, 0]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(self.pool(tokens)))


def as_tokens(tokens: Tokens, name: str = "tokens") -> torch.Tensor:
    """A torch view of numpy or torch tokens, checked to be [N, T, D] with N, T, D > 0."""
    x = tokens if isinstance(tokens, torch.Tensor) else torch.from_numpy(np.asarray(tokens))
    if x.ndim != 3 or min(x.shape) == 0:
        raise ValueError(f"{name} must have shape [N, T, D] with N, T, D > 0, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    return x


def as_labels(labels: Labels, num_samples: int, name: str = "labels") -> torch.Tensor:
    y = torch.as_tensor(to_numpy(labels))
    if y.shape != (num_samples,):
        raise ValueError(f"{name} must have shape [{num_samples}] to match the tokens, got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class indices, got {y.dtype}")
    return y.long()


def token_statistics(
    tokens: torch.Tensor, device: torch.device, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and sqrt(variance + 1e-6) over all N x T tokens, in float64 (chunked over samples)."""
    count = tokens.shape[0] * tokens.shape[1]
    total = torch.zeros(tokens.shape[2], dtype=torch.float64, device=device)
    for start in range(0, len(tokens), chunk):
        part = tokens[start : start + chunk].to(device, torch.float64)
        if not torch.isfinite(part).all():
            raise ValueError("tokens contain NaN or inf; fix the feature extraction before probing")
        total += part.sum((0, 1))
    mean = total / count
    squares = torch.zeros_like(total)
    for start in range(0, len(tokens), chunk):
        squares += ((tokens[start : start + chunk].to(device, torch.float64) - mean) ** 2).sum((0, 1))
    return mean.float(), torch.sqrt(squares / count + 1e-6).float()


def shuffled_batches(num_samples: int, config: AttentiveProbeConfig) -> Iterator[tuple[float, torch.Tensor]]:
    """(progress in epochs, CPU sample indices) per iteration; reshuffled every epoch from the seed, last
    partial batch dropped."""
    steps = num_samples // config.batch_size
    if steps == 0:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {num_samples} training samples; lower batch_size"
        )
    generator = torch.Generator().manual_seed(config.seed + 1)
    for epoch in range(config.epochs):
        order = torch.randperm(num_samples, generator=generator)
        for step in range(steps):
            yield epoch + step / steps, order[step * config.batch_size : (step + 1) * config.batch_size]


def _optimizer(head: AttentivePoolHead, config: AttentiveProbeConfig) -> torch.optim.Optimizer:
    matrices = [p for p in head.parameters() if p.ndim == 2]
    others = [p for p in head.parameters() if p.ndim != 2]
    groups = [
        {"params": matrices, "weight_decay": config.weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)


def train_attentive_probe(
    train_tokens: Tokens, train_labels: Labels, config: AttentiveProbeConfig, num_classes: int | None = None
) -> AttentivePoolHead:
    """Train one attentive head on raw tokens [N, T, D] and labels [N]; returns it on the compute device."""
    x = as_tokens(train_tokens, "train_tokens")
    y = as_labels(train_labels, x.shape[0], "train_labels")
    classes = int(y.max()) + 1 if num_classes is None else num_classes
    if y.min() < 0 or y.max() >= classes:
        raise ValueError(f"train_labels must lie in [0, {classes}), got [{int(y.min())}, {int(y.max())}]")
    dim = x.shape[2]
    if dim % config.num_heads:
        raise ValueError(
            f"num_heads ({config.num_heads}) must divide the token dimension D={dim} of train_tokens"
        )
    device = resolve_device(config.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = AttentivePoolHead(dim, classes, config.num_heads)
    head = head.to(device)
    mean, std = token_statistics(x, device)
    head.mean.copy_(mean)
    head.std.copy_(std)
    y = y.to(device)
    optimizer = _optimizer(head, config)
    head.train()
    for progress, batch in shuffled_batches(len(y), config):
        lr = warmup_cosine(progress, config.epochs, config.warmup_epochs, peak=config.lr, floor=config.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs = x[batch.to(x.device)].to(device, torch.float32)
        loss = F.cross_entropy(head(inputs), y[batch.to(device)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    head.eval()
    return head


@torch.no_grad()
def predict_logits_attentive(head: AttentivePoolHead, tokens: Tokens, batch_size: int = 1024) -> torch.Tensor:
    """Logits [N, C] on the CPU, computed in batches on the head's device."""
    x = as_tokens(tokens)
    if x.shape[2] != head.linear.in_features:
        raise ValueError(f"tokens have D={x.shape[2]} but the head expects D={head.linear.in_features}")
    device = head.query.device
    was_training = head.training
    head.eval()
    chunks = [
        head(x[i : i + batch_size].to(device, torch.float32)).cpu() for i in range(0, len(x), batch_size)
    ]
    head.train(was_training)
    return torch.cat(chunks)


def attentive_probe(
    train_tokens: Tokens,
    train_labels: Labels,
    val_tokens: Tokens,
    val_labels: Labels,
    config: AttentiveProbeConfig | None = None,
) -> dict[str, Any]:
    """Train on train, evaluate on val. Returns top1/top5 (percent), `correct` (bool [N_val], top-1 hit per
    val image, for paired tests), `input_dim` (D), `num_tokens` (T of train) and the trained `head`."""
    config = config or AttentiveProbeConfig()
    train_x = as_tokens(train_tokens, "train_tokens")
    val_x = as_tokens(val_tokens, "val_tokens")
    if val_x.shape[2] != train_x.shape[2]:
        raise ValueError(f"val_tokens have D={val_x.shape[2]} but train_tokens have D={train_x.shape[2]}")
    train_y = as_labels(train_labels, train_x.shape[0], "train_labels")
    val_y = as_labels(val_labels, val_x.shape[0], "val_labels")
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    head = train_attentive_probe(train_x, train_y, config, num_classes)
    logits = predict_logits_attentive(head, val_x)
    metrics = topk_accuracy(logits, val_y, ks=(1, 5))
    correct = logits.numpy().argmax(1) == val_y.numpy()  # first maximum, as topk_accuracy breaks ties
    return {
        **metrics,
        "correct": correct,
        "input_dim": int(train_x.shape[2]),
        "num_tokens": int(train_x.shape[1]),
        "head": head,
    }
