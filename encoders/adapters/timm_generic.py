"""Any ViT-like timm model as an encoder (`timm:<model name>`); SigLIP builds on this.

Tokens: `layer=None` (or the last block) gives `forward_features` (after the final norm); an earlier `layer=k` gives
the raw output of `blocks[k]`, as `forward_intermediates` returns it; several layers come from one pass. CLS / register tokens are the prefix. Poolings:
"map" (the attention-pool head, before any classifier) where the model has one, "cls" where it has a CLS token, and
"mean" of the patch tokens; the default follows the model's own `global_pool`. "map" on an earlier layer applies the
head to that layer's tokens. Grad-CAM++ reads the last block, or its input for "cls" (see `cam_layer_for`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from timm.models import get_pretrained_cfg
from torch import nn

from encoders.adapters.capture import block_outputs
from encoders.adapters.common import family, family_error, freeze, resolve_layer
from encoders.base import Encoder, Preprocess
from harmon.checkpoints import CheckpointError, load_file, resolve

_DEFAULT_POOLING = {"map": "map", "token": "cls", "avg": "mean"}


def hub_source(model_name: str) -> str:
    """Where timm's pretrained cfg says the weights of `model_name` (with its tag) live, as a checkpoints source."""
    cfg = get_pretrained_cfg(model_name)
    if cfg is not None and cfg.hf_hub_id:
        return f"hf://{cfg.hf_hub_id}/{cfg.hf_hub_filename or 'model.safetensors'}"
    if cfg is not None and cfg.url:
        return cfg.url
    raise CheckpointError(f"timm knows no pretrained weights for {model_name!r}; pass weights=<local file>")


def create_timm(model_name: str, weights: str | None, config: Mapping[str, Any] | None) -> nn.Module:
    """Build a timm model (config: create_model keyword arguments) with weights from `weights` (None = its hub
    weights, a local or hub file in timm or open_clip layout, or "random"); the classifier head is removed."""
    if not timm.is_model(model_name):
        stem = model_name.split(".")[0].split("_")[0]
        raise ValueError(f"unknown timm model {model_name!r}; see timm.list_models('{stem}*', pretrained=True)")
    config = dict(config or {})
    if weights == "random":
        model = timm.create_model(model_name, pretrained=False, **config)
    else:
        source = weights or hub_source(model_name)
        path = resolve(source)
        state = load_file(path)
        if family(state) != "timm-vit":
            raise family_error(model_name, path, state, "a timm ViT state dict")
        try:
            model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=state),
                                      **config)
        except RuntimeError as err:
            raise CheckpointError(f"{path} does not fit timm {model_name}: {str(err)[:2000]}") from err
        model.pretrained_cfg.pop("state_dict", None)
    model.reset_classifier(0)
    return model


