"""VQ tokenizers as encoders: the taming VQGAN (ImageNet f16-16384), LlamaGen VQ-16 and any diffusers `VQModel`.

Both official architectures map exactly onto diffusers `VQModel` (same modules, single-head attention, GroupNorm 32,
eps 1e-6); only the parameter names differ, so the files are renamed (LlamaGen -> LDM -> diffusers) and loaded
strictly. Features: "prequant" (default; the latent after quant_conv: taming 256 x 16 x 16, LlamaGen 8 x 16 x 16 at
256 px), "quantized" (the nearest codebook vectors, straight-through gradients; LlamaGen compares and returns
L2-normalised vectors as it does itself) or "last_block" (the trunk after the mid block: 512 x 16 x 16).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from diffusers import VQModel

from encoders.adapters.common import family, family_error, is_hub_id, load_diffusers, looks_like, unwrap
from encoders.adapters.conv import ConvLatentEncoder
from harmon.checkpoints import CheckpointError, check_keys, load_file, resolve, tensors_only
from harmon.vae import diffusers_to_ldm, ldm_to_diffusers

# `model.params` of vqgan_imagenet_f16_16384's model.yaml (the loss config is not needed)
TAMING_F16_16384: dict[str, Any] = {
    "embed_dim": 256, "n_embed": 16384,
    "ddconfig": {"double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                 "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0},
}
# LlamaGen's ModelArgs for VQ-16, plus the Encoder/Decoder defaults ch and num_res_blocks
LLAMAGEN_VQ16: dict[str, Any] = {
    "codebook_size": 16384, "codebook_embed_dim": 8, "codebook_l2_norm": True, "encoder_ch_mult": [1, 1, 2, 2, 4],
    "decoder_ch_mult": [1, 1, 2, 2, 4], "z_channels": 256, "ch": 128, "num_res_blocks": 2,
}
QUANTIZER = "quantize.embedding.weight"


class VQEncoder(ConvLatentEncoder):
    """The encoder, quant_conv and codebook of a diffusers `VQModel`; the decoder is kept only for `reconstruct`."""

    features = ("prequant", "quantized", "last_block")

    def __init__(self, name: str, model: VQModel, feature: str = "prequant", l2_norm: bool = False,
                 image_size: int = 256):
        super().__init__(name, model.encoder, model.quant_conv, feature, image_size)
        self.codebook = model.quantize.embedding.requires_grad_(False)
        self.l2_norm = l2_norm
        self.keep_decoder(model)

    @torch.no_grad()
    def reconstruct(self, pixels: torch.Tensor) -> torch.Tensor:
        """Encode, snap every position to its nearest code (L2-normalised for LlamaGen, as the features), decode."""
        model = self.autoencoder_on(pixels)
        codes = quantize(model.encode(pixels).latents, self.codebook.weight.to(pixels.device), self.l2_norm)
        return model.decode(codes, force_not_quantize=True).sample

    def latent(self, h: torch.Tensor) -> torch.Tensor:
        return quantize(h, self.codebook.weight, self.l2_norm) if self.feature == "quantized" else h

    def describe(self) -> dict:
        return {**super().describe(), "codebook": list(self.codebook.weight.shape),
                "quantizer": "l2-normalised" if self.l2_norm else "l2"}


def quantize(h: torch.Tensor, codebook: torch.Tensor, l2_norm: bool = False) -> torch.Tensor:
    """Nearest codebook vector per position of h (B, C, H, W), squared-L2; straight-through gradient to h."""
    if l2_norm:
        h, codebook = F.normalize(h, dim=1), F.normalize(codebook, dim=1)
    flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    distance = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
    codes = codebook[distance.argmin(1)].reshape(h.shape[0], h.shape[2], h.shape[3], -1).permute(0, 3, 1, 2)
    return h + (codes - h).detach()


def vq_model(widths: list[int], num_res_blocks: int, z_channels: int, embed_dim: int, n_embed: int,
             attn_levels: set[int]) -> VQModel:
    """A diffusers VQModel with LDM's geometry: attention after every ResNet of the levels in `attn_levels`."""
    levels = len(widths)
    return VQModel(
        in_channels=3, out_channels=3, block_out_channels=tuple(widths), layers_per_block=num_res_blocks,
        down_block_types=tuple("AttnDownEncoderBlock2D" if i in attn_levels else "DownEncoderBlock2D"
                               for i in range(levels)),
        up_block_types=tuple("AttnUpDecoderBlock2D" if levels - 1 - u in attn_levels else "UpDecoderBlock2D"
                             for u in range(levels)),
        latent_channels=z_channels, vq_embed_dim=embed_dim, num_vq_embeddings=n_embed, norm_num_groups=32,
        act_fn="silu", sample_size=256,
    )


