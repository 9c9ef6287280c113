"""The arms of the offline Figure 2 study: five tiny encoders pretrained with their own objectives, the random-init
twin of each (the same architecture, preprocessing and pooling with the weights it started training from), the
MAR dose arms, and raw pixels. Pretraining runs one process per encoder family chain on the CPU cores.

MAR reads the tiny VAE's latents, so its twin is a random MAR on the same trained VAE (the twin isolates what MAR
pretraining learned, not what the VAE gives); the VAE's own twin is a random VAE.
"""

from __future__ import annotations

import copy
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from encoders.adapters.mar import MAREncoder
from encoders.adapters.pixels import PixelEncoder
from encoders.adapters.timm_generic import TimmEncoder
from encoders.adapters.vae import VAEEncoder
from encoders.adapters.vqgan import VQEncoder
from encoders.base import Encoder
from experiments.figure2.config import ENCODERS, Figure2Config
from experiments.pretrain.common import Pretrained
from experiments.pretrain.data import PREPROCESS, StreamConfig
from experiments.pretrain.mae import TinyMAEConfig, build_mae, pretrain_mae
from experiments.pretrain.mar import TinyMARConfig, pretrain_mar
from experiments.pretrain.siglip import TIMM_DEFINITION, TinySigLIPConfig, build_image_tower, pretrain_siglip
from experiments.pretrain.vae import TinyVAEConfig, build_vae, pretrain_vae
from experiments.pretrain.vqgan import TinyVQConfig, build_vq, pretrain_vqgan
from experiments.pretrain.zoo import scale_preset
from harmon.mar import MAR


@dataclass(frozen=True)
class Recipes:
    """The pretraining configuration of every family for one seed; `mar_doses` are MAR configs of other lengths."""

    vae: TinyVAEConfig
    vqgan: TinyVQConfig
    mar: TinyMARConfig
    mae: TinyMAEConfig
    siglip: TinySigLIPConfig
    mar_doses: tuple[TinyMARConfig, ...] = ()


def _with(config: Any, steps: int, stream: StreamConfig, seed: int) -> Any:
    return replace(config, data=stream, optim=replace(config.optim, steps=steps, seed=seed))


def recipes(config: Figure2Config, seed: int) -> Recipes:
    """Pretraining configs of `seed`: the zoo's architectures at `pretraining.size`, the preset's steps, and one
    stream of probe-set-distributed ShapesWorld images (no Fashion-MNIST, so every machine trains on the same)."""
    p = config.pretraining
    zoo = scale_preset(p.size, seed)
    stream = StreamConfig(shapes=p.stream_images, fashion=0, seed=seed, probe_sets=True)
    mae = TinyMAEConfig(vit=zoo.mar, optim=zoo.mar.optim)  # the same ViTs and optimiser as MAR
    mar = _with(zoo.mar, p.steps["MAR"], stream, seed)
    return Recipes(
        vae=_with(zoo.vae, p.steps["VAE"], stream, seed), vqgan=_with(zoo.vqgan, p.steps["VQGAN"], stream, seed),
        mar=mar, mae=_with(mae, p.steps["MAE"], stream, seed), siglip=_with(zoo.siglip, p.steps["SigLIP"], stream, seed),
        mar_doses=tuple(replace(mar, optim=replace(mar.optim, steps=steps)) for steps in p.mar_doses))


def _chain(job: str, recipe: Recipes, root: str) -> dict[str, float]:
    """Pretrain one chain in this process (one thread); returns the seconds each family took."""
    torch.set_num_threads(1)
    console = Console(quiet=True)
    seconds = {}
    families = {"vae-mar": ("VAE", "MAR", *[f"MAR@{c.optim.steps}" for c in recipe.mar_doses]),
                "vqgan": ("VQGAN",), "siglip": ("SigLIP",), "mae": ("MAE",)}[job]
    vae = None
    for family in families:
        start = time.perf_counter()
        if family == "VAE":
            vae = pretrain_vae(recipe.vae, root, console)
        elif family == "MAR":
            pretrain_mar(recipe.mar, vae, root, console)
        elif family.startswith("MAR@"):
            dose = next(c for c in recipe.mar_doses if f"MAR@{c.optim.steps}" == family)
            pretrain_mar(dose, vae, root, console)
        elif family == "VQGAN":
            pretrain_vqgan(recipe.vqgan, root, console)
        elif family == "SigLIP":
            pretrain_siglip(recipe.siglip, root, console)
        else:
            pretrain_mae(recipe.mae, root, console)
        seconds[family] = time.perf_counter() - start
    return seconds


