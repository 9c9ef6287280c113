"""The training recipe as typed dataclasses; YAML presets (paper Table 1 and the tiny smoke runs) in `presets/`.

Units follow the released training code: an *iteration* is one micro-batch of one task (`data.batch_size` rows
summed over processes); `data.ratio` (text : image-to-text : text-to-image) sets how many iterations of each task a
cycle holds; the optimiser steps once per `accumulate` iterations (Table 1's batch size and steps read as one
update per iteration, `accumulate: 1`; the released fine-tuning example instead steps once per cycle,
`accumulate` = sum of the ratio). `steps` counts iterations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from harmon.shapesworld import ShapesWorldConfig
from harmon.train.batch import TASKS
from harmon.utils.strict_yaml import ConfigError, load_typed, to_dict
from harmon.utils.strict_yaml import list_presets as presets_in

PRESETS = Path(__file__).parent / "presets"
MODULE_GROUPS = ("llm", "mar_encoder", "mar_decoder", "proj_in", "proj_out", "understanding")
SOURCE_FORMATS = ("t2i-json", "conversations", "text", "shapesworld")


@dataclass
class ModelConfig:
    """Which Harmon to train and where its starting weights come from.

    `architecture`: "harmon-0.5b" (Qwen2.5-0.5B + MAR-B), "harmon-1.5b" (Qwen2.5-1.5B + MAR-H) or "tiny" (random,
    offline). `init`: a Harmon checkpoint (name, official .pth, or a .safetensors written by this trainer) to start
    from; without it the parts come from `llm` (Qwen2.5-Instruct hub id or folder) and `mar` (MAR checkpoint) with
    fresh projectors, as stage I begins. `mar_dropout` overrides MAR's attention/projection dropout.
    """

    architecture: Literal["harmon-0.5b", "harmon-1.5b", "tiny"] = "tiny"
    init: str | None = None
    llm: str | None = None
    mar: str | None = None
    vae: str = "kl16"
    grad_checkpointing: bool = False
    mar_dropout: float | None = None


@dataclass
class SourceConfig:
    """One data source feeding one task.

    Formats: "t2i-json" (JSON list / JSONL / folder of *.json with image + caption, or the official
    data_info.json + annotation files), "conversations" (LLaVA-style JSON), "text" ({"text"} or conversations
    without image), "shapesworld" (procedural scenes: captions for t2i, questions for i2t; `length` scenes per
    epoch from `seed`).
    """

    task: Literal["text", "i2t", "t2i"]
    format: Literal["t2i-json", "conversations", "text", "shapesworld"]
    path: str | None = None
    image_root: str | None = None
    caption_root: str | None = None
    caption_key: str = "caption"
    shapesworld: ShapesWorldConfig = field(default_factory=ShapesWorldConfig)
    length: int = 10_000
    seed: int = 0
    question_kinds: list[str] | None = None

    def __post_init__(self) -> None:
        if self.format != "shapesworld" and not self.path:
            raise ConfigError(f"data source ({self.task}, {self.format}) needs a path")
        if self.format == "shapesworld" and self.task == "text":
            raise ConfigError("a shapesworld source serves the i2t or t2i task, not text")


@dataclass
class DataConfig:
    """Sources and how they are mixed: `ratio` = iterations of text : i2t : t2i per cycle."""

    sources: list[SourceConfig]
    ratio: tuple[int, int, int]
    batch_size: int
    image_size: int
    max_length: int = 512
    caption_drop: float = 0.1
    num_workers: int = 0

    def __post_init__(self) -> None:
        if any(r < 0 for r in self.ratio):
            raise ConfigError(f"data.ratio {list(self.ratio)} has a negative entry; use counts >= 0")
        if sum(self.ratio) == 0:
            raise ConfigError("data.ratio sums to zero; give at least one task (text : i2t : t2i) a count > 0")
        served = {s.task for s in self.sources}
        for task, count in zip(TASKS, self.ratio, strict=True):
            if count and task not in served:
                raise ConfigError(f"data.ratio gives the {task} task {count} iterations per cycle but no "
                                  f"data.sources entry has task: {task}")
        if self.batch_size < 1 or self.image_size % 16:
            raise ConfigError(f"data.batch_size ({self.batch_size}) must be >= 1 and data.image_size "
                              f"({self.image_size}) a multiple of 16")
        if not 0 <= self.caption_drop < 1:
            raise ConfigError(f"data.caption_drop={self.caption_drop} must be in [0, 1)")


@dataclass
class OptimConfig:
    """AdamW with per-module learning rates, linear warm-up (from `warmup_start` x lr) and cosine decay to
    `min_lr_ratio` x lr, over optimiser updates. No weight decay on 1-D tensors, biases and the diffusion MLP."""

    lr: dict[str, float]
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.02
    warmup_ratio: float = 0.01
    warmup_start: float = 1e-5
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        for name, value in self.lr.items():
            if name not in MODULE_GROUPS:
                raise ConfigError(f"optim.lr.{name}: unknown module group; use {', '.join(MODULE_GROUPS)}")
            if value < 0:
                raise ConfigError(f"optim.lr.{name}={value} must be >= 0")


@dataclass
class TrainConfig:
    """A training stage: model, data, optimiser, which module groups train, and the run's bookkeeping."""

    name: str
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    trainable: list[str]
    steps: int
    accumulate: int = 1
    loss_weights: dict[str, float] = field(default_factory=lambda: {t: 1.0 for t in TASKS})
    grad_scale: float | None = 0.1
    ema_decay: float | None = None
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    distributed: Literal["ddp", "fsdp"] = "ddp"
    seed: int = 0
    deterministic: bool = False
    out_dir: str = "runs/train"
    save_every: int = 1000
    keep_last: int = 2
    log_every: int = 10

    def __post_init__(self) -> None:
        for name in self.trainable:
            if name not in MODULE_GROUPS:
                raise ConfigError(f"trainable: unknown module group {name!r}; use {', '.join(MODULE_GROUPS)}")
            if name not in self.optim.lr:
                raise ConfigError(f"trainable lists {name!r} but optim.lr has no learning rate for it")
        for task in self.loss_weights:
            if task not in TASKS:
                raise ConfigError(f"loss_weights.{task}: unknown task; use {', '.join(TASKS)}")
        if self.steps < 1 or self.save_every < 1 or self.keep_last < 1 or self.log_every < 1:
            raise ConfigError("steps, save_every, keep_last and log_every must all be >= 1")
        if self.accumulate < 1:
            raise ConfigError(f"accumulate={self.accumulate} must be >= 1")
        if self.save_every % self.accumulate or self.steps % self.accumulate:
            raise ConfigError(f"steps ({self.steps}) and save_every ({self.save_every}) must be multiples of "
                              f"accumulate ({self.accumulate}), so checkpoints fall between optimiser updates")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay={self.ema_decay} must be in (0, 1) or null")

    @property
    def total_updates(self) -> int:
        return self.steps // self.accumulate


# Keys that may change when a run is resumed (bookkeeping only, they do not change the trained weights).
RESUMABLE_CHANGES = ("out_dir", "save_every", "keep_last", "log_every", "data.num_workers")


def load_config(source: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A TrainConfig from a preset name (`harmon-0.5b-stage1`, ...) or a YAML path, with `key.sub=value` overrides."""
    return load_typed(TrainConfig, source, PRESETS, overrides=overrides)


def list_presets() -> list[str]:
    return presets_in(PRESETS)


def config_dict(config: TrainConfig) -> dict[str, Any]:
    return to_dict(config)


def with_changes(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy with top-level fields replaced (validated again)."""
    return replace(config, **changes)
