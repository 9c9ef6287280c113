"""Linear probes on cached feature arrays [N, D] (numpy or torch), following MAE's linprobe head.

Head: `BatchNorm1d(D, affine=False, eps=1e-6)` then `Linear(D, C)` (weight trunc-normal std 0.01,
bias 0), trained with LARS or momentum SGD, lr = base_lr x batch / 256, linear warm-up then
half-cycle cosine, updated every iteration. The normalisation uses the mean and variance of the
whole training array (frozen, as BatchNorm in eval mode) rather than per-batch statistics, so every
head in a sweep sees the same inputs and training is deterministic for a seed. Weight decay applies
to the weight matrix only, never to the bias.

`sweep_linear_probe` trains one head per (base_lr, weight_decay) pair in a single pass over the data
(weights stacked as one [D, H*C] matrix), picks the setting with the best top-1 on a stratified
held-out part of train, retrains that setting on the full train set and evaluates it on val.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harmon.utils.runtime import resolve_device
from harmon.utils.schedules import warmup_cosine
from probe.datasets import stratified_split
from probe.metrics import to_numpy, topk_accuracy

Features = np.ndarray | torch.Tensor
Labels = np.ndarray | torch.Tensor | list[int]


@dataclass
class LinearProbeConfig:
    """One probe's recipe; defaults are MAE's (LARS, base lr 0.1, no weight decay, 90 epochs, 10 warm-up)."""

    epochs: int = 90
    warmup_epochs: int = 10
    batch_size: int = 256
    base_lr: float = 0.1
    weight_decay: float = 0.0
    optimizer: Literal["lars", "sgd"] = "lars"
    momentum: float = 0.9
    min_lr: float = 0.0
    trust_coefficient: float = 0.001
    seed: int = 0
    device: str | None = None  # None: CUDA when available, else CPU

    def __post_init__(self) -> None:
        if self.optimizer not in ("lars", "sgd"):
            raise ValueError(f"optimizer must be 'lars' or 'sgd', got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs ({self.epochs}) and batch_size ({self.batch_size}) must be at least 1")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        if self.base_lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"base_lr must be > 0 and weight_decay >= 0, got {self.base_lr}, {self.weight_decay}"
            )

    @property
    def peak_lr(self) -> float:
        """Learning rate after warm-up: base_lr x batch_size / 256."""
        return self.base_lr * self.batch_size / 256


def scheduled_lr(
    peak: float | torch.Tensor, progress: float, config: LinearProbeConfig
) -> float | torch.Tensor:
    """MAE's schedule at `progress` epochs (fractional): linear warm-up, then half-cycle cosine to min_lr."""
    return warmup_cosine(progress, config.epochs, config.warmup_epochs, peak=peak, floor=config.min_lr)


def trust_ratio(param_norm: torch.Tensor, update_norm: torch.Tensor, coefficient: float) -> torch.Tensor:
    """coefficient x |param| / |update|, or 1 where either norm is zero."""
    usable = (param_norm > 0) & (update_norm > 0)
    return torch.where(
        usable, coefficient * param_norm / update_norm.clamp_min(1e-30), torch.ones_like(param_norm)
    )


class LARS(torch.optim.Optimizer):
    """LARS as in MAE's linear probe: parameters with more than one dimension get weight decay and the
    trust ratio; 1-D parameters (biases) get plain momentum SGD."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ) -> None:
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "trust_coefficient": trust_coefficient,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("LARS.step does not take a closure")
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if param.ndim > 1:
                    update = update.add(param, alpha=group["weight_decay"])
                    update = update * trust_ratio(param.norm(), update.norm(), group["trust_coefficient"])
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                param.add_(buffer, alpha=-group["lr"])


class LinearProbeHead(nn.Module):
    """BatchNorm1d(affine=False, eps=1e-6) then Linear; the norm always uses its stored statistics."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, num_classes)
        self.norm.eval()

    def train(self, mode: bool = True) -> LinearProbeHead:
        super().train(mode)
        self.norm.eval()
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(features))


