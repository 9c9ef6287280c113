"""One ablation run: its TrainConfig built from the ablation config, and training that reuses or resumes.

A run folder holds what the trainer writes plus `start.json`, the digest of the weights the run started from; a
folder made with another config or started from other weights (another encoder cache) is refused. A finished run (final
weights and every evaluation present) is reused without training; an unfinished one resumes from its latest
checkpoint. Evaluations are read back from `evaluations.jsonl`, the last line per iteration winning.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from safetensors.torch import load_file as load_safetensors

from experiments.ablations.config import DataSection, TrainingSection
from experiments.ablations.evaluate import evaluating
from harmon.model import Harmon
from harmon.train.batch import TASKS
from harmon.train.config import (
    RESUMABLE_CHANGES,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    config_dict,
)
from harmon.train.run_checkpoints import latest_checkpoint
from harmon.train.trainer import Trainer
from harmon.utils.files import tensor_digest, write_json
from harmon.utils.strict_yaml import ConfigError, diff

Evaluate = Callable[[Harmon, int], Mapping[str, float]]


@dataclass(frozen=True)
class RunSpec:
    """One run: its name, seed, data ratio (text : i2t : t2i), module groups and iterations per task."""

    name: str
    seed: int
    ratio: tuple[int, int, int]
    trainable: tuple[str, ...]
    task_steps: int

    @property
    def tasks_per_cycle(self) -> int:
        """Iterations per iteration of each task (1 for one task, 2 when i2t and t2i alternate)."""
        return sum(self.ratio)

    @property
    def steps(self) -> int:
        return self.task_steps * self.tasks_per_cycle


@dataclass
class RunOutcome:
    """A finished run: its folder, evaluations by iteration, whether it was reused, and its training seconds."""

    run_dir: Path
    evaluations: dict[int, dict[str, Any]]
    reused: bool
    seconds: float


def train_config(spec: RunSpec, model: ModelConfig, data: DataSection, training: TrainingSection,
                 image_size: int, out_dir: Path, name: str) -> TrainConfig:
    """The TrainConfig of a run: sources of its tasks only, learning rates of its module groups."""
    served = {task for task, count in zip(TASKS, spec.ratio, strict=True) if count}
    missing = [g for g in spec.trainable if g not in training.lr]
    if missing:
        raise ConfigError(f"training.lr has no learning rate for the trained module groups {missing}")
    save_every = min(training.save_every * spec.tasks_per_cycle, spec.steps)
    return TrainConfig(
        name=name, model=model,
        data=DataConfig(sources=[s for s in data.sources if s.task in served], ratio=spec.ratio,
                        batch_size=data.batch_size, image_size=image_size, max_length=data.max_length,
                        caption_drop=data.caption_drop, num_workers=data.num_workers),
        optim=OptimConfig(lr={g: training.lr[g] for g in spec.trainable}, betas=training.betas,
                          weight_decay=training.weight_decay, warmup_ratio=training.warmup_ratio,
                          min_lr_ratio=training.min_lr_ratio, grad_clip=training.grad_clip),
        trainable=list(spec.trainable), steps=spec.steps, grad_scale=training.grad_scale,
        mixed_precision=training.mixed_precision, distributed=training.distributed, seed=spec.seed,
        deterministic=training.deterministic, out_dir=str(out_dir), save_every=save_every,
        keep_last=2, log_every=training.log_every)


def require_sources(data: DataSection, tasks: set[str]) -> None:
    """Refuse, before any model is built, data sources of `tasks` whose files are missing."""
    for index, source in enumerate(data.sources):
        if source.task not in tasks or source.format == "shapesworld":
            continue
        for key in ("path", "image_root", "caption_root"):
            value = getattr(source, key)
            if value is not None and not Path(value).exists():
                raise ConfigError(f"data.sources[{index}].{key} = {value} does not exist; point the preset's data "
                                  "sources at your copies (pass an edited copy of the preset as --preset FILE.yaml)")


def evaluation_points(steps: int, every: int) -> list[int]:
    """Iterations evaluated by the trainer's hook: every `every` and the last."""
    return sorted({*range(every, steps + 1, every), steps})


def read_evaluations(run_dir: Path) -> dict[int, dict[str, Any]]:
    path = run_dir / "evaluations.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {int(row["iteration"]): row for row in rows}


def _check_start(run_dir: Path, config: TrainConfig, digest: str) -> None:
    """Refuse a run folder made with another config or started from other weights; record the digest."""
    saved_config = run_dir / "config.yaml"
    if saved_config.is_file():
        differing = [k for k in diff(yaml.safe_load(saved_config.read_text()), config_dict(config))
                     if k not in RESUMABLE_CHANGES]
        if differing:
            raise ConfigError(f"run folder {run_dir} was made with another config (differing: {', '.join(differing)})"
                              "; use another --out or delete the folder")
    path = run_dir / "start.json"
    if path.is_file():
        saved = json.loads(path.read_text())["weights_digest"]
        if saved != digest:
            raise ConfigError(f"run folder {run_dir} was started from other weights (digest {saved}, now {digest}: "
                              "another encoder cache or model); use another --out or delete the folder")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, {"weights_digest": digest})


def _evaluate_checkpoint(run_dir: Path, model: Harmon, evaluate: Evaluate, iteration: int) -> None:
    """Evaluate the checkpoint of `iteration` (an evaluation a stopped run did not finish) into evaluations.jsonl."""
    checkpoint = latest_checkpoint(run_dir)
    model.load_state_dict(load_safetensors(str(checkpoint / "model.safetensors")), strict=False)
    with torch.no_grad(), torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))), evaluating(model):
        row = {"iteration": float(iteration), **evaluate(model, iteration)}
    with (run_dir / "evaluations.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


def train_or_reuse(config: TrainConfig, build: Callable[[], Harmon], evaluate: Evaluate, eval_every: int,
                   console: Console, progress: bool = True) -> RunOutcome:
    """Train the run of `config` (the model from `build()`), or reuse / resume what its folder holds."""
    run_dir = Path(config.out_dir)
    model = build()
    _check_start(run_dir, config, tensor_digest(model.state_dict()))
    points = evaluation_points(config.steps, eval_every)
    checkpoint = latest_checkpoint(run_dir)
    at = int(checkpoint.name.removeprefix("iter_")) if checkpoint is not None else 0
    if at in points and at not in read_evaluations(run_dir):
        _evaluate_checkpoint(run_dir, model, evaluate, at)
    summary_path = run_dir / "summary.json"
    finished = at == config.steps and (run_dir / "final" / "model.safetensors").is_file() and summary_path.is_file()
    if finished and set(points) <= set(read_evaluations(run_dir)):
        console.print(f"{config.name}: reusing the finished run in {run_dir}")
        seconds = float(json.loads(summary_path.read_text())["seconds"])
        return RunOutcome(run_dir, read_evaluations(run_dir), True, seconds)
    start = time.perf_counter()
    Trainer(config, model=model, console=console, progress=progress).fit(resume=True, evaluate=evaluate,
                                                                          eval_every=eval_every)
    evaluations = {k: v for k, v in read_evaluations(run_dir).items() if k <= config.steps}
    return RunOutcome(run_dir, evaluations, False, time.perf_counter() - start)