def pretrain_all(all_recipes: list[Recipes], root: Path, workers: int, console: Console) -> dict[str, float]:
    """Pretrain every seed's models (cached ones are reloaded in a moment), `workers` processes at a time; returns
    the summed seconds per family. The VAE and MAR (which reads the VAE) share a chain."""
    jobs = [(job, recipe) for recipe in all_recipes for job in ("vae-mar", "mae", "vqgan", "siglip")]
    totals: dict[str, float] = {}
    if workers <= 1:
        results = [_chain(job, recipe, str(root)) for job, recipe in jobs]
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_chain, job, recipe, str(root)) for job, recipe in jobs]
            with console.status(f"pretraining {len(jobs)} chains on {workers} processes"):
                results = [future.result() for future in futures]
    for seconds in results:
        for family, value in seconds.items():
            totals[family] = totals.get(family, 0.0) + value
    return totals


@dataclass
class Arm:
    """One probed representation: its label, the encoder, the arm it is the random twin of, its pretraining record,
    and the pooling its pooled vector uses (None: the adapter's default)."""

    label: str
    encoder: Encoder
    twin_of: str | None
    record: dict[str, Any] | None
    pooling: str | None = None


def _load(recipe: Recipes, root: Path) -> dict[str, Pretrained]:
    console = Console(quiet=True)
    vae = pretrain_vae(recipe.vae, root, console)
    loaded = {"VAE": vae, "VQGAN": pretrain_vqgan(recipe.vqgan, root, console),
              "MAR": pretrain_mar(recipe.mar, vae, root, console), "MAE": pretrain_mae(recipe.mae, root, console),
              "SigLIP": pretrain_siglip(recipe.siglip, root, console)}
    for dose in recipe.mar_doses:
        loaded[f"MAR@{dose.optim.steps}"] = pretrain_mar(dose, vae, root, console)
    return loaded


def _seeded(seed: int, build):
    torch.manual_seed(seed)
    return build()


def _mar_encoder(name: str, mar: MAR, vae_model, latent_scale: float) -> MAREncoder:
    return MAREncoder(name, copy.deepcopy(mar), copy.deepcopy(vae_model), PREPROCESS.image_size,
                      latent_scale=latent_scale)


def build_arms(recipe: Recipes, root: Path, seed: int) -> dict[str, Arm]:
    """Every arm of one seed, trained models reloaded from `root` (run `pretrain_all` first). Twins are built with
    the seed each model was initialised with, so a twin holds exactly the weights its model started from."""
    loaded = _load(recipe, root)
    size = PREPROCESS.image_size
    vae = loaded["VAE"].modules["vae"]
    scale = loaded["MAR"].record["latent_scale"]
    trained: dict[str, Encoder] = {
        "VAE": VAEEncoder("tiny-vae", copy.deepcopy(vae), "posterior_mean", size),
        "VQGAN": VQEncoder("tiny-vqgan", copy.deepcopy(loaded["VQGAN"].modules["vq"]), "prequant", False, size),
        "MAR": _mar_encoder("tiny-mar", loaded["MAR"].modules["mar"], vae, scale),
        "MAE": MAREncoder("tiny-mae", copy.deepcopy(loaded["MAE"].modules["mar"]), None, size),
        "SigLIP": TimmEncoder("tiny-siglip", copy.deepcopy(loaded["SigLIP"].modules["image"]), TIMM_DEFINITION),
    }
    mar_architecture = loaded["MAR"].record["architecture"]
    twins: dict[str, Encoder] = {
        "VAE": VAEEncoder("tiny-vae-random", _seeded(seed, lambda: build_vae(recipe.vae)), "posterior_mean", size),
        "VQGAN": VQEncoder("tiny-vqgan-random", _seeded(seed, lambda: build_vq(recipe.vqgan)), "prequant", False,
                           size),
        "MAR": _mar_encoder("tiny-mar-random", _seeded(seed, lambda: MAR(recipe.mar.architecture(
            mar_architecture["vae_embed_dim"], mar_architecture["vae_stride"]))), vae, scale),
        "MAE": MAREncoder("tiny-mae-random", _seeded(seed, lambda: build_mae(recipe.mae)[0]), None, size),
        "SigLIP": TimmEncoder("tiny-siglip-random", _seeded(seed, lambda: build_image_tower(recipe.siglip)),
                              TIMM_DEFINITION),
    }
    arms = {label: Arm(label, trained[label], None, loaded[label].record) for label in ENCODERS}
    arms |= {f"{label} (random)": Arm(f"{label} (random)", twins[label], label, None) for label in ENCODERS}
    for dose in recipe.mar_doses:
        label = f"MAR@{dose.optim.steps}"
        arms[label] = Arm(label, _mar_encoder(f"tiny-mar-{dose.optim.steps}", loaded[label].modules["mar"], vae,
                                              loaded[label].record["latent_scale"]), None, loaded[label].record)
    arms["pixels"] = Arm("pixels", PixelEncoder(image_size=size, patch=8, cells="raw"), None, None, pooling="mean")
    for arm in arms.values():
        if arm.encoder.preprocess != PREPROCESS:
            raise RuntimeError(f"the {arm.label} adapter preprocesses with {arm.encoder.preprocess}, but the tiny "
                               f"models were pretrained on images prepared with {PREPROCESS}")
    return arms
