"""The KL-16 VAE of MAR/Harmon as a diffusers `AutoencoderKL`: exact config, LDM <-> diffusers keys, loading, latents.

The official `kl16.ckpt` stores LDM names under `"model"`. Encoder attention sits only in the last level (two blocks,
one after each ResNet), the decoder has attention only in its mid block. Every attention is single-head (scale C^-0.5)
behind a GroupNorm with eps 1e-6; diffusers' Encoder/Decoder set that up themselves (head dim = channel count).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from harmon.checkpoints import (
    CheckpointError,
    check_keys,
    format_keys,
    load_file,
    read_metadata,
    resolve,
    save_safetensors,
    unwrap_state,
)

KL16_SCALE = 0.2325
CONFIG_METADATA_KEY = "harmon_vae_config"

_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}

# Module paths as (LDM, diffusers). {p}: encoder/decoder; {i}, {j}: indices; {u}: decoder level, counted from the
# highest resolution in LDM and from the lowest in diffusers; {r}, {a}: ResNet / attention sub-modules.
_RULES = [
    ("{p}.conv_in", "{p}.conv_in"),
    ("{p}.conv_out", "{p}.conv_out"),
    ("{p}.norm_out", "{p}.conv_norm_out"),
    ("quant_conv", "quant_conv"),
    ("post_quant_conv", "post_quant_conv"),
    ("{p}.mid.block_1.{r}", "{p}.mid_block.resnets.0.{r}"),
    ("{p}.mid.attn_1.{a}", "{p}.mid_block.attentions.0.{a}"),
    ("{p}.mid.block_2.{r}", "{p}.mid_block.resnets.1.{r}"),
    ("encoder.down.{i}.block.{j}.{r}", "encoder.down_blocks.{i}.resnets.{j}.{r}"),
    ("encoder.down.{i}.attn.{j}.{a}", "encoder.down_blocks.{i}.attentions.{j}.{a}"),
    ("encoder.down.{i}.downsample.conv", "encoder.down_blocks.{i}.downsamplers.0.conv"),
    ("decoder.up.{u}.block.{j}.{r}", "decoder.up_blocks.{u}.resnets.{j}.{r}"),
    ("decoder.up.{u}.attn.{j}.{a}", "decoder.up_blocks.{u}.attentions.{j}.{a}"),
    ("decoder.up.{u}.upsample.conv", "decoder.up_blocks.{u}.upsamplers.0.conv"),
]
_ATTENTION_LINEAR = re.compile(r".*\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight")
_DIFFUSERS_NAME = re.compile(r"(encoder|decoder)\.(down_blocks|up_blocks|mid_block|conv_norm_out)\.")


def kl16_config(**overrides: Any) -> dict:
    """diffusers `AutoencoderKL` arguments of the official KL-16 (f16, 16 latent channels); overrides win.

    Unless given, the block types follow `block_out_channels`: plain levels with attention in the last encoder level.
    """
    config: dict[str, Any] = dict(
        in_channels=3, out_channels=3, block_out_channels=(128, 128, 256, 256, 512), layers_per_block=2,
        latent_channels=16, norm_num_groups=32, act_fn="silu", sample_size=256, scaling_factor=KL16_SCALE,
        mid_block_add_attention=True, use_quant_conv=True, use_post_quant_conv=True,
    )
    config.update(overrides)
    levels = len(config["block_out_channels"])
    config.setdefault("down_block_types", ("DownEncoderBlock2D",) * (levels - 1) + ("AttnDownEncoderBlock2D",))
    config.setdefault("up_block_types", ("UpDecoderBlock2D",) * levels)
    return config


def tiny_kl16_config() -> dict:
    """KL-16's structure (5 levels, stride 16, 16 latent channels, 312 tensors) at ~75k parameters, for tests."""
    return kl16_config(block_out_channels=(4, 4, 8, 8, 16), norm_num_groups=2, sample_size=64)


def build_kl16(config: Mapping[str, Any] | None = None) -> AutoencoderKL:
    """A randomly initialised KL-16 `AutoencoderKL` (the official size unless `config` is given)."""
    return AutoencoderKL(**(kl16_config() if config is None else dict(config)))


