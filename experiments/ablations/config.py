"""Typed configs of the Table 5 and Figure 6 ablations, read strictly from YAML presets in `experiments/presets/`.

A preset names the model (the small Harmon of `mini_model` or a paper Harmon), the data sources (the trainer's
`SourceConfig`), the optimisation shared by every run, and the evaluation sizes. Each run's `TrainConfig` is
built from it in Python (`experiments.ablations.runs`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from experiments.ablations.mini_model import SmallLLM
from experiments.evaluation.settings import DetectorGenEval, FidEval
from experiments.paper import PAPER_ENCODERS, TABLE5_COLUMNS, TABLE5_ENCODERS
from experiments.pretrain.text_llm import TextPretrain
from harmon.shapesworld import CATEGORIES
from harmon.shapesworld.questions import NEGATIVE_STRATEGIES, QUESTION_KINDS
from harmon.shapesworld.vocab import require_known
from harmon.train.config import MODULE_GROUPS, ModelConfig, SourceConfig
from harmon.utils.strict_yaml import ConfigError, load_typed

PRESETS = Path(__file__).resolve().parents[1] / "presets"
RUN_NAMES = ("und-only", "gen-only", "unified", "decoupled")
T = TypeVar("T")


@dataclass
class SmallModel:
    """The small Harmon: the tiny parts of the mini Figure 2 at scale `parts`, an `llm` (random, or pretrained
    once on ShapesWorld text by `text_pretrain` and shared by every run), MAR sampling with `diffusion_steps`
    steps of its diffusion head."""

    parts: Literal["mini", "micro"]
    llm: SmallLLM = field(default_factory=SmallLLM)
    diffusion_steps: str = "25"
    text_pretrain: TextPretrain | None = None


@dataclass
class ModelSection:
    """Exactly one of `small` (mini / micro) and `paper` (a trainer ModelConfig, e.g. harmon-0.5b from its
    released parts); `encoders` maps the Table 5 labels to registry names of the paper encoders; `layer_norm`
    normalises every plugged encoder's tokens (LayerNorm without affine parameters) before its projector."""

    image_size: int
    small: SmallModel | None = None
    paper: ModelConfig | None = None
    encoders: dict[str, str] = field(default_factory=lambda: dict(PAPER_ENCODERS))
    layer_norm: bool = False

    def __post_init__(self) -> None:
        if (self.small is None) == (self.paper is None):
            raise ConfigError("model: give exactly one of model.small (the small Harmon) and model.paper")
        if self.paper is not None and self.paper.architecture == "tiny":
            raise ConfigError("model.paper.architecture: use harmon-0.5b or harmon-1.5b (model.small is the small "
                              "Harmon)")
        missing = [label for label in TABLE5_ENCODERS if label not in self.encoders]
        if missing:
            raise ConfigError(f"model.encoders lacks {missing}; map each of {list(TABLE5_ENCODERS)} to an encoder")


@dataclass
class DataSection:
    """Training data: sources feed the i2t and t2i tasks; `batch_size` rows per iteration."""

    sources: list[SourceConfig]
    batch_size: int
    max_length: int = 64
    caption_drop: float = 0.1
    num_workers: int = 0


@dataclass
class TrainingSection:
    """Optimisation shared by every run. `steps` counts iterations of each task (a run mixing two tasks runs
    twice as many iterations); `save_every` also counts iterations of each task."""

    steps: int
    lr: dict[str, float]
    trainable: list[str]
    save_every: int
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.02
    warmup_ratio: float = 0.01
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    grad_scale: float | None = 0.1
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    distributed: Literal["ddp", "fsdp"] = "ddp"
    deterministic: bool = False
    log_every: int = 10
    seeds: list[int] = field(default_factory=lambda: [0])

    def __post_init__(self) -> None:
        if self.steps < 1 or self.save_every < 1 or not self.seeds:
            raise ConfigError("training.steps and training.save_every must be >= 1 and training.seeds non-empty")
        unknown = [g for g in [*self.trainable, *self.lr] if g not in MODULE_GROUPS]
        if unknown:
            raise ConfigError(f"training: unknown module groups {unknown}; use {', '.join(MODULE_GROUPS)}")


@dataclass
class QAEval:
    """Held-out ShapesWorld QA: `items` balanced over `kinds` (default all), drawn from `seed`; existence
    questions take their "no" answers from the `negatives` strategies in turn (default all)."""

    items: int = 200
    seed: int = 999
    kinds: list[str] = field(default_factory=lambda: list(QUESTION_KINDS))
    negatives: list[str] = field(default_factory=lambda: list(NEGATIVE_STRATEGIES))
    batch_size: int = 50
    max_new_tokens: int = 4

    def __post_init__(self) -> None:
        for key, names, known in (("kinds", self.kinds, QUESTION_KINDS),
                                  ("negatives", self.negatives, NEGATIVE_STRATEGIES)):
            unknown = [n for n in names if n not in known]
            if unknown or not names:
                raise ConfigError(f"shapesworld.{key}: unknown or no entries {unknown}; choose from {list(known)}")


