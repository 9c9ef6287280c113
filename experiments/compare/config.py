"""Typed configuration of `harmon compare`, read strictly from `experiments/presets/compare-*.yaml`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harmon.utils.strict_yaml import ConfigError, load_typed

PRESETS = Path(__file__).resolve().parents[1] / "presets"
ZOO = "zoo:"  # prefix of an encoder that is an arm of the offline Figure 2 (`zoo`), e.g. zoo:VAE
ZOO_ARMS = ("VAE", "VQGAN", "MAR", "MAE", "SigLIP", "pixels")
SHAPES = "shapesworld"  # data: the offline Figure 2's single-object probe set (shape classes, exact object masks)


@dataclass
class EncoderItem:
    """A registry encoder (`harmon encoders`; weights: a source or "random", options: builder arguments) or, as
    `zoo:<arm>`, an arm of the offline Figure 2 named by `CompareConfig.zoo`. pooling: None for its own."""

    name: str
    weights: str | None = None
    label: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    pooling: str | None = None

    def __post_init__(self) -> None:
        if self.name.startswith(ZOO) and self.name[len(ZOO):] not in ZOO_ARMS:
            raise ConfigError(f"encoder {self.name!r}: the zoo arms are {', '.join(ZOO + a for a in ZOO_ARMS)}")

    @property
    def title(self) -> str:
        return self.label or self.name.removeprefix(ZOO)


@dataclass
class Alignment:
    """Mutual k-NN, CKNNA, debiased and linear CKA on the val features; `reference`: a label scored against."""

    reference: str | None = None
    k: int = 10
    max_images: int = 1024
    metrics: list[str] = field(default_factory=lambda: ["mutual_knn", "cknna", "debiased_cka", "linear_cka"])


@dataclass
class Reconstruction:
    """Which encoders reconstruct (labels; None: every one with a decoder), on how many val images, LPIPS or not,
    the encoder whose pooled features the Fréchet distance uses (None: no Fréchet distance), and the Pareto plot's
    x axis."""

    encoders: list[str] | None = None
    images: int = 64
    lpips: bool = True
    fd_encoder: EncoderItem | None = None
    metric: Literal["psnr", "ssim"] = "psnr"


@dataclass
class CompareConfig:
    """One comparison. data: a probe data spec (`imagefolder:PATH`, `fashion-mnist`, `digits`) or `shapesworld`
    (the single-object probe set of the `zoo` Figure 2 preset, whose object masks score CAM localisation).
    layers: blocks probed besides the final features ("all" or indices; None: final only). twins: probe each
    encoder's random-init twin too (not pixels) and compare them, and every encoder with pixels, image by image."""

    name: str
    data: str
    encoders: list[EncoderItem]
    zoo: str | None = None  # a figure2 preset ("mini", "micro"): the arms `zoo:<arm>` and the shapesworld data
    per_class: int | None = None
    layers: str | None = None
    epochs: int = 20
    knn: bool = True
    twins: bool = True
    alignment: Alignment = field(default_factory=Alignment)
    cam_images: int = 8
    reconstruction: Reconstruction = field(default_factory=Reconstruction)
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.encoders:
            raise ConfigError("encoders is empty; give at least one --encoder")
        titles = [item.title for item in self.encoders]
        if len(set(titles)) != len(titles):
            raise ConfigError(f"encoder labels must be distinct, got {titles}; give each encoder once")
        zoo_items = [item.name for item in [*self.encoders, self.reconstruction.fd_encoder]
                     if item is not None and item.name.startswith(ZOO)]
        if (zoo_items or self.data == SHAPES) and self.zoo is None:
            raise ConfigError(f"{zoo_items or ['data: shapesworld']} need `zoo:` (a figure2 preset: mini or micro)")
        if self.alignment.reference is not None and self.alignment.reference not in titles:
            raise ConfigError(f"alignment.reference {self.alignment.reference!r} is not among the encoders {titles}")
        unknown = [label for label in self.reconstruction.encoders or [] if label not in titles]
        if unknown:
            raise ConfigError(f"reconstruction.encoders {unknown} are not among the encoders {titles}")
        if self.cam_images < 0 or self.reconstruction.images < 2:
            raise ConfigError("cam_images must be >= 0 and reconstruction.images >= 2")


def load_compare_config(source: str | os.PathLike, overrides: Sequence[str] = ()) -> CompareConfig:
    """A preset name (`micro`, `mini`, `paper`) or a YAML path, with `key.sub=value` overrides."""
    return load_typed(CompareConfig, source, PRESETS, "compare-", overrides)