class TimmEncoder(Encoder):
    """A timm ViT-like model (patch_embed, blocks, forward_features, forward_intermediates)."""

    def __init__(self, name: str, model: nn.Module, model_name: str):
        missing = [a for a in ("patch_embed", "blocks", "forward_intermediates") if not hasattr(model, a)]
        if missing:
            raise ValueError(f"timm model {model_name!r} is not ViT-like (no {', '.join(missing)}); "
                             "only ViT-style token encoders are supported")
        data = resolve_data_config({}, model=model)
        super().__init__(Preprocess(
            image_size=model.patch_embed.img_size[0], crop="resize" if data["crop_mode"] == "squash" else "center",
            mean=tuple(data["mean"]), std=tuple(data["std"]), interpolation=data["interpolation"],
            crop_pct=float(data.get("crop_pct", 1.0)) if data["crop_mode"] != "squash" else 1.0,
        ))
        self.name = name
        self.model_name = model_name
        self.model = freeze(model)
        self.num_prefix_tokens = model.num_prefix_tokens
        has_map = getattr(model, "attn_pool", None) is not None
        has_cls = getattr(model, "cls_token", None) is not None
        self.poolings = ("map",) * has_map + ("cls",) * has_cls + ("mean",)
        default = _DEFAULT_POOLING.get(getattr(model, "global_pool", ""), "mean")
        self.default_pooling = default if default in self.poolings else "mean"

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        embed = self.model.patch_embed
        fixed = tuple(embed.img_size)
        if embed.strict_img_size and (height, width) != fixed:
            raise ValueError(f"{self.name}: takes {fixed[0]}x{fixed[1]} images, got {height}x{width}; resize to "
                             f"{fixed[0]}x{fixed[1]} or build it with config=dict(img_size={height}) (position "
                             "embeddings are resampled when loading) or dynamic_img_size=True")
        ph, pw = embed.patch_size
        if not embed.dynamic_img_pad and (height % ph or width % pw):
            raise ValueError(f"{self.name}: a {height}x{width} image does not split into {ph}x{pw} patches; "
                             f"resize or crop to multiples of {ph}")
        return tuple(embed.dynamic_feat_size((height, width)))

    def num_layers(self) -> int:
        return len(self.model.blocks)

    def cam_layer(self) -> nn.Module:
        return self.cam_layer_for(self.default_pooling)

    def cam_layer_for(self, pooling: str | None = None) -> nn.Module:
        """The last block for patch-reading poolings; for "cls" the last block's input (the output of the block
        before it, or `norm_pre` for a one-block model), since the last block's CLS output does not depend on
        that block's own patch outputs."""
        if (pooling or self.default_pooling) != "cls":
            return self.model.blocks[-1]
        return self.model.blocks[-2] if len(self.model.blocks) > 1 else self.model.norm_pre

    def map_pool(self, sequence: torch.Tensor) -> torch.Tensor:
        if "map" not in self.poolings:
            return super().map_pool(sequence)
        return self.model.forward_head(sequence, pre_logits=True)

    def forward_sequence(self, pixels: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        return self.forward_layers(pixels, [layer])[0]

    def forward_layers(self, pixels: torch.Tensor, layers: Sequence[int | None]) -> list[torch.Tensor]:
        """One pass: with the last block requested, `forward_features` with hooks on the earlier blocks asked
        for; otherwise `forward_intermediates`, stopping after the deepest block asked for."""
        self.grid_for(*pixels.shape[-2:])
        last = self.num_layers() - 1
        indices = [resolve_layer(layer, self.num_layers(), self.name) for layer in layers]
        inner = sorted(set(indices) - {last})
        if last in indices:
            with block_outputs([self.model.blocks[i] for i in inner]) as captured:
                found = {last: self.model.forward_features(pixels)}
            found.update({index: captured[position] for position, index in enumerate(inner)})
        else:
            outs = self.model.forward_intermediates(pixels, indices=inner, return_prefix_tokens=True, norm=False,
                                                    stop_early=True, output_fmt="NLC", intermediates_only=True)
            found = {index: torch.cat([out[1], out[0]], dim=1) if isinstance(out, tuple) else out
                     for index, out in zip(inner, outs, strict=True)}
        return [found[index] for index in indices]

    def describe(self) -> dict:
        return {**super().describe(), "model_name": self.model_name, "default_pooling": self.default_pooling,
                "layers": "blocks[k] raw output; the last block after the final norm"}


def build_timm(weights: str | None = None, model_name: str | None = None,
               config: Mapping[str, Any] | None = None) -> TimmEncoder:
    """`create_encoder("timm:<name>")` or `create_encoder("timm", model_name=...)`; config: create_model kwargs."""
    if not model_name:
        raise ValueError("the timm encoder needs a model name: create_encoder('timm:vit_small_patch16_224.dino') "
                         "or create_encoder('timm', model_name=...)")
    return TimmEncoder(f"timm:{model_name}", create_timm(model_name, weights, config), model_name)