def initial_weights(dim: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight [C, D] drawn trunc-normal with std 0.01 (MAE/timm bounds +-2) and a zero bias [C]."""
    generator = torch.Generator().manual_seed(seed)
    weight = nn.init.trunc_normal_(torch.empty(num_classes, dim), std=0.01, generator=generator)
    return weight, torch.zeros(num_classes)


def epoch_batches(
    num_samples: int, config: LinearProbeConfig, device: torch.device
) -> Iterator[tuple[float, torch.Tensor]]:
    """Yield (progress in epochs, sample indices on `device`) for every iteration; shuffled per epoch on the
    CPU (so the order does not depend on the device), last partial batch dropped, deterministic for the seed."""
    steps = num_samples // config.batch_size
    if steps == 0:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {num_samples} training samples; lower batch_size"
        )
    generator = torch.Generator().manual_seed(config.seed + 1)
    for epoch in range(config.epochs):
        order = torch.randperm(num_samples, generator=generator).to(device)
        for step in range(steps):
            yield epoch + step / steps, order[step * config.batch_size : (step + 1) * config.batch_size]


@dataclass
class PreparedFeatures:
    """Training features normalised with their own statistics, on the compute device."""

    normalised: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    num_classes: int


def as_tensor(features: Features) -> torch.Tensor:
    """A torch view of numpy or torch features (no copy when possible)."""
    return features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))


def prepare_features(
    features: Features,
    labels: Labels,
    device: torch.device,
    num_classes: int | None = None,
    chunk: int = 65536,
) -> PreparedFeatures:
    """Check shapes and labels, compute mean/variance in float64 (chunked, so float64 copies stay small) and
    normalise to float32 like BatchNorm1d(eps=1e-6)."""
    x = as_tensor(features)
    y = torch.as_tensor(to_numpy(labels)).long()
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must have shape [N, D] with N > 0, got {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape [{x.shape[0]}] to match the features, got {tuple(y.shape)}")
    classes = int(y.max()) + 1 if num_classes is None else num_classes
    if y.min() < 0 or y.max() >= classes:
        raise ValueError(f"labels must lie in [0, {classes}), got [{int(y.min())}, {int(y.max())}]")
    starts = range(0, len(x), chunk)
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=device)
    for start in starts:
        part = x[start : start + chunk].to(device, torch.float64)
        if not torch.isfinite(part).all():
            raise ValueError("features contain NaN or inf; fix the feature extraction before probing")
        total += part.sum(0)
    mean = total / len(x)
    squares = torch.zeros_like(total)
    for start in starts:
        squares += ((x[start : start + chunk].to(device, torch.float64) - mean) ** 2).sum(0)
    var = squares / len(x)
    std = torch.sqrt(var + 1e-6)
    normalised = torch.empty(x.shape, dtype=torch.float32, device=device)
    for start in starts:
        normalised[start : start + chunk] = (x[start : start + chunk].to(device, torch.float64) - mean) / std
    return PreparedFeatures(normalised, y.to(device), mean.float(), var.float(), classes)


def _head_from(prepared: PreparedFeatures, weight: torch.Tensor, bias: torch.Tensor) -> LinearProbeHead:
    head = LinearProbeHead(weight.shape[1], weight.shape[0]).to(weight.device)
    with torch.no_grad():
        head.norm.running_mean.copy_(prepared.mean)
        head.norm.running_var.copy_(prepared.var)
        head.linear.weight.copy_(weight)
        head.linear.bias.copy_(bias)
    return head


def train_linear_probe(
    features: Features, labels: Labels, config: LinearProbeConfig, num_classes: int | None = None
) -> LinearProbeHead:
    """Train one MAE-style head with autograd and `config.optimizer`; returns it on the compute device."""
    device = resolve_device(config.device)
    prepared = prepare_features(features, labels, device, num_classes)
    weight, bias = initial_weights(prepared.normalised.shape[1], prepared.num_classes, config.seed)
    head = _head_from(prepared, weight.to(device), bias.to(device))
    groups = [
        {"params": [head.linear.weight], "weight_decay": config.weight_decay},
        {"params": [head.linear.bias], "weight_decay": 0.0},
    ]
    if config.optimizer == "lars":
        optimizer: torch.optim.Optimizer = LARS(
            groups, lr=config.peak_lr, momentum=config.momentum, trust_coefficient=config.trust_coefficient
        )
    else:
        optimizer = torch.optim.SGD(groups, lr=config.peak_lr, momentum=config.momentum)
    for progress, batch in epoch_batches(len(prepared.labels), config, device):
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(config.peak_lr, progress, config)
        loss = F.cross_entropy(head.linear(prepared.normalised[batch]), prepared.labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return head


@dataclass
class StackedHeads:
    """H linear heads sharing one input: weight [D, H, C], bias [H, C]."""

    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, normalised: torch.Tensor) -> torch.Tensor:
        """Logits [N, H, C] for normalised features [N, D]."""
        dim, heads, classes = self.weight.shape
        flat = normalised @ self.weight.reshape(dim, heads * classes) + self.bias.reshape(-1)
        return flat.reshape(-1, heads, classes)


def train_stacked_heads(
    prepared: PreparedFeatures, base_lrs: torch.Tensor, weight_decays: torch.Tensor, config: LinearProbeConfig
) -> StackedHeads:
    """Train len(base_lrs) heads at once on the same batches (config's lr and weight decay are replaced by
    the per-head values); equals training each head alone with `train_linear_probe`."""
    device = prepared.normalised.device
    num_heads = len(base_lrs)
    peak_lrs = (base_lrs * config.batch_size / 256).to(device, torch.float32)
    decays = weight_decays.to(device, torch.float32).view(1, num_heads, 1)
    weight0, bias0 = initial_weights(prepared.normalised.shape[1], prepared.num_classes, config.seed)
    heads = StackedHeads(
        weight0.T.unsqueeze(1).repeat(1, num_heads, 1).to(device), bias0.repeat(num_heads, 1).to(device)
    )
    weight_buffer, bias_buffer = torch.zeros_like(heads.weight), torch.zeros_like(heads.bias)
    for progress, batch in epoch_batches(len(prepared.labels), config, device):
        inputs, targets = prepared.normalised[batch], prepared.labels[batch]
        logit_grad = torch.softmax(heads.logits(inputs), dim=-1)  # d(mean CE)/d(logits) = (p - onehot) / B
        logit_grad[torch.arange(len(batch), device=device), :, targets] -= 1.0
        logit_grad /= len(batch)
        weight_grad = (inputs.T @ logit_grad.reshape(len(batch), -1)).view_as(heads.weight)
        weight_update = weight_grad + decays * heads.weight
        if config.optimizer == "lars":
            ratio = trust_ratio(
                heads.weight.norm(dim=(0, 2)), weight_update.norm(dim=(0, 2)), config.trust_coefficient
            )
            weight_update *= ratio.view(1, num_heads, 1)
        weight_buffer.mul_(config.momentum).add_(weight_update)
        bias_buffer.mul_(config.momentum).add_(logit_grad.sum(0))
        lrs = scheduled_lr(peak_lrs, progress, config)
        heads.weight -= lrs.view(1, num_heads, 1) * weight_buffer
        heads.bias -= lrs.view(num_heads, 1) * bias_buffer
    return heads


@torch.no_grad()
def predict_logits(head: LinearProbeHead, features: Features, batch_size: int = 8192) -> torch.Tensor:
    """Logits [N, C] on the CPU, computed in batches on the head's device."""
    device = next(head.parameters()).device
    x = as_tensor(features)
    chunks = [
        head(x[i : i + batch_size].to(device, torch.float32)).cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(chunks)


@torch.no_grad()
def _evaluate_stacked(
    heads: StackedHeads,
    prepared: PreparedFeatures,
    features: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head top-1 (percent) and mean cross-entropy on raw features normalised with `prepared`'s stats."""
    chunk = max(1, 2**24 // heads.bias.numel())  # bounds the [chunk, H, C] logits to 16M values
    correct = torch.zeros(heads.bias.shape[0], device=heads.bias.device, dtype=torch.float64)
    loss = torch.zeros_like(correct)
    std = torch.sqrt(prepared.var.double() + 1e-6)
    for start in range(0, len(features), chunk):
        x = ((features[start : start + chunk].double() - prepared.mean.double()) / std).float()
        y = labels[start : start + chunk]
        logits = heads.logits(x)
        correct += (logits.argmax(-1) == y[:, None]).sum(0)
        log_probs = torch.log_softmax(logits, dim=-1)
        loss -= log_probs.gather(2, y.view(-1, 1, 1).expand(-1, logits.shape[1], 1)).squeeze(2).sum(0)
    return 100.0 * correct / len(features), loss / len(features)


@dataclass
class ProbeSweepConfig:
    """Grid of base learning rates x weight decays; everything else comes from `training`
    (whose own base_lr and weight_decay are replaced by the grid values)."""

    base_lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
    weight_decays: tuple[float, ...] = (0.0, 1e-4)
    holdout_fraction: float = 0.1
    training: LinearProbeConfig = field(
        default_factory=lambda: LinearProbeConfig(
            epochs=10, warmup_epochs=1, batch_size=1024, optimizer="sgd"
        )
    )

    def __post_init__(self) -> None:
        if not self.base_lrs or not self.weight_decays:
            raise ValueError("base_lrs and weight_decays must each list at least one value")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")

    def settings(self) -> list[tuple[float, float]]:
        """(base_lr, weight_decay) for every head, learning rate major."""
        return [(lr, wd) for lr in self.base_lrs for wd in self.weight_decays]


@dataclass
class SweepResult:
    """Held-out scores of every setting, the selected recipe, the head retrained with it on all of train,
    and that head's val metrics (percent)."""

    grid: list[dict[str, float]]
    selected: LinearProbeConfig
    head: LinearProbeHead
    val: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"grid": self.grid, "selected": asdict(self.selected), "val": self.val}


def sweep_linear_probe(
    train_x: Features, train_y: Labels, val_x: Features, val_y: Labels, config: ProbeSweepConfig | None = None
) -> SweepResult:
    """Train every grid setting in one pass, select on a stratified held-out part of train by top-1 (then
    lower loss, then grid order), retrain the selected setting on all of train and evaluate on val."""
    config = config or ProbeSweepConfig()
    device = resolve_device(config.training.device)
    train_labels = to_numpy(train_y).astype(np.int64)
    num_classes = int(max(train_labels.max(), to_numpy(val_y).max())) + 1
    fit_idx, holdout_idx = stratified_split(train_labels, config.holdout_fraction, config.training.seed)
    train_tensor = as_tensor(train_x)
    prepared = prepare_features(train_tensor[fit_idx], train_labels[fit_idx], device, num_classes)
    settings = config.settings()
    heads = train_stacked_heads(
        prepared,
        torch.tensor([lr for lr, _ in settings]),
        torch.tensor([wd for _, wd in settings]),
        config.training,
    )
    holdout_top1, holdout_loss = _evaluate_stacked(
        heads,
        prepared,
        train_tensor[holdout_idx].to(device, torch.float32),
        torch.as_tensor(train_labels[holdout_idx]).to(device),
    )
    grid = [
        {"base_lr": lr, "weight_decay": wd, "holdout_top1": float(top1), "holdout_loss": float(loss)}
        for (lr, wd), top1, loss in zip(settings, holdout_top1.tolist(), holdout_loss.tolist(), strict=True)
    ]
    best = min(range(len(grid)), key=lambda i: (-grid[i]["holdout_top1"], grid[i]["holdout_loss"], i))
    selected = replace(
        config.training, base_lr=grid[best]["base_lr"], weight_decay=grid[best]["weight_decay"]
    )
    head = train_linear_probe(train_tensor, train_labels, selected, num_classes)
    val = topk_accuracy(predict_logits(head, val_x), to_numpy(val_y), ks=(1, 5))
    return SweepResult(grid=grid, selected=selected, head=head, val=val)


def sklearn_logreg_probe(
    train_x: Features, train_y: Labels, val_x: Features, val_y: Labels, C: float = 1.0, max_iter: int = 1000
) -> dict[str, float]:
    """Reference probe: StandardScaler + multinomial LogisticRegression (lbfgs); val top-1/top-5 in percent
    and the solver's iteration count."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_labels = to_numpy(train_y).astype(np.int64)
    num_classes = int(max(train_labels.max(), to_numpy(val_y).max())) + 1
    missing = sorted(set(range(num_classes)) - set(train_labels.tolist()))
    if missing:
        raise ValueError(f"train labels lack classes {missing}; every class needs training samples")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    model.fit(to_numpy(train_x), train_labels)
    scores = model.decision_function(to_numpy(val_x))
    if scores.ndim == 1:  # binary problems give one margin per sample
        scores = np.stack([-scores, scores], axis=1)
    metrics = topk_accuracy(scores, to_numpy(val_y), ks=(1, 5))
    return {**metrics, "iterations": int(model[-1].n_iter_.max())}