def _split(state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """(autoencoder tensors, quantizer tensors)."""
    inner = {k: v for k, v in state.items() if not k.startswith("quantize.")}
    return inner, {k: v for k, v in state.items() if k.startswith("quantize.")}


def _load(model: VQModel, ldm_state: dict[str, torch.Tensor]) -> VQModel:
    inner, quant = _split(ldm_state)
    levels = len(model.config.block_out_channels)
    model.load_state_dict({**ldm_to_diffusers(inner, levels), QUANTIZER: quant[QUANTIZER]}, strict=True)
    return model


def ldm_names(model: VQModel) -> dict[str, torch.Tensor]:
    """The model's state dict under taming/LDM names."""
    inner, quant = _split(model.state_dict())
    return {**diffusers_to_ldm(inner, len(model.config.block_out_channels)), **quant}


# ---- taming VQGAN -----------------------------------------------------------------------------------------------
def taming_params(config: str | os.PathLike | Mapping[str, Any] | None, checkpoint: Path | None) -> dict[str, Any]:
    """`model.params` of a taming model.yaml: from `config` (a yaml path/URL or a params dict overriding the official
    f16-16384 values), else a `model.yaml` beside the checkpoint or in ../configs/, else the official values."""
    if config is None and checkpoint is not None:
        config = next((p for p in (checkpoint.parent / "model.yaml", checkpoint.parent.parent / "configs" /
                                   "model.yaml") if p.is_file()), None)
    if config is None:
        return TAMING_F16_16384
    if not isinstance(config, Mapping):
        text = resolve(config).read_text()
        model = (yaml.safe_load(text) or {}).get("model", {})
        target = model.get("target", "")
        if target != "taming.models.vqgan.VQModel":
            raise ValueError(f"{config}: model.target is {target!r}; only taming.models.vqgan.VQModel "
                             "(a plain VQGAN, not Gumbel/EMA variants) is supported")
        config = model.get("params", {})
    dd = {**TAMING_F16_16384["ddconfig"], **config.get("ddconfig", {})}
    return {**TAMING_F16_16384, **{k: v for k, v in config.items() if k != "lossconfig"}, "ddconfig": dd}


def taming_model(params: Mapping[str, Any]) -> VQModel:
    dd = params["ddconfig"]
    if dd.get("double_z") or dd.get("in_channels", 3) != 3 or dd.get("out_ch", 3) != 3:
        raise ValueError(f"taming ddconfig {dd} is not an RGB VQGAN (double_z must be false)")
    widths = [dd["ch"] * m for m in dd["ch_mult"]]
    attn = {i for i in range(len(widths)) if dd["resolution"] // 2**i in dd["attn_resolutions"]}
    return vq_model(widths, dd["num_res_blocks"], dd["z_channels"], params["embed_dim"], params["n_embed"], attn)


def build_taming(weights: str | None = None, feature: str = "prequant",
                 config: str | Mapping[str, Any] | None = None, image_size: int = 256) -> VQEncoder:
    """taming-transformers VQGAN: a Lightning `last.ckpt` ({"state_dict": ...}, `loss.*` dropped), or a bare or
    safetensors state dict. config: model.yaml path/URL or a `model.params` dict (see `taming_params`)."""
    name = "vqgan-taming-f16-16384"
    if weights == "random":
        return VQEncoder(name, taming_model(taming_params(config, None)), feature, False, image_size)
    path = resolve(weights)
    raw = load_file(path)
    state = {k: v for k, v in unwrap(raw, ("state_dict",)).items() if not k.startswith("loss.")}
    if family(state) != "taming-vq":
        raise family_error(name, path, raw, "a taming VQGAN checkpoint")
    state = tensors_only(state, f"{name} weights in {path}")
    model = taming_model(taming_params(config, path))
    check_keys(ldm_names(model), state, f"{name} weights in {path}", looks_like=looks_like(state))
    return VQEncoder(name, _load(model, state), feature, False, image_size)


# ---- LlamaGen VQ-16 ---------------------------------------------------------------------------------------------
# (LlamaGen, LDM) module paths; {i}: encoder level, {u}: decoder block (LlamaGen counts from the lowest resolution,
# LDM from the highest), {j}: index.
_LLAMAGEN_RULES = [
    ("encoder.conv_blocks.{i}.res.{j}.", "encoder.down.{i}.block.{j}."),
    ("encoder.conv_blocks.{i}.attn.{j}.", "encoder.down.{i}.attn.{j}."),
    ("encoder.conv_blocks.{i}.downsample.", "encoder.down.{i}.downsample."),
    ("decoder.conv_blocks.{u}.res.{j}.", "decoder.up.{u}.block.{j}."),
    ("decoder.conv_blocks.{u}.attn.{j}.", "decoder.up.{u}.attn.{j}."),
    ("decoder.conv_blocks.{u}.upsample.", "decoder.up.{u}.upsample."),
    ("{p}.mid.0.", "{p}.mid.block_1."),
    ("{p}.mid.1.", "{p}.mid.attn_1."),
    ("{p}.mid.2.", "{p}.mid.block_2."),
]
_FIELDS = {"i": r"\d+", "j": r"\d+", "u": r"\d+", "p": "encoder|decoder"}


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w)\}", template)
    return re.compile("".join(re.escape(p) if n % 2 == 0 else f"(?P<{p}>{_FIELDS[p]})" for n, p in enumerate(parts)))


