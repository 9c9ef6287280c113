"""The tiny-encoder zoo: a VAE, a VQGAN, a MAR and a SigLIP small enough to pretrain on a CPU in minutes, at the
"mini" or "micro" scale (`scale_preset`), pretrained here (or reloaded from their cache) and wrapped in the
encoder adapters. The mini Figure 2 probes them; Table 5 and Figure 6 plug them into a small Harmon.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from encoders.adapters.mar import MAREncoder
from encoders.adapters.pixels import PixelEncoder
from encoders.adapters.timm_generic import TimmEncoder
from encoders.adapters.vae import VAEEncoder
from encoders.adapters.vqgan import VQEncoder
from encoders.base import Encoder
from encoders.harmon_seam import EncoderTokens
from experiments.paper import TABLE5_ENCODERS
from experiments.pretrain.common import OptimConfig, Pretrained
from experiments.pretrain.data import PREPROCESS, StreamConfig
from experiments.pretrain.mar import TinyMARConfig, pretrain_mar
from experiments.pretrain.siglip import TIMM_DEFINITION, TinySigLIPConfig, pretrain_siglip
from experiments.pretrain.vae import TinyVAEConfig, pretrain_vae
from experiments.pretrain.vqgan import TinyVQConfig, pretrain_vqgan


@dataclass(frozen=True)
class MiniScale:
    """Sizes of one setting: the four pretrainings, images per class of each probe task, probe epochs and how
    many ShapesWorld shape images get Grad-CAM++ maps (`cam_per_class` per class; the first `grid_images`
    are drawn)."""

    vae: TinyVAEConfig
    vqgan: TinyVQConfig
    mar: TinyMARConfig
    siglip: TinySigLIPConfig
    fashion_per_class: int
    shapes_per_class: int
    probe_epochs: int
    cam_per_class: int
    grid_images: int = 7


def seeded(config: Any, seed: int) -> Any:
    """A pretraining config with `seed` in its data stream and its optimisation."""
    return replace(config, data=replace(config.data, seed=seed), optim=replace(config.optim, seed=seed))


def scale_preset(scale: str, seed: int = 0) -> MiniScale:
    """"mini" (the demo: the pretraining configs' defaults, about 7 minutes of pretraining on two busy cores) or
    "micro" (seconds-long steps, for tests)."""
    if scale == "mini":
        return MiniScale(vae=seeded(TinyVAEConfig(), seed), vqgan=seeded(TinyVQConfig(), seed),
                         mar=seeded(TinyMARConfig(), seed), siglip=seeded(TinySigLIPConfig(), seed),
                         fashion_per_class=100, shapes_per_class=60, probe_epochs=30, cam_per_class=7)
    if scale == "micro":
        stream = StreamConfig(shapes=160, fashion=160)
        conv = dict(block_out_channels=(4, 8, 8, 8), latent_channels=8, data=stream)
        short = OptimConfig(steps=200, batch_size=16, lr=2e-3, warmup=10)
        return MiniScale(
            vae=seeded(TinyVAEConfig(**conv, optim=replace(short, steps=120, batch_size=4, lr=3e-3)), seed),
            vqgan=seeded(TinyVQConfig(**conv, codebook_size=64, code_dim=8,
                                      optim=replace(short, steps=120, batch_size=4, lr=3e-3)), seed),
            mar=seeded(TinyMARConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, decoder_embed_dim=32,
                                     decoder_depth=1, decoder_num_heads=2, buffer_size=4, diffloss_d=1, diffloss_w=32,
                                     data=stream, optim=short), seed),
            siglip=seeded(TinySigLIPConfig(width=32, depth=1, num_heads=2, text_depth=1, data=stream, optim=short), seed),
            fashion_per_class=8, shapes_per_class=6, probe_epochs=5, cam_per_class=1, grid_images=4)
    raise ValueError(f"scale={scale!r}; use 'mini' (the demo) or 'micro' (a seconds-long test setting)")


def pretrain_encoders(scale: MiniScale, root: Path, console: Console) -> tuple[dict[str, Pretrained], dict[str, float]]:
    """Pretrain (or reload) the four tiny models; returns them by label and the seconds each call took."""
    pretrained, seconds = {}, {}
    for label, run in (("VAE", lambda: pretrain_vae(scale.vae, root, console)),
                       ("VQGAN", lambda: pretrain_vqgan(scale.vqgan, root, console)),
                       ("MAR", lambda: pretrain_mar(scale.mar, pretrained["VAE"], root, console)),
                       ("SigLIP", lambda: pretrain_siglip(scale.siglip, root, console))):
        start = time.perf_counter()
        pretrained[label] = run()
        seconds[label] = time.perf_counter() - start
        done = "trained" if pretrained[label].trained else "loaded"
        console.print(f"{label}: {done} in {seconds[label]:.1f} s ({pretrained[label].folder})")
    return pretrained, seconds


def wrap_encoders(pretrained: dict[str, Pretrained]) -> dict[str, tuple[Encoder, str]]:
    """Adapters around copies of the tiny models, plus the pixel baseline: label -> (encoder, probe features).

    The pixel baseline is probed on its 8 x 8 x 3 average-pooled image ("tokens", flattened), since its pooled
    vector would only be the mean colour.
    """
    size = PREPROCESS.image_size
    vae, vq = pretrained["VAE"].modules["vae"], pretrained["VQGAN"].modules["vq"]
    encoders = {
        "SigLIP": (TimmEncoder("tiny-siglip", copy.deepcopy(pretrained["SigLIP"].modules["image"]), TIMM_DEFINITION),
                   "pooled"),
        "VQGAN": (VQEncoder("tiny-vqgan", copy.deepcopy(vq), "prequant", False, size), "pooled"),
        "VAE": (VAEEncoder("tiny-vae", copy.deepcopy(vae), "posterior_mean", size), "pooled"),
        "MAR": (MAREncoder("tiny-mar", copy.deepcopy(pretrained["MAR"].modules["mar"]), copy.deepcopy(vae), size,
                           latent_scale=pretrained["MAR"].record["latent_scale"]), "pooled"),
        "pixels": (PixelEncoder(image_size=size, patch=8), "tokens"),
    }
    for label, (encoder, _) in encoders.items():
        if encoder.preprocess != PREPROCESS:
            raise RuntimeError(f"the {label} adapter preprocesses with {encoder.preprocess}, but the tiny models "
                               f"were pretrained on images prepared with {PREPROCESS}; make the adapter use the same")
    return encoders


def tiny_encoders(scale: str | MiniScale, root: str | os.PathLike, seed: int = 0, console: Console | None = None,
                  trainable: bool = False) -> dict[str, EncoderTokens]:
    """The four mini-Figure-2 encoders ("SigLIP", "VQGAN", "VAE", "MAR"), pretrained under `root` or reloaded from
    there; `scale` is a `scale_preset` name ("mini", "micro") or a `MiniScale`."""
    preset = scale_preset(scale, seed) if isinstance(scale, str) else scale
    pretrained, _ = pretrain_encoders(preset, Path(root), console or Console(quiet=True))
    wrapped = wrap_encoders(pretrained)
    return {label: EncoderTokens(wrapped[label][0], trainable) for label in TABLE5_ENCODERS}
