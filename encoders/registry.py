"""One table of encoders by name, with aliases; `create_encoder` builds them.

The table is plain data: each entry names its builder as "module:function" (imported on first use, so reading the
table imports no adapter) and the default weights that builder is given when the caller passes none.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any

import torch

from encoders.base import Encoder
from harmon.checkpoints import KNOWN_FILES

_TAMING = "https://heibox.uni-heidelberg.de/d/a7530b09fed84f80a887/files/?p=%2F{}&dl=1"


@dataclass(frozen=True)
class EncoderEntry:
    """An encoder: `builder(weights=..., **options) -> Encoder`, called with `weights` (a known checkpoint name,
    hf:// path, URL, hub repo or None for none) unless the caller gives its own; `note` says what else it loads."""

    name: str
    family: str  # "pixels", "vae", "vqgan", "siglip", "mar", "timm", "dinov2", "mae", "rae"
    builder: str  # "module:function"
    weights: str | None
    note: str = ""
    aliases: tuple[str, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()  # builder keyword arguments of this entry (e.g. a timm model name)

    @property
    def source(self) -> str:
        """Where the default weights come from, in words."""
        where = KNOWN_FILES.get(self.weights, self.weights) if self.weights else ""
        return " ".join(part for part in (where, self.note) if part)

    def build(self, weights: str | None = None, **options) -> Encoder:
        module, function = self.builder.split(":")
        build = getattr(importlib.import_module(module), function)
        return build(weights=self.weights if weights is None else weights, **{**dict(self.options), **options})


_A = "encoders.adapters."
ENTRIES: tuple[EncoderEntry, ...] = (
    EncoderEntry("harmon-0.5b-mar", "mar", _A + "harmon_mar:build_harmon_05b", "harmon-0.5b", "(mar.*, proj_in.*) + KL-16"),
    EncoderEntry("harmon-1.5b-mar", "mar", _A + "harmon_mar:build_harmon_15b", "harmon-1.5b", "(mar.*, proj_in.*) + KL-16"),
    EncoderEntry("mar-b", "mar", _A + "mar:build_mar_b", "mar-base", f"(model_ema) + KL-16 {KNOWN_FILES['kl16']}",
                 aliases=("mar",)),
    EncoderEntry("mar-l", "mar", _A + "mar:build_mar_l", "mar-large", f"(model_ema) + KL-16 {KNOWN_FILES['kl16']}"),
    EncoderEntry("mar-h", "mar", _A + "mar:build_mar_h", "mar-huge", f"(model_ema) + KL-16 {KNOWN_FILES['kl16']}"),
    EncoderEntry("pixels", "pixels", _A + "pixels:build_pixels", None, "no weights: resized raw pixels",
                 aliases=("raw",)),
    EncoderEntry("siglip-b16", "siglip", _A + "siglip:build_siglip_b16",
                 "hf://timm/vit_base_patch16_siglip_256.webli/model.safetensors", aliases=("siglip",)),
    EncoderEntry("siglip-l16", "siglip", _A + "siglip:build_siglip_l16",
                 "hf://timm/vit_large_patch16_siglip_256.webli/model.safetensors"),
    EncoderEntry("timm", "timm", _A + "timm_generic:build_timm", None,
                 "timm hub weights of model_name (its pretrained cfg's hf_hub_id), e.g. timm:vit_small_patch16_224.dino"),
    EncoderEntry("vae-kl16", "vae", _A + "vae:build_vae_kl16", "kl16", "(MAR/Harmon KL-16, key 'model')",
                 aliases=("vae", "kl16")),
    EncoderEntry("vae-sd-ema", "vae", _A + "vae:build_vae_sd_ema", "stabilityai/sd-vae-ft-ema", "(diffusers hub repo)"),
    EncoderEntry("vae-sd-mse", "vae", _A + "vae:build_vae_sd_mse", "stabilityai/sd-vae-ft-mse", "(diffusers hub repo)"),
    EncoderEntry("vqgan-taming-f16-16384", "vqgan", _A + "vqgan:build_taming", _TAMING.format("ckpts%2Flast.ckpt"),
                 f"(+ {_TAMING.format('configs%2Fmodel.yaml')})", aliases=("vqgan",)),
    EncoderEntry("vqgan-llamagen-vq16", "vqgan", _A + "vqgan:build_llamagen",
                 "hf://FoundationVision/LlamaGen/vq_ds16_c2i.pt", "(key 'model')"),
    EncoderEntry("vqgan-diffusers", "vqgan", _A + "vqgan:build_diffusers_vq", None,
                 "local path required: a diffusers VQModel directory or hub id (weights=..., subfolder=...)"),
)



def _timm(name: str, family: str, model_name: str, note: str, image_size: int | None = None,
          aliases: tuple[str, ...] = ()) -> EncoderEntry:
    """A named timm model with its pretrained tag; default weights: the tag's hub file."""
    options = (("name", name), ("model_name", model_name)) + ((("image_size", image_size),) if image_size else ())
    return EncoderEntry(name, family, _A + "timm_zoo:build_timm_named",
                        f"hf://timm/{model_name}/model.safetensors", note, aliases, options)


def _hf_dinov2(size: str, registers: bool) -> EncoderEntry:
    repo = f"facebook/dinov2-with-registers-{size}" if registers else f"facebook/dinov2-{size}"
    name = f"dinov2-{size[0]}{'-reg' if registers else ''}-hf"
    prefix = "CLS + 4 registers" if registers else "CLS"
    return EncoderEntry(name, "dinov2", _A + "hf_dinov2:build_hf_dinov2", repo,
                        f"(transformers folder/hub id; {prefix}, 16x16 at 224 px)",
                        options=(("name", name), ("registers", registers)))


def _diffusers_kl(name: str, repo: str, note: str) -> EncoderEntry:
    return EncoderEntry(name, "vae", _A + "vae_zoo:build_diffusers_kl", repo, note, options=(("name", name),))


def _rae(name: str, repo: str, note: str) -> EncoderEntry:
    return EncoderEntry(name, "rae", _A + "rae:build_rae", repo, note, options=(("name", name),))


_D2 = "(CLS{}, patch 14: 16x16 at 224 px)"
ENTRIES += (
    _timm("dinov2-s", "dinov2", "vit_small_patch14_dinov2.lvd142m", _D2.format(""), 224, ("dinov2",)),
    _timm("dinov2-b", "dinov2", "vit_base_patch14_dinov2.lvd142m", _D2.format(""), 224),
    _timm("dinov2-l", "dinov2", "vit_large_patch14_dinov2.lvd142m", _D2.format(""), 224),
    _timm("dinov2-g", "dinov2", "vit_giant_patch14_dinov2.lvd142m", _D2.format(""), 224),
    _timm("dinov2-s-reg", "dinov2", "vit_small_patch14_reg4_dinov2.lvd142m", _D2.format(" + 4 registers"), 224),
    _timm("dinov2-b-reg", "dinov2", "vit_base_patch14_reg4_dinov2.lvd142m", _D2.format(" + 4 registers"), 224),
    _timm("dinov2-l-reg", "dinov2", "vit_large_patch14_reg4_dinov2.lvd142m", _D2.format(" + 4 registers"), 224),
    _timm("dinov2-g-reg", "dinov2", "vit_giant_patch14_reg4_dinov2.lvd142m", _D2.format(" + 4 registers"), 224),
    _timm("mae-b16", "mae", "vit_base_patch16_224.mae", "(CLS, 14x14 at 224 px)", aliases=("mae",)),
    _timm("mae-l16", "mae", "vit_large_patch16_224.mae", "(CLS, 14x14 at 224 px)"),
    _timm("mae-h14", "mae", "vit_huge_patch14_224.mae", "(CLS, 16x16 at 224 px)"),
    _timm("siglip2-b16", "siglip", "vit_base_patch16_siglip_256.v2_webli", "(SigLIP 2, 16x16 at 256 px)",
          aliases=("siglip2",)),
    _timm("siglip2-l16", "siglip", "vit_large_patch16_siglip_256.v2_webli", "(SigLIP 2, 16x16 at 256 px)"),
    _timm("siglip2-so400m16", "siglip", "vit_so400m_patch16_siglip_256.v2_webli", "(SigLIP 2, 16x16 at 256 px)"),
    _hf_dinov2("small", False), _hf_dinov2("base", False), _hf_dinov2("small", True), _hf_dinov2("base", True),
    EncoderEntry("vae-vavae-f16d32", "vae", _A + "vae_zoo:build_vavae",
                 "hf://hustvl/vavae-imagenet256-f16d32-dinov2/vavae-imagenet256-f16d32-dinov2.pt",
                 "(LightningDiT VA-VAE, LDM key 'state_dict'; 32x16x16 at 256 px)", aliases=("vavae",)),
    _diffusers_kl("vae-repae-vavae", "REPA-E/e2e-vavae-hf", "(REPA-E end-to-end VA-VAE, diffusers; 32 ch, f16)"),
    _diffusers_kl("vae-repae-sdvae", "REPA-E/e2e-sdvae-hf", "(REPA-E end-to-end SD-VAE, diffusers; 4 ch, f8)"),
    _diffusers_kl("vae-repae-invae", "REPA-E/e2e-invae-hf", "(REPA-E end-to-end IN-VAE, diffusers)"),
    _rae("rae-dinov2-b", "nyu-visionx/RAE-dinov2-wReg-base-ViTXL-n08", "(AutoencoderRAE; 768x16x16 at 224 px)"),
    _rae("rae-dinov2-s", "nyu-visionx/RAE-dinov2-wReg-small-ViTXL-n08", "(AutoencoderRAE; 384x16x16 at 224 px)"),
    _rae("rae-dinov2-l", "nyu-visionx/RAE-dinov2-wReg-large-ViTXL-n08", "(AutoencoderRAE; 1024x16x16 at 224 px)"),
    _rae("rae-mae-b16", "nyu-visionx/RAE-mae-base-p16-ViTXL-n08", "(AutoencoderRAE; 768x16x16 at 224 px)"),
    EncoderEntry("harmon-0.5b-reca-mar", "mar", _A + "harmon_mar:build_harmon_05b", "hf://sanaka87/Harmon-0.5B-RecA",
                 "(RecA post-trained Harmon-0.5B, Harmon format: the repo's one checkpoint file) + KL-16",
                 options=(("name", "harmon-0.5b-reca-mar"),)),
    EncoderEntry("harmon-1.5b-reca-mar", "mar", _A + "harmon_mar:build_harmon_15b", "hf://sanaka87/Harmon-1.5B-RecA",
                 "(RecA post-trained Harmon-1.5B, Harmon format: the repo's one checkpoint file) + KL-16",
                 options=(("name", "harmon-1.5b-reca-mar"),)),
)
_BY_NAME = {entry.name: entry for entry in ENTRIES}
_ALIASES = {alias: entry.name for entry in ENTRIES for alias in entry.aliases}


def list_encoders() -> list[EncoderEntry]:
    return list(ENTRIES)


def get_entry(name: str) -> EncoderEntry:
    key = _ALIASES.get(name, name)
    if key.startswith("timm:"):
        key = "timm"
    if key not in _BY_NAME:
        names = sorted([*_BY_NAME, *_ALIASES])
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Closest: {close[0]!r}." if close else ""
        raise ValueError(f"unknown encoder {name!r}.{hint} Known encoders: {', '.join(names)}")
    return _BY_NAME[key]


def create_encoder(name: str, weights: str | None = None, seed: int | None = None, **options) -> Encoder:
    """Build encoder `name` (or an alias, or `timm:<model name>`) in eval mode.

    weights: None for the entry's default weights, a path / hub file / URL, or "random" (no download; with `seed`
    the same seed builds the same model, without touching the caller's random state).
    """
    entry = get_entry(name)
    if name.startswith("timm:"):
        options.setdefault("model_name", name[len("timm:") :])
    if weights != "random" or seed is None:
        return entry.build(weights=weights, **options).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return entry.build(weights=weights, **options).eval()


def weights_source(name: str, weights: str | None, seed: int | None = None) -> str:
    """Where an encoder's weights come from, in words (for reports)."""
    if weights == "random":
        return "random initialisation" + (f" (seed {seed})" if seed is not None else "")
    if weights is not None:
        return str(weights)
    return get_entry(name).source or "no weights"
