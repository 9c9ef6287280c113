"""Helpers shared by the adapters: layer indices, recognising what a checkpoint holds, loading diffusers models."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from harmon.checkpoints import CheckpointError, hub_format_errors, hub_local_only, hub_missing, load_file

# family -> (what it is, the encoders that load it)
FAMILIES = {
    "harmon": ("a Harmon model state dict (mar.* / llm.* keys)", "harmon-0.5b-mar / harmon-1.5b-mar"),
    "mar": ("a MAR checkpoint", "mar-b / mar-l / mar-h"),
    "llamagen-vq": ("a LlamaGen VQ tokenizer state dict", "vqgan-llamagen-vq16"),
    "taming-vq": ("a taming-transformers VQGAN state dict", "vqgan-taming-f16-16384"),
    "diffusers-vq": ("a diffusers VQModel state dict", "vqgan-diffusers (pass its directory)"),
    "ldm-kl": ("an LDM KL autoencoder state dict", "vae-kl16 (16 latent channels) / vae-sd-ema, vae-sd-mse (4)"),
    "diffusers-kl": ("a diffusers AutoencoderKL state dict", "vae-kl16 / vae-sd-ema, vae-sd-mse"),
    "timm-vit": ("a timm ViT state dict", "siglip-b16 / siglip-l16 / timm"),
}
WRAPPERS = ("model_ema", "ema", "model", "state_dict")


def resolve_layer(layer: int | None, count: int, name: str) -> int:
    """Absolute 0-based block index for `layer` (None = the last block); clear error when out of range."""
    if layer is None:
        return count - 1
    if not -count <= layer < count:
        raise IndexError(f"{name}: layer={layer} is out of range; it has {count} blocks (0..{count - 1} or "
                         f"-{count}..-1)")
    return layer % count


def unwrap(state: Mapping[str, Any], wrappers: tuple[str, ...] = WRAPPERS) -> Mapping[str, Any]:
    """The first entry of `wrappers` that holds a mapping, else `state` itself."""
    for key in wrappers:
        if isinstance(state.get(key), Mapping):
            return state[key]
    return state


def family(state: Mapping[str, Any]) -> str | None:
    """Which checkpoint family a (possibly wrapped) state dict belongs to, or None."""
    keys = set(unwrap(state))

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if "mar.encoder_pos_embed_learned" in keys:
        return "harmon"
    if "encoder_pos_embed_learned" in keys:
        return "mar"
    if has("encoder.conv_blocks."):
        return "llamagen-vq"
    if has("patch_embed.proj.") or has("visual.trunk.patch_embed."):
        return "timm-vit"
    quantized = "quantize.embedding.weight" in keys
    if has("encoder.down."):
        return "taming-vq" if quantized else "ldm-kl"
    if has("encoder.down_blocks."):
        return "diffusers-vq" if quantized else "diffusers-kl"
    return None


def looks_like(state: Mapping[str, Any]) -> str:
    """One line saying what a checkpoint holds and which encoder loads it."""
    inner = unwrap(state)
    kind = family(state)
    size = f"{len(inner)} entries"
    if kind is None:
        return f"an unrecognised file ({size}; first keys: {', '.join(list(inner)[:5])})"
    what, loader = FAMILIES[kind]
    detail = ""
    if kind == "ldm-kl" and "quant_conv.weight" in inner:
        detail = f", {inner['quant_conv.weight'].shape[0] // 2} latent channels"
    if kind in ("taming-vq", "diffusers-vq", "llamagen-vq") and "quantize.embedding.weight" in inner:
        detail = ", codebook {}x{}".format(*inner["quantize.embedding.weight"].shape)
    return f"{what} ({size}{detail}); load it with {loader}"


def family_error(encoder: str, source: str | os.PathLike, state: Mapping[str, Any], expected: str) -> CheckpointError:
    return CheckpointError(f"{encoder}: {source} is not {expected}; it looks like {looks_like(state)}")


def explain(err: CheckpointError, encoder: str, source: str | os.PathLike) -> CheckpointError:
    """Add what the file actually holds to a loading error raised by a harmon loader."""
    try:
        state = load_file(source)
    except CheckpointError:
        return err
    return CheckpointError(f"{encoder}: {err}\n  the file holds {looks_like(state)}")


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, parameters without gradients (gradients still flow to the input pixels)."""
    return module.eval().requires_grad_(False)


def is_hub_id(text: str) -> bool:
    """`owner/name` that is not a local path or a checkpoint file name."""
    return (re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None and not Path(text).exists()
            and not text.endswith((".ckpt", ".safetensors", ".pt", ".pth", ".bin")))


def load_diffusers(cls: type, source: str, subfolder: str | None = None) -> Any:
    """Strictly load a diffusers model class from a local directory or a hub id (HF_HUB_OFFLINE honoured; an
    unreachable hub fails at once)."""
    local_only = not Path(source).is_dir() and hub_local_only()
    try:
        config = cls.load_config(source, subfolder=subfolder, local_files_only=local_only)
    except OSError as err:
        if not Path(source).is_dir() and is_hub_id(source):
            raise CheckpointError(hub_missing(source) + f" (a diffusers {cls.__name__} folder)") from err
        where = f"{source}" + (f" (subfolder {subfolder})" if subfolder else "")
        raise CheckpointError(f"no diffusers config.json found for {where} ({str(err).splitlines()[0]}); pass a "
                              "local directory written by save_pretrained or a hub id") from err
    found = config.get("_class_name")
    if found != cls.__name__:
        raise CheckpointError(f"{source} holds a diffusers {found}, not a {cls.__name__}")
    with hub_format_errors(source):
        model, info = cls.from_pretrained(source, subfolder=subfolder, local_files_only=local_only,
                                          output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise CheckpointError(f"{source} does not match its {cls.__name__} config: {problems}")
    return model
