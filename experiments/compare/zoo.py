"""The offline Figure 2's tiny encoders as `harmon compare` arms, and its single-object probe set as study data.

The models come from the Figure 2 cache ($HARMON_CACHE/figure2/pretrain, the same recipes as `harmon figure2
--preset <zoo>`, seed `seed`), so a Figure 2 run and a comparison share them; only the families asked for are
pretrained on first use, one process per chain (the VAE and the MAR that reads it share one)."""

from __future__ import annotations

import copy
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from rich.console import Console

from encoders.adapters.mar import MAREncoder
from encoders.adapters.pixels import PixelEncoder
from encoders.adapters.timm_generic import TimmEncoder
from encoders.adapters.vae import VAEEncoder
from encoders.adapters.vqgan import VQEncoder
from encoders.base import Encoder
from experiments.figure2.arms import Recipes, _chain, _seeded, recipes
from experiments.figure2.config import load_figure2_config
from experiments.figure2.data import load_split
from experiments.pretrain.data import PREPROCESS
from experiments.pretrain.mae import build_mae, pretrain_mae
from experiments.pretrain.mar import pretrain_mar
from experiments.pretrain.siglip import TIMM_DEFINITION, build_image_tower, pretrain_siglip
from experiments.pretrain.vae import build_vae, pretrain_vae
from experiments.pretrain.vqgan import build_vq, pretrain_vqgan
from harmon.mar import MAR
from probe.study import StudyData

CHAINS = {"VAE": "vae-mar", "MAR": "vae-mar", "VQGAN": "vqgan", "SigLIP": "siglip", "MAE": "mae"}


def zoo_recipe(zoo: str, seed: int) -> Recipes:
    """The pretraining recipes of figure2 preset `zoo` for `seed`, without the MAR dose arms."""
    recipe = recipes(load_figure2_config(zoo), seed)
    return Recipes(recipe.vae, recipe.vqgan, recipe.mar, recipe.mae, recipe.siglip)


def pretrain_arms(recipe: Recipes, arms: list[str], root: Path, workers: int, console: Console) -> None:
    """Pretrain (or find cached) the chains the arms need, `workers` processes at a time."""
    jobs = sorted({CHAINS[arm] for arm in arms if arm in CHAINS})
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _chain(job, recipe, str(root))
        return
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
        with console.status(f"pretraining or loading {', '.join(jobs)} (cached in {root})"):
            for future in [pool.submit(_chain, job, recipe, str(root)) for job in jobs]:
                future.result()


def zoo_encoder(recipe: Recipes, arm: str, root: Path) -> tuple[Encoder, dict | None]:
    """The adapter of one trained arm (reloaded from `root`) and its pretraining record (None for pixels)."""
    quiet, size = Console(quiet=True), PREPROCESS.image_size
    if arm == "pixels":
        return PixelEncoder(image_size=size, patch=8, cells="raw"), None
    if arm in ("VAE", "MAR"):
        vae = pretrain_vae(recipe.vae, root, quiet)
        if arm == "VAE":
            return VAEEncoder("tiny-vae", copy.deepcopy(vae.modules["vae"]), "posterior_mean", size), vae.record
        mar = pretrain_mar(recipe.mar, vae, root, quiet)
        return MAREncoder("tiny-mar", copy.deepcopy(mar.modules["mar"]), copy.deepcopy(vae.modules["vae"]), size,
                          latent_scale=mar.record["latent_scale"]), mar.record
    if arm == "VQGAN":
        vq = pretrain_vqgan(recipe.vqgan, root, quiet)
        return VQEncoder("tiny-vqgan", copy.deepcopy(vq.modules["vq"]), "prequant", False, size), vq.record
    if arm == "MAE":
        mae = pretrain_mae(recipe.mae, root, quiet)
        return MAREncoder("tiny-mae", copy.deepcopy(mae.modules["mar"]), None, size), mae.record
    siglip = pretrain_siglip(recipe.siglip, root, quiet)
    return TimmEncoder("tiny-siglip", copy.deepcopy(siglip.modules["image"]), TIMM_DEFINITION), siglip.record


def zoo_twin(recipe: Recipes, arm: str, root: Path, seed: int) -> Encoder:
    """The random-init twin of one trained arm, as the offline Figure 2 builds it: the same architecture,
    preprocessing and adapter, initialised with `seed`; MAR's twin is a random MAR on the same trained VAE."""
    size = PREPROCESS.image_size
    if arm == "VAE":
        return VAEEncoder("tiny-vae-random", _seeded(seed, lambda: build_vae(recipe.vae)), "posterior_mean", size)
    if arm == "VQGAN":
        return VQEncoder("tiny-vqgan-random", _seeded(seed, lambda: build_vq(recipe.vqgan)), "prequant", False, size)
    if arm == "MAE":
        return MAREncoder("tiny-mae-random", _seeded(seed, lambda: build_mae(recipe.mae)[0]), None, size)
    if arm == "SigLIP":
        return TimmEncoder("tiny-siglip-random", _seeded(seed, lambda: build_image_tower(recipe.siglip)),
                           TIMM_DEFINITION)
    quiet = Console(quiet=True)
    vae = pretrain_vae(recipe.vae, root, quiet)
    mar = pretrain_mar(recipe.mar, vae, root, quiet)
    architecture = mar.record["architecture"]
    twin = _seeded(seed, lambda: MAR(recipe.mar.architecture(architecture["vae_embed_dim"],
                                                             architecture["vae_stride"])))
    return MAREncoder("tiny-mar-random", twin, copy.deepcopy(vae.modules["vae"]), size,
                      latent_scale=mar.record["latent_scale"])


def shapes_data(zoo: str, root: Path) -> tuple[StudyData, list[np.ndarray]]:
    """The single-object probe set of figure2 preset `zoo` (shape classes) and the val objects' exact masks."""
    sizes = load_figure2_config(zoo).sets["single"]
    root.mkdir(parents=True, exist_ok=True)
    train, val = load_split("single", "train", sizes.train, root), load_split("single", "val", sizes.val, root)
    name = f"shapesworld-single:{train.dataset.cache_id}+{val.dataset.cache_id}"
    return StudyData(name, train.dataset, val.dataset, None, None, []), val.masks