@dataclass
class Table5Endpoints:
    """What the Table 5 verdicts are about, fixed before a run. `primary` question kinds make the primary score
    (accuracy over their items), `control` kinds a control score; intervals at `level` (paired bootstrap with
    `bootstrap` resamples per seed, Student-t over seeds); a run whose share of "yes" answers to the existence
    questions lies outside `yes_ratio` has not left the answer prior and is flagged; `tie_margin` (points) is the
    band of MAR ≈ SigLIP."""

    primary: list[str] = field(default_factory=lambda: ["existence", "shape", "count"])
    control: list[str] = field(default_factory=lambda: ["color"])
    level: float = 0.95
    bootstrap: int = 2000
    yes_ratio: tuple[float, float] = (0.1, 0.9)
    tie_margin: float = 5.0

    def __post_init__(self) -> None:
        for key in ("primary", "control"):
            unknown = [k for k in getattr(self, key) if k not in QUESTION_KINDS]
            if unknown:
                raise ConfigError(f"endpoints.{key}: unknown question kind(s) {unknown}; kinds are "
                                  f"{list(QUESTION_KINDS)}")
        if not self.primary:
            raise ConfigError("endpoints.primary is empty; name at least one question kind")
        if not 0 < self.level < 1:
            raise ConfigError(f"endpoints.level={self.level} must lie in (0, 1)")
        if self.bootstrap < 1 or not 0 <= self.yes_ratio[0] < self.yes_ratio[1] <= 1 or self.tie_margin < 0:
            raise ConfigError("endpoints: bootstrap must be >= 1, yes_ratio a range low < high within [0, 1] and "
                              "tie_margin >= 0")


@dataclass
class Figure6Endpoints:
    """What the Figure 6 verdicts are about: paired intervals at `level` (bootstrap over the shared prompts /
    questions with `bootstrap` resamples per seed, Student-t over seeds); `tolerance` (fraction) is how far
    unified may fall below und-only on understanding and still count as keeping it."""

    level: float = 0.95
    bootstrap: int = 2000
    tolerance: float = 0.02

    def __post_init__(self) -> None:
        if not 0 < self.level < 1 or self.bootstrap < 1 or self.tolerance < 0:
            raise ConfigError("endpoints: level must lie in (0, 1), bootstrap be >= 1 and tolerance >= 0")


@dataclass
class GenerationEval:
    """ShapesWorld GenEval-style generation: `per_category` prompts of each of `categories` (prompt seed
    `seed`), sampled with `steps` MAR steps at guidance `cfg` (batch b seeded with `sample_seed + b`)."""

    per_category: int = 4
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES))
    seed: int = 0
    sample_seed: int = 0
    steps: int = 16
    cfg: float = 3.0
    temperature: float = 1.0
    batch_size: int = 24
    geneval: DetectorGenEval = field(default_factory=DetectorGenEval)
    fid: FidEval = field(default_factory=FidEval)

    def __post_init__(self) -> None:
        require_known("generation category", self.categories, CATEGORIES)


@dataclass
class BenchmarkEval:
    """Public benchmarks (paths given on the command line): at most `limit` items each (None: all)."""

    limit: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 16


@dataclass
class LmmsColumn:
    """One Table 5 column from lmms-eval: its `task`, the `metric` read from its results JSON, and `scale`, the
    factor to the paper's scale (x 100 for a fraction)."""

    task: str
    metric: str
    scale: float = 1.0


@dataclass
class LmmsEvalSection:
    """The Table 5 columns lmms-eval scores on every run folder (`columns`: paper column -> task and metric),
    `batch_size` questions per batch, `processes` GPUs (`accelerate launch`), at most `limit` documents per task
    (None: all), extra task folders (`include_path`) and the weights' `dtype`."""

    columns: dict[str, LmmsColumn]
    batch_size: int = 16
    processes: int = 1
    limit: int | None = None
    include_path: list[str] = field(default_factory=list)
    dtype: Literal["bf16", "fp32", "fp16"] = "bf16"

    def __post_init__(self) -> None:
        unknown = [c for c in self.columns if c not in TABLE5_COLUMNS[1:]]
        if unknown or not self.columns:
            raise ConfigError(f"lmms_eval.columns: unknown or no columns {unknown}; use the paper's "
                              f"{list(TABLE5_COLUMNS[1:])}")
        if self.batch_size < 1 or self.processes < 1 or (self.limit is not None and self.limit < 1):
            raise ConfigError("lmms_eval: batch_size, processes and limit (when given) must be >= 1")