def _compile(forward: bool) -> tuple[list[tuple[re.Pattern, str]], dict[str, dict[str, str]]]:
    subs = {"r": _RESNET, "a": _ATTENTION}
    if not forward:
        subs = {field: {v: k for k, v in names.items()} for field, names in subs.items()}
    fields = {"p": "encoder|decoder", "i": r"\d+", "j": r"\d+", "u": r"\d+"}
    fields |= {field: "|".join(map(re.escape, names)) for field, names in subs.items()}
    rules = []
    for ldm, diffusers in _RULES:
        source, target = (ldm, diffusers) if forward else (diffusers, ldm)
        parts = re.split(r"\{(\w)\}", source)
        pattern = "".join(re.escape(p) if n % 2 == 0 else f"(?P<{p}>{fields[p]})" for n, p in enumerate(parts))
        rules.append((re.compile(pattern + r"\.(?P<leaf>weight|bias)"), target + ".{leaf}"))
    return rules, subs


_RENAMES = {True: _compile(True), False: _compile(False)}


def _rename(name: str, levels: int, forward: bool) -> str | None:
    rules, subs = _RENAMES[forward]
    for regex, target in rules:
        match = regex.fullmatch(name)
        if match is None:
            continue
        groups = match.groupdict()
        if "u" in groups:
            level = levels - 1 - int(groups["u"])
            if level < 0:
                return None
            groups["u"] = str(level)
        for field, names in subs.items():
            if field in groups:
                groups[field] = names[groups[field]]
        return target.format(**groups)
    return None


def _num_levels(state: Mapping[str, Any], forward: bool) -> int:
    regex = re.compile(r"(?:encoder\.down|decoder\.up)\.(\d+)\." if forward
                       else r"(?:encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.")
    found = [int(m.group(1)) for name in state if (m := regex.match(name))]
    return max(found, default=-1) + 1


def _convert(state: Mapping[str, torch.Tensor], num_levels: int | None, forward: bool) -> dict[str, torch.Tensor]:
    levels = _num_levels(state, forward) if num_levels is None else num_levels
    out, left_over = {}, []
    for name, tensor in state.items():
        new = _rename(name, levels, forward)
        if new is None:
            left_over.append(name)
            continue
        if _ATTENTION_LINEAR.fullmatch(new if forward else name):
            if forward and tensor.ndim == 4 and tensor.shape[2:] == (1, 1):
                tensor = tensor.reshape(tensor.shape[:2])
            elif not forward and tensor.ndim == 2:
                tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[new] = tensor
    if left_over:
        source, target = ("LDM", "diffusers") if forward else ("diffusers", "LDM")
        raise CheckpointError(
            f"{len(left_over)} {source} key(s) have no {target} AutoencoderKL equivalent ({levels} levels); "
            "is this a KL autoencoder state dict (encoder./decoder./quant_conv./post_quant_conv. only)?\n"
            + format_keys("left over", left_over)
        )
    return out


def ldm_to_diffusers(state: Mapping[str, torch.Tensor], num_levels: int | None = None) -> dict[str, torch.Tensor]:
    """Rename an LDM/MAR autoencoder state dict to diffusers `AutoencoderKL` names; every key must map.

    Attention 1x1-conv weights (C, C, 1, 1) become Linear weights (C, C). `num_levels` defaults to the highest
    `encoder.down.{i}` / `decoder.up.{i}` index + 1.
    """
    return _convert(state, num_levels, forward=True)


def diffusers_to_ldm(state: Mapping[str, torch.Tensor], num_levels: int | None = None) -> dict[str, torch.Tensor]:
    """The inverse of `ldm_to_diffusers`: diffusers `AutoencoderKL` names back to LDM names and 1x1-conv shapes."""
    return _convert(state, num_levels, forward=False)


