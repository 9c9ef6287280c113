"""DINOv2 from its Hugging Face transformers checkpoints (`facebook/dinov2-*`, `facebook/dinov2-with-registers-*`).

Tokens: `last_hidden_state` (after the final layernorm) = [CLS, registers..., patches]; an earlier `layer=k` gives
the raw output of `encoder.layer[k]` (several layers from one call). Prefix: 1 CLS (+ the config's register tokens). Grid: H/14 x W/14 (position
embeddings are interpolated for any size, as transformers does). Poolings "cls" (default, as DINOv2's linear
probe) and "mean". Preprocessing as DINOv2's image processor: resize the short side to 256, centre crop 224,
bicubic, ImageNet mean/std.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from encoders.adapters.common import freeze, is_hub_id, resolve_layer
from encoders.base import Encoder, Preprocess
from harmon.checkpoints import CheckpointError, hub_format_errors, hub_local_only, hub_missing

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class HFDinov2Encoder(Encoder):
    """A transformers `Dinov2Model` / `Dinov2WithRegistersModel`."""

    poolings = ("cls", "mean")
    default_pooling = "cls"

    def __init__(self, name: str, model: nn.Module, image_size: int = 224):
        super().__init__(Preprocess(image_size=image_size, crop="center", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                    interpolation="bicubic", crop_pct=224 / 256))
        self.name = name
        self.model = freeze(model)
        self.patch = model.config.patch_size
        self.num_prefix_tokens = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch
        if height % p or width % p:
            raise ValueError(f"{self.name}: a {height}x{width} image does not split into {p}x{p} patches; resize "
                             f"or crop to multiples of {p} (e.g. {max(p, height // p * p)}x{max(p, width // p * p)})")
        return height // p, width // p

    def num_layers(self) -> int:
        return len(self.model.encoder.layer)

    def cam_layer(self) -> nn.Module:
        return self.cam_layer_for(self.default_pooling)

    def cam_layer_for(self, pooling: str | None = None) -> nn.Module:
        """The last layer for "mean"; for "cls" its input norm (the last layer's CLS output does not depend on
        that layer's own patch outputs)."""
        last = self.model.encoder.layer[-1]
        return last.norm1 if (pooling or self.default_pooling) == "cls" else last

    def forward_sequence(self, pixels: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        return self.forward_layers(pixels, [layer])[0]

    def forward_layers(self, pixels: torch.Tensor, layers: Sequence[int | None]) -> list[torch.Tensor]:
        """One call; the hidden states are kept only when a layer before the last is asked for."""
        self.grid_for(*pixels.shape[-2:])
        last = self.num_layers() - 1
        indices = [resolve_layer(layer, self.num_layers(), self.name) for layer in layers]
        out = self.model(pixel_values=pixels, output_hidden_states=any(i != last for i in indices))
        return [out.last_hidden_state if i == last else out.hidden_states[i + 1] for i in indices]

    def describe(self) -> dict:
        return {**super().describe(), "config": self.model.config.to_dict(), "default_pooling": self.default_pooling,
                "layers": "encoder.layer[k] raw output; the last one after the final layernorm"}


def _model_class(registers: bool) -> tuple[type, type]:
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    return (Dinov2WithRegistersModel, Dinov2WithRegistersConfig) if registers else (Dinov2Model, Dinov2Config)


def load_hf_dinov2(source: str, registers: bool, name: str) -> nn.Module:
    """Strictly load a transformers DINOv2 folder or hub id (config.json + model.safetensors)."""
    model_cls, _ = _model_class(registers)
    local = Path(source).expanduser()
    if not local.is_dir() and not is_hub_id(source):
        raise CheckpointError(f"{name}: {source!r} is neither a transformers checkpoint folder nor a hub id "
                              "(e.g. facebook/dinov2-small)")
    local_only = not local.is_dir() and hub_local_only()
    try:
        with hub_format_errors(source):
            model, info = model_cls.from_pretrained(str(local) if local.is_dir() else source,
                                                    local_files_only=local_only, output_loading_info=True)
    except OSError as err:
        if local.is_dir():
            raise CheckpointError(f"{name}: {source} is not a transformers checkpoint folder "
                                  f"({str(err).splitlines()[0]})") from err
        raise CheckpointError(f"{name}: {hub_missing(source)}") from err
    problems = {k: v for k, v in info.items() if v and k != "mismatched_keys"} | (
        {"mismatched_keys": info["mismatched_keys"]} if info.get("mismatched_keys") else {})
    if problems:
        raise CheckpointError(f"{name}: {source} does not match {model_cls.__name__}: {problems}")
    return model


def build_hf_dinov2(weights: str | None = None, name: str = "dinov2-hf", registers: bool = False,
                    config: Mapping[str, Any] | None = None, image_size: int = 224) -> HFDinov2Encoder:
    """weights: a transformers folder or hub id, or "random" (config: Dinov2Config keyword arguments)."""
    if weights is None:
        raise CheckpointError(f"{name}: no default weights; pass a transformers folder or hub id")
    model_cls, config_cls = _model_class(registers)
    if weights == "random":
        model = model_cls(config_cls(**dict(config or {})))
    else:
        model = load_hf_dinov2(weights, registers, name)
    return HFDinov2Encoder(name, model, image_size)
