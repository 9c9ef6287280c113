"""What the four pretrainings share: the optimisation loop with a progress bar and loss curve, and saving the
result under a hash of its configuration so that the same configuration is loaded instead of trained again."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from harmon.checkpoints import load_file, save_safetensors
from harmon.utils.files import short_hash, tensor_digest, write_json
from harmon.utils.schedules import warmup_cosine

FORMAT_VERSION = 1


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to zero; gradients clipped to `clip` (L2 norm)."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    warmup: int = 20
    clip: float = 1.0
    seed: int = 0


@dataclass
class Pretrained:
    """A trained (or reloaded) model: its modules, the JSON record saved beside the weights, whether it was
    trained in this call, and the folder it lives in."""

    modules: dict[str, nn.Module]
    record: dict[str, Any]
    trained: bool
    folder: Path


def config_hash(parts: Mapping[str, Any]) -> str:
    """Short hash of a JSON-serialisable configuration."""
    text = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return short_hash(text)


def run_folder(root: str | os.PathLike, family: str, key: str) -> Path:
    return Path(root) / f"{family}-{key}"


def weights_digest(modules: Mapping[str, nn.Module]) -> str:
    """Hash of every parameter and buffer of `modules`."""
    return tensor_digest({f"{prefix}.{name}": tensor for prefix, module in modules.items()
                          for name, tensor in module.state_dict().items()})


def load_saved(folder: Path, key: str, modules: Mapping[str, nn.Module]) -> dict[str, Any] | None:
    """Load saved weights into `modules` when `folder` holds a finished run of configuration `key`; else None."""
    record_path, weights_path = folder / "record.json", folder / "model.safetensors"
    if not (record_path.exists() and weights_path.exists()):
        return None
    record = json.loads(record_path.read_text())
    if record.get("config_hash") != key:
        raise RuntimeError(f"{record_path} records configuration {record.get('config_hash')}, not {key}; "
                           f"delete {folder} and rerun to train it again")
    state = load_file(weights_path)
    for prefix, module in modules.items():
        part = {name[len(prefix) + 1 :]: value for name, value in state.items() if name.startswith(f"{prefix}.")}
        module.load_state_dict(part, strict=True)
    if weights_digest(modules) != record["weights_digest"]:
        raise RuntimeError(f"{weights_path} does not match the digest in {record_path}; delete {folder} and rerun")
    return record


def save_run(folder: Path, modules: Mapping[str, nn.Module], record: dict[str, Any]) -> dict[str, Any]:
    """Write `model.safetensors` (module name prefixes) then `record.json`, both atomically; returns the record."""
    state = {f"{prefix}.{name}": value.detach().cpu()
             for prefix, module in modules.items() for name, value in module.state_dict().items()}
    save_safetensors(state, folder / "model.safetensors", metadata={"config_hash": record["config_hash"]})
    record = {**record, "weights_digest": weights_digest(modules)}
    write_json(folder / "record.json", record)
    return record


def saved_record(family: str, config: Mapping[str, Any], root: str | os.PathLike) -> dict[str, Any] | None:
    """The record of a finished run of `config` under `root`, or None."""
    path = run_folder(root, family, config_hash({"family": family, "config": config})) / "record.json"
    return json.loads(path.read_text()) if path.exists() else None


def reuse_or_train(family: str, config: Mapping[str, Any], modules: dict[str, nn.Module], root: str | os.PathLike,
                   fit: Callable[[], dict[str, Any]]) -> Pretrained:
    """Load `modules` from `root` when `config` was trained before; else run `fit()` (which trains `modules` in
    place and returns the fields of the record) and save the result."""
    key = config_hash({"family": family, "config": config})
    folder = run_folder(root, family, key)
    record = load_saved(folder, key, modules)
    trained = record is None
    if trained:
        for module in modules.values():
            module.train()
        record = save_run(folder, modules, {"family": family, "config_hash": key, **fit()})
    for module in modules.values():
        module.eval()
    return Pretrained(modules, record, trained, folder)


def train(
    parameters: Iterable[nn.Parameter],
    step_fn: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    batches: Iterable[torch.Tensor],
    config: OptimConfig,
    title: str,
    console: Console | None = None,
) -> tuple[dict[str, list[float]], float]:
    """Minimise `step_fn(batch)["loss"]` over `batches`; returns the per-step value of every returned term
    (the loss curve) and the seconds spent."""
    params = [p for p in parameters if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
    curves: dict[str, list[float]] = {}
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(title, total=config.steps)
        for step, batch in enumerate(batches):
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(step, config.steps, config.warmup, peak=config.lr, start=config.lr / max(1, config.warmup))
            terms = step_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, config.clip)
            optimizer.step()
            for name, value in terms.items():
                curves.setdefault(name, []).append(float(value.detach()))
            recent = curves["loss"][-20:]
            bar.update(task, advance=1, description=f"{title} (loss {sum(recent) / len(recent):.4f})")
    return curves, time.perf_counter() - start


def summary(curves: Mapping[str, list[float]], window: int = 20) -> dict[str, dict[str, float]]:
    """Mean of every term over the first and the last `window` steps."""
    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    return {name: {"first": mean(values[:window]), "final": mean(values[-window:])} for name, values in curves.items()}