@dataclass
class Table5Config:
    """Understanding-only training (ratio 0:1:0) with each encoder plugged, frozen, for understanding; `blind`
    names the encoder whose token shape a blind run (image tokens zeroed) copies (None: no blind run); paper presets
    may score the runs with lmms-eval (`lmms_eval`) beside the file-based benchmarks."""

    name: str
    model: ModelSection
    data: DataSection
    training: TrainingSection
    encoders: list[str] = field(default_factory=lambda: list(TABLE5_ENCODERS))
    shapesworld: QAEval | None = None
    benchmarks: BenchmarkEval | None = None
    lmms_eval: LmmsEvalSection | None = None
    blind: str | None = None
    endpoints: Table5Endpoints = field(default_factory=Table5Endpoints)
    close: float = 5.0
    margin: float = 10.0

    def __post_init__(self) -> None:
        unknown = [e for e in self.encoders if e not in self.model.encoders]
        if unknown:
            raise ConfigError(f"encoders: {unknown} are not in model.encoders ({list(self.model.encoders)})")
        if (self.shapesworld is None) == (self.benchmarks is None):
            raise ConfigError("give exactly one of shapesworld (small presets) and benchmarks (paper presets)")
        if self.lmms_eval is not None and self.benchmarks is None:
            raise ConfigError("lmms_eval scores the public benchmarks: give it with benchmarks (paper presets)")
        if self.blind is not None and self.blind not in self.model.encoders:
            raise ConfigError(f"blind: {self.blind!r} (the encoder whose token shape the blind run copies) is not "
                              f"in model.encoders ({list(self.model.encoders)})")
        if self.shapesworld is not None:
            asked = self.shapesworld.kinds
            for key in ("primary", "control"):
                missing = [k for k in getattr(self.endpoints, key) if k not in asked]
                if missing:
                    raise ConfigError(f"endpoints.{key}: {missing} are not asked (shapesworld.kinds is {asked})")


@dataclass
class Figure6Config:
    """Und-only, gen-only, unified (shared MAR) and decoupled (plugged `decoupled_encoder`, trainable) runs,
    evaluated every `eval_every` iterations of each task."""

    name: str
    model: ModelSection
    data: DataSection
    training: TrainingSection
    eval_every: int
    generation: GenerationEval
    runs: list[Literal["und-only", "gen-only", "unified", "decoupled"]] = field(
        default_factory=lambda: list(RUN_NAMES))
    decoupled_encoder: str = "SigLIP"
    shapesworld: QAEval | None = None
    benchmarks: BenchmarkEval | None = None
    endpoints: Figure6Endpoints = field(default_factory=Figure6Endpoints)
    last: int = 1

    def __post_init__(self) -> None:
        if self.eval_every < 1 or self.eval_every % self.training.save_every:
            raise ConfigError(f"eval_every ({self.eval_every}) must be a positive multiple of training.save_every "
                              f"({self.training.save_every}), so every evaluation has a checkpoint")
        if (self.shapesworld is None) == (self.benchmarks is None):
            raise ConfigError("give exactly one of shapesworld (small presets) and benchmarks (paper presets)")
        if self.decoupled_encoder not in self.model.encoders:
            raise ConfigError(f"decoupled_encoder {self.decoupled_encoder!r} is not in model.encoders")
        if "decoupled" in self.runs and "understanding" not in self.training.lr:
            raise ConfigError("the decoupled run trains its plugged encoder: give training.lr.understanding")
        lr = self.training.lr
        if "decoupled" in self.runs and "mar_encoder" in self.training.trainable and \
                lr["understanding"] != lr.get("mar_encoder"):
            raise ConfigError(f"training.lr.understanding ({lr['understanding']:g}, the decoupled encoder's rate) must "
                              f"equal training.lr.mar_encoder ({lr.get('mar_encoder')}, the shared encoder's rate)")
        if self.last < 1:
            raise ConfigError(f"last={self.last}: average at least the final evaluation")


def load_ablation(cls: type[T], kind: str, preset: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()
                  ) -> T:
    """A `Table5Config` / `Figure6Config` from a preset name (`experiments/presets/<kind>-<preset>.yaml`) or a
    YAML path, with `key.sub=value` overrides."""
    return load_typed(cls, preset, PRESETS, prefix=f"{kind}-", overrides=overrides)