def rename_llamagen(state: Mapping[str, Any], levels: int, to_ldm: bool) -> dict[str, Any]:
    """LlamaGen <-> LDM parameter names (the mapping is its own inverse apart from the direction of the table)."""
    rules = [(_pattern(a), b) if to_ldm else (_pattern(b), a) for a, b in _LLAMAGEN_RULES]
    out = {}
    for name, value in state.items():
        for regex, target in rules:
            if match := regex.match(name):
                groups = match.groupdict()
                if "u" in groups:
                    groups["u"] = str(levels - 1 - int(groups["u"]))
                name = target.format(**groups) + name[match.end():]
                break
        out[name] = value
    return out


def llamagen_model(args: Mapping[str, Any]) -> VQModel:
    unknown = set(args) - set(LLAMAGEN_VQ16)
    if unknown:
        raise ValueError(f"unknown LlamaGen config fields {sorted(unknown)}; valid: {sorted(LLAMAGEN_VQ16)}")
    a = {**LLAMAGEN_VQ16, **args}
    if list(a["encoder_ch_mult"]) != list(a["decoder_ch_mult"]):
        raise ValueError("encoder_ch_mult and decoder_ch_mult must be equal")
    widths = [a["ch"] * m for m in a["encoder_ch_mult"]]
    return vq_model(widths, a["num_res_blocks"], a["z_channels"], a["codebook_embed_dim"], a["codebook_size"],
                    {len(widths) - 1})


def build_llamagen(weights: str | None = None, feature: str = "prequant", config: Mapping[str, Any] | None = None,
                   image_size: int = 256) -> VQEncoder:
    """LlamaGen VQ-16: `{"model": sd}` (or "ema" / "state_dict" wrappers, or bare). config: LlamaGen ModelArgs
    fields (codebook_size, codebook_embed_dim, codebook_l2_norm, encoder/decoder_ch_mult, z_channels) + ch,
    num_res_blocks."""
    name = "vqgan-llamagen-vq16"
    args = {**LLAMAGEN_VQ16, **(config or {})}
    if weights == "random":
        model = llamagen_model(args)
    else:
        path = resolve(weights)
        raw = load_file(path)
        state = unwrap(raw, ("ema", "model", "state_dict"))
        if family(state) != "llamagen-vq":
            raise family_error(name, path, raw, "a LlamaGen VQ checkpoint")
        state = tensors_only(state, f"{name} weights in {path}")
        model = llamagen_model(args)
        levels = len(model.config.block_out_channels)
        check_keys(rename_llamagen(ldm_names(model), levels, to_ldm=False), state, f"{name} weights in {path}",
                   allow_unexpected={"quantize.codebook_used"}, looks_like=looks_like(state))
        state.pop("quantize.codebook_used", None)
        _load(model, rename_llamagen(state, levels, to_ldm=True))
    return VQEncoder(name, model, feature, args["codebook_l2_norm"], image_size)


# ---- diffusers VQModel --------------------------------------------------------------------------------------------
def build_diffusers_vq(weights: str | None = None, feature: str = "prequant", subfolder: str | None = None,
                       config: Mapping[str, Any] | None = None, image_size: int = 256) -> VQEncoder:
    """Any diffusers VQModel (plain L2 quantizer). config: VQModel arguments, for weights="random" only."""
    if weights is None:
        raise CheckpointError("vqgan-diffusers has no default weights: pass weights=<VQModel directory or hub id>, "
                              "e.g. weights='amused/amused-256', subfolder='vqvae'")
    if weights == "random":
        return VQEncoder("vqgan-diffusers", VQModel(**(config or {})), feature, False, image_size)
    source = os.path.expanduser(weights)
    if not (Path(source).is_dir() or is_hub_id(source)):
        raise CheckpointError(f"vqgan-diffusers: {weights!r} is not a directory or a hub id (owner/name); for a "
                              "single taming or LlamaGen file use vqgan-taming-f16-16384 or vqgan-llamagen-vq16")
    return VQEncoder("vqgan-diffusers", load_diffusers(VQModel, source, subfolder), feature, False, image_size)
