"""Typed configuration of the offline Figure 2 study, read strictly from `experiments/presets/figure2-*.yaml`.

The endpoints (which tasks are semantic, which are low-level controls, which probe decides, the interval level
and the tie margin) are part of the preset and fixed before a run; `--set` can change them, and the report
prints them as they were used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from harmon.utils.strict_yaml import ConfigError, load_typed

PRESETS = Path(__file__).resolve().parents[1] / "presets"
ENCODERS = ("VAE", "VQGAN", "MAR", "MAE", "SigLIP")  # every one gets a random-init twin; "pixels" has no weights
CLASSIFICATION = {"shape": ("single", "class"), "colour": ("single", "colour"), "same-shape": ("pair", "class"),
                  "count": ("count", "class")}
REGRESSION = {"position": ("single", ("x", "y")), "size": ("single", ("radius",))}
RECONSTRUCTION = {"pixels": "single"}
TASKS = (*CLASSIFICATION, *REGRESSION, *RECONSTRUCTION)


@dataclass
class SetSize:
    """Images of one probe set per split (the class of item i is i mod the number of classes)."""

    train: int
    val: int


@dataclass
class Pretraining:
    """The tiny models' sizes (`size`: the zoo's "mini" or "micro" architectures), steps per family, the stream
    they share (ShapesWorld images from the probe sets' distribution, never the probe images themselves) and the
    extra MAR pretraining lengths of the dose check."""

    size: Literal["mini", "micro"]
    steps: dict[str, int]
    stream_images: int
    mar_doses: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [name for name in ENCODERS if name not in self.steps]
        unknown = [name for name in self.steps if name not in ENCODERS]
        if missing or unknown:
            raise ConfigError(f"pretraining.steps: give steps for exactly {list(ENCODERS)} (missing {missing}, "
                              f"unknown {unknown})")
        if any(steps < 1 for steps in [*self.steps.values(), *self.mar_doses]):
            raise ConfigError("pretraining.steps and pretraining.mar_doses must be at least 1")


@dataclass
class Probes:
    """The same probes for every encoder: BN-linear on the pooled vector (lr x wd sweep), attentive over the
    patch tokens, ridge regression on the pooled vector, and a per-token linear pixel read-out."""

    linear_epochs: int = 30
    attentive_epochs: int = 30
    attentive_lr: float = 1e-3
    ridge_alphas: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0])


@dataclass
class Endpoints:
    """What the verdicts are about. `semantic` tasks carry the paper's claim; `controls` are low-level tasks where
    the paper's mechanism predicts VAE / VQGAN >= MAR. `probe` decides the headline verdicts (the other probe is
    reported beside). `tie_margin` (fraction of accuracy) is the band of the VAE ~ VQGAN claim."""

    semantic: list[str] = field(default_factory=lambda: ["shape", "same-shape", "count"])
    controls: list[str] = field(default_factory=lambda: ["colour", "position", "size", "pixels"])
    probe: Literal["linear", "attentive"] = "linear"
    level: float = 0.95
    tie_margin: float = 0.03
    bootstrap: int = 2000

    def __post_init__(self) -> None:
        for key in ("semantic", "controls"):
            unknown = [task for task in getattr(self, key) if task not in TASKS]
            if unknown:
                raise ConfigError(f"endpoints.{key}: unknown task(s) {unknown}; tasks are {list(TASKS)}")
        if not self.semantic:
            raise ConfigError("endpoints.semantic is empty; name at least one semantic task")
        if not 0 < self.level < 1:
            raise ConfigError(f"endpoints.level={self.level} must lie in (0, 1)")


@dataclass
class Figure2Config:
    """One offline Figure 2 study: probe-set sizes, pretraining, probes, endpoints, Grad-CAM++ images."""

    name: str
    sets: dict[str, SetSize]
    pretraining: Pretraining
    probes: Probes = field(default_factory=Probes)
    endpoints: Endpoints = field(default_factory=Endpoints)
    cam_per_class: int = 7
    grid_images: int = 7

    def __post_init__(self) -> None:
        if sorted(self.sets) != sorted(("single", "pair", "count")):
            raise ConfigError(f"sets: give exactly single, pair and count, got {sorted(self.sets)}")


def load_figure2_config(source: str | os.PathLike, overrides: Sequence[str] = ()) -> Figure2Config:
    """A preset name (`mini`, `micro`, `long`) or a YAML path, with `key.sub=value` overrides."""
    return load_typed(Figure2Config, source, PRESETS, "figure2-", overrides)