def load_kl16(source: str | os.PathLike = "kl16", config: Mapping[str, Any] | None = None) -> AutoencoderKL:
    """Load KL-16 weights strictly into a frozen `AutoencoderKL` in eval mode.

    Accepts the official `{"model": LDM state dict}`, a bare or `"state_dict"`-wrapped LDM dict (optionally with a
    `first_stage_model.` or `vae.` prefix), or a diffusers-layout dict such as `save_kl16_safetensors` writes.
    `config` defaults to the one saved in the file's metadata, else the official `kl16_config()`.
    """
    path = resolve(source)
    what = f"KL-16 VAE weights in {path}"
    state = unwrap_state(load_file(path), what, prefixes=("first_stage_model.", "vae."))
    saved = read_metadata(path).get(CONFIG_METADATA_KEY)
    config = config if config is not None else json.loads(saved) if saved else kl16_config()
    vae = build_kl16(config)
    diffusers_layout = any(_DIFFUSERS_NAME.match(name) for name in state)
    looks_like = (
        f"{'diffusers' if diffusers_layout else 'LDM'} layout, {len(state)} tensors, "
        f"{sum(t.numel() for t in state.values()):,} values (the official kl16.ckpt: LDM, 312 tensors, 66,456,019)"
    )
    levels = len(vae.config.block_out_channels)
    if diffusers_layout:
        check_keys(vae, state, what, looks_like=looks_like)
    else:
        check_keys(diffusers_to_ldm(vae.state_dict(), levels), state, what, looks_like=looks_like)
        state = ldm_to_diffusers(state, levels)
    vae.load_state_dict(state, strict=True)
    return vae.eval().requires_grad_(False)


def save_kl16_safetensors(vae: AutoencoderKL, path: str | os.PathLike) -> Path:
    """Write the weights in diffusers layout, with the model config in the metadata (`load_kl16` reads both)."""
    config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    state = {k: v.detach().cpu() for k, v in vae.state_dict().items()}
    return save_safetensors(state, path, metadata={CONFIG_METADATA_KEY: json.dumps(config)})


def _check_images(vae: AutoencoderKL, images: torch.Tensor) -> None:
    channels, stride = vae.config.in_channels, 2 ** (len(vae.config.block_out_channels) - 1)
    shape = tuple(images.shape)
    expected = f"encode expects images (B, {channels}, H, W) in [-1, 1] with H and W multiples of {stride}; got {shape}"
    if images.ndim == 3:
        raise ValueError(f"{expected}. Add a batch dimension: images.unsqueeze(0).")
    if images.ndim != 4:
        raise ValueError(f"{expected}.")
    if shape[1] != channels:
        fix = ("the batch looks channels-last; use images.permute(0, 3, 1, 2)" if shape[-1] == channels
               else f"convert the images to {channels}-channel RGB (repeat grayscale, drop alpha)")
        raise ValueError(f"{expected}: {shape[1]} channels; {fix}.")
    if shape[2] % stride or shape[3] % stride:
        h, w = (max(stride, round(n / stride) * stride) for n in shape[2:])
        raise ValueError(f"{expected}. Resize or crop to a multiple of {stride}, e.g. {h}x{w}.")


def encode(vae: AutoencoderKL, images: torch.Tensor, sample: bool = False,
           generator: torch.Generator | None = None, scale: float = KL16_SCALE) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> latents (B, 16, H/16, W/16) multiplied by `scale`.

    The posterior mode (its mean; Harmon) by default, or with `sample=True` mean + std * noise drawn from
    `generator` (MAR training).
    """
    _check_images(vae, images)
    posterior = vae.encode(images.to(vae.dtype)).latent_dist
    latents = posterior.sample(generator=generator) if sample else posterior.mode()
    return latents * scale


def decode(vae: AutoencoderKL, latents: torch.Tensor, scale: float = KL16_SCALE) -> torch.Tensor:
    """Scaled latents (B, 16, h, w) -> images (B, 3, 16h, 16w), roughly in [-1, 1] (not clamped)."""
    channels = vae.config.latent_channels
    if latents.ndim != 4 or latents.shape[1] != channels:
        raise ValueError(
            f"decode expects latents (B, {channels}, h, w); got {tuple(latents.shape)}. "
            f"Token sequences (B, h*w, {channels}) must be reshaped to a grid first (MAR.unpatchify)."
        )
    return vae.decode(latents.to(vae.dtype) / scale).sample
